//! Dynamic loss scaling for fp16 training, with the rules and defaults of PyTorch's
//! `torch.amp.GradScaler`: the loss is multiplied by a scale before the backward pass so that
//! small fp16 gradients do not flush to zero; the gradients are divided by it again before
//! clipping and the optimiser. A step whose gradients hold an infinity or a NaN is skipped and
//! the scale halves; after `growth_interval` good steps in a row it doubles.
//!
//! bf16 has f32's exponent range and needs none of this; `--precision fp16` does.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::error::Result;

/// The scale's state between steps (what a checkpoint keeps to resume exactly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaleState {
    /// The current scale.
    pub scale: f64,
    /// Good steps in a row since the scale last changed.
    pub good_steps: u32,
}

/// Whether [`LossScaler::update`] let the optimiser step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaledStep {
    /// The gradients were finite: the optimiser steps.
    Applied,
    /// An infinity or NaN: the step is skipped and the scale shrank.
    Skipped,
}

/// `GradScaler` for candle gradients.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    state: LossScaleState,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u32,
}

impl Default for LossScaler {
    /// PyTorch's defaults: scale 2¹⁶, ×2 after 2000 good steps, ×0.5 on a bad one.
    fn default() -> Self {
        Self::new(65536.0, 2.0, 0.5, 2000)
    }
}

impl LossScaler {
    /// A scaler starting at `initial_scale`.
    pub fn new(initial_scale: f64, growth_factor: f64, backoff_factor: f64, growth_interval: u32) -> Self {
        Self {
            state: LossScaleState {
                scale: initial_scale,
                good_steps: 0,
            },
            growth_factor,
            backoff_factor,
            growth_interval: growth_interval.max(1),
        }
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.state.scale
    }

    /// The state to checkpoint.
    pub fn state(&self) -> LossScaleState {
        self.state
    }

    /// Continues from a checkpointed state.
    pub fn restore(&mut self, state: LossScaleState) {
        self.state = state;
    }

    /// `loss × scale`, to call `backward` on.
    ///
    /// # Errors
    ///
    /// As candle's multiplication.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        Ok((loss * self.state.scale)?)
    }

    /// Divides the gradients of `vars` by the scale, in place (in f32, whatever their dtype,
    /// so that the division itself cannot overflow fp16), and returns whether all of them
    /// are finite.
    ///
    /// # Errors
    ///
    /// As candle's arithmetic.
    pub fn unscale(&self, grads: &mut GradStore, vars: &[Var]) -> Result<bool> {
        let inverse = 1.0 / self.state.scale;
        let mut finite = true;
        for var in vars {
            let Some(grad) = grads.remove(var.as_tensor()) else {
                continue;
            };
            let unscaled = (grad.to_dtype(DType::F32)? * inverse)?;
            // A non-finite element makes the sum non-finite (inf − inf and NaN included).
            let sum = unscaled.sum_all()?.to_scalar::<f32>()?;
            finite &= sum.is_finite();
            let _ = grads.insert(var.as_tensor(), unscaled.to_dtype(grad.dtype())?);
        }
        Ok(finite)
    }

    /// Updates the scale after a step whose gradients were `finite` (as [`Self::unscale`]
    /// said): a skipped step halves it and restarts the count; the `growth_interval`-th good
    /// step in a row doubles it, unless that would overflow f32 (PyTorch keeps the scale in
    /// f32).
    pub fn update(&mut self, finite: bool) -> ScaledStep {
        let state = &mut self.state;
        if !finite {
            state.scale *= self.backoff_factor;
            state.good_steps = 0;
            return ScaledStep::Skipped;
        }
        state.good_steps += 1;
        if state.good_steps >= self.growth_interval {
            let grown = state.scale * self.growth_factor;
            if (grown as f32).is_finite() {
                state.scale = grown;
            }
            state.good_steps = 0;
        }
        ScaledStep::Applied
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn grads_of(loss: &Tensor) -> GradStore {
        loss.backward().unwrap()
    }

    #[test]
    fn small_fp16_gradients_survive_scaling_and_come_back_unscaled() {
        // As under AMP: f32 master weights, the product in fp16, the loss in f32. The
        // gradient reaching the fp16 product is 1e-8, below fp16's smallest subnormal (6e-8).
        let w = Var::from_tensor(&Tensor::ones(4, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let c = Tensor::full(1e-4f32, 4, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F16))
            .unwrap();
        let loss = (w.as_tensor().to_dtype(DType::F16).unwrap() * &c)
            .and_then(|p| p.to_dtype(DType::F32))
            .and_then(|p| p.sum_all())
            .and_then(|p| p * 1e-4)
            .unwrap();
        let grad_of = |grads: &GradStore| -> Vec<f32> { grads.get(w.as_tensor()).unwrap().to_vec1().unwrap() };
        assert!(
            grad_of(&grads_of(&loss)).iter().all(|&g| g == 0.0),
            "unscaled, it flushes to zero"
        );

        let scaler = LossScaler::default();
        let mut grads = grads_of(&scaler.scale_loss(&loss).unwrap());
        assert!(scaler.unscale(&mut grads, std::slice::from_ref(&w)).unwrap());
        for g in grad_of(&grads) {
            // fp16 keeps 11 significant bits of the scaled value.
            assert!((f64::from(g) / 1e-8 - 1.0).abs() < 2e-3, "{g}");
        }
    }

    #[test]
    fn non_finite_gradients_skip_the_step_and_halve_the_scale() {
        let w = Var::from_tensor(&Tensor::ones(3, DType::F32, &Device::Cpu).unwrap()).unwrap();
        let mut scaler = LossScaler::new(1024.0, 2.0, 0.5, 3);
        for poison in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY] {
            let mut grads = grads_of(&w.as_tensor().sum_all().unwrap());
            let _ = grads.insert(w.as_tensor(), Tensor::new(&[1f32, poison, 2.0], &Device::Cpu).unwrap());
            let finite = scaler.unscale(&mut grads, std::slice::from_ref(&w)).unwrap();
            assert!(!finite, "{poison}");
            let before = scaler.scale();
            assert_eq!(scaler.update(finite), ScaledStep::Skipped);
            assert_eq!(scaler.scale(), before * 0.5);
        }
        assert_eq!(scaler.state().good_steps, 0);
    }

    #[test]
    fn the_scale_grows_after_a_run_of_good_steps_only() {
        let mut scaler = LossScaler::new(8.0, 2.0, 0.5, 3);
        let steps = [true, true, false, true, true, true, true];
        let scales: Vec<f64> = steps
            .iter()
            .map(|&finite| {
                let _ = scaler.update(finite);
                scaler.scale()
            })
            .collect();
        // Two good steps, a bad one (halve, restart), then three good ones (double).
        assert_eq!(scales, [8.0, 8.0, 4.0, 4.0, 4.0, 8.0, 8.0]);
        assert_eq!(scaler.state().good_steps, 1);

        // Never past what f32 holds.
        let mut near_max = LossScaler::new(f64::from(f32::MAX) / 1.5, 2.0, 0.5, 1);
        let _ = near_max.update(true);
        assert_eq!(near_max.scale(), f64::from(f32::MAX) / 1.5);
    }

    #[test]
    fn a_restored_state_continues_where_it_was() {
        let mut a = LossScaler::new(16.0, 2.0, 0.5, 2);
        let _ = a.update(true);
        let mut b = LossScaler::new(16.0, 2.0, 0.5, 2);
        b.restore(a.state());
        for finite in [true, false, true, true] {
            assert_eq!(a.update(finite), b.update(finite));
        }
        assert_eq!(a, b);
    }
}
