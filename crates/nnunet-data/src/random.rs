//! NumPy's legacy `RandomState`: MT19937 seeded with `init_genrand`, bounded integers by
//! masked rejection, and the legacy Fisher–Yates `shuffle`. Exactly these draws decide
//! nnU-Net's cross-validation folds (through scikit-learn's `KFold`), so they are
//! reproduced bit for bit; no Rust RNG crate offers NumPy's legacy bounded-integer scheme.

const N: usize = 624;
const M: usize = 397;

/// The Mersenne Twister MT19937 (Matsumoto & Nishimura, 1998).
#[derive(Debug, Clone)]
pub struct RandomState {
    state: [u32; N],
    index: usize,
}

impl RandomState {
    /// `np.random.RandomState(seed)` for an integer seed (`init_genrand`).
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; N];
        state[0] = seed;
        for i in 1..N {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Self { state, index: N }
    }

    fn twist(&mut self) {
        for i in 0..N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % N] & 0x7fff_ffff);
            let mut next = self.state[(i + M) % N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    /// A uniform double in `[0, 1)` from two outputs (NumPy's `random_sample`).
    pub fn uniform(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }

    /// A uniform double in `[lo, hi)`.
    pub fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// A uniform integer in `lo..=hi` (`lo ≤ hi`), as NumPy's `randint(lo, hi + 1)`.
    pub fn integer(&mut self, lo: i64, hi: i64) -> i64 {
        lo + i64::from(self.interval(u32::try_from(hi - lo).unwrap_or(u32::MAX)))
    }

    /// The next raw 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// A uniform integer in `0..=max`: raw outputs masked to the smallest `2^k − 1 ≥ max`,
    /// rejected while above `max` (NumPy's `random_interval` for `max < 2^32`).
    pub fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let value = self.next_u32() & mask;
            if value <= max {
                return value;
            }
        }
    }

    /// `RandomState.shuffle` of a 1-D sequence: for i from n−1 down to 1, swap with a
    /// uniform j in `0..=i`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u32) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_outputs_for_seed_12345() {
        // nnunet-reference.md §2 (read off NumPy).
        let mut rng = RandomState::new(12345);
        assert_eq!(
            [rng.next_u32(), rng.next_u32(), rng.next_u32()],
            [3992670690, 3823185381, 1358822685]
        );
    }

    #[test]
    fn shuffle_of_twelve_matches_numpy() {
        // nnunet-reference.md §5: RandomState(12345).shuffle(arange(12)).
        let mut items: Vec<usize> = (0..12).collect();
        RandomState::new(12345).shuffle(&mut items);
        assert_eq!(items, [8, 0, 3, 7, 11, 10, 6, 9, 4, 1, 5, 2]);
    }

    #[test]
    fn reference_mt19937_output_after_many_draws() {
        // The MT19937 paper's reference: the 10000th output for init_genrand(5489).
        let mut rng = RandomState::new(5489);
        let last = (0..10_000).map(|_| rng.next_u32()).last();
        assert_eq!(last, Some(4_123_659_995));
    }
}
