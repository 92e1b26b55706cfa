//! Seeded parameter initialisation. candle's `VarMap` draws initial weights from its CPU
//! generator, which cannot be seeded; this backend registers the same variables in a
//! `VarMap` but draws each from a generator seeded by `(seed, parameter name)`, so a seeded
//! run starts from the same weights whatever the construction order.

use std::sync::PoisonError;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use crate::splitmix::{mix, GAMMA};

/// A `VarBuilder` whose new variables land in `varmap`, initialised from `seed`.
pub fn seeded_var_builder(varmap: &VarMap, seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
    let backend = SeededBackend {
        varmap: varmap.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

struct SeededBackend {
    varmap: VarMap,
    seed: u64,
}

/// SplitMix64 stream.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed.
    name.bytes().fold(0xCBF2_9CE4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3)
    })
}

fn initial_values(shape: &Shape, init: Init, stream: &mut Stream) -> Vec<f32> {
    let n = shape.elem_count();
    let normal = |stream: &mut Stream, mean: f64, std: f64| -> Vec<f32> {
        (0..n).map(|_| (mean + std * stream.normal()) as f32).collect()
    };
    let uniform =
        |stream: &mut Stream, lo: f64, hi: f64| -> Vec<f32> { (0..n).map(|_| stream.uniform(lo, hi) as f32).collect() };
    match init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => normal(stream, mean, stdev),
        Init::Uniform { lo, up } => uniform(stream, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            // As candle's `Init::var`: std = gain / sqrt(fan).
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => normal(stream, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(stream, -bound, bound)
                }
            }
        }
    }
}

impl SimpleBackend for SeededBackend {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = data.get(name) {
            if existing.shape() != &shape {
                candle_core::bail!("shape mismatch for {name}: {:?} vs {shape:?}", existing.shape());
            }
            return Ok(existing.as_tensor().clone());
        }
        let mut stream = Stream(name_seed(self.seed, name));
        let values = initial_values(&shape, init, &mut stream);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        let _ = data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a freshly initialised network has no tensor without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_distributions_as_asked() {
        let build = |seed: u64| {
            let varmap = VarMap::new();
            let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
            let w = vb
                .get_with_hints((64, 32), "w", Init::Randn { mean: 0.0, stdev: 0.02 })
                .expect("w");
            let b = vb.get_with_hints(32, "b", Init::Const(0.5)).expect("b");
            let _ = vb.get_with_hints(8, "w", Init::Const(0.0)).expect_err("shape clash");
            (varmap, w, b)
        };
        let (varmap, w, b) = build(1);
        assert_eq!(varmap.all_vars().len(), 2, "registered in the VarMap (trainable)");
        let values: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).expect("w");
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt();
        assert!(
            mean.abs() < 0.002 && (std - 0.02).abs() < 0.002,
            "mean {mean} std {std}"
        );
        assert!(b.to_vec1::<f32>().expect("b").iter().all(|&v| v == 0.5));
        let again: Vec<f32> = build(1).1.flatten_all().and_then(|t| t.to_vec1()).expect("w");
        let other: Vec<f32> = build(2).1.flatten_all().and_then(|t| t.to_vec1()).expect("w");
        assert_eq!(values, again);
        assert_ne!(values, other);
    }
}
