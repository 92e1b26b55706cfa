//! The randomness of training-mode forward passes (stochastic depth subsets, RoPE coordinate
//! augmentation), drawn from a seedable generator owned by the model rather than candle's
//! unseedable CPU generator, so that a seeded training run (and a run resumed from a
//! checkpoint) repeats bit for bit.

use std::sync::{Arc, Mutex, PoisonError};

/// A small shared generator (SplitMix64); clones of a model share one stream.
#[derive(Debug, Clone, Default)]
pub struct StochasticRng {
    state: Arc<Mutex<u64>>,
}

impl StochasticRng {
    /// Restarts the stream at `seed`.
    pub fn reseed(&self, seed: u64) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = seed;
    }

    fn next_u64(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` values uniform in `[lo, hi)`.
    pub fn uniform(&self, lo: f64, hi: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                (lo + (hi - lo) * unit) as f32
            })
            .collect()
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&self, n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reseeding_repeats_the_stream() {
        let rng = StochasticRng::default();
        rng.reseed(5);
        let a = (rng.permutation(8), rng.uniform(-1.0, 1.0, 4));
        rng.reseed(5);
        let b = (rng.permutation(8), rng.uniform(-1.0, 1.0, 4));
        assert_eq!(a, b);
        let mut sorted = a.0.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<u32>>());
        assert!(a.1.iter().all(|v| (-1.0..1.0).contains(v)));
    }
}
