//! Optimisers and gradient clipping as the trainers use them.
//!
//! - MedDINOv3's trainers: AdamW (betas 0.9/0.98, weight decay 0.05) with two parameter
//!   groups — decoder and ViT — at different learning rates: [`GroupedAdamW`], one candle
//!   AdamW per group (AdamW keeps per-parameter state, so groups are independent optimisers).
//! - nnU-Net's default (the baselines): SGD, momentum 0.99, Nesterov, weight decay 3e-5 —
//!   [`NesterovSgd`], with PyTorch's update rule; candle's SGD has no momentum.
//! - [`clip_grad_norm`]: the global L2 norm of all gradients capped at 12, as
//!   `torch.nn.utils.clip_grad_norm_`.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};

use crate::error::Result;

/// Scales every gradient of `vars` so that their global L2 norm is at most `max_norm`
/// (`clip_grad_norm_` with `error_if_nonfinite=False`); returns the norm before clipping.
///
/// # Errors
///
/// On a candle error.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for var in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += f64::from(
                g.to_dtype(candle_core::DType::F32)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f32>()?,
            );
        }
    }
    let norm = total.sqrt();
    let scale = max_norm / (norm + 1e-6);
    if scale < 1.0 {
        for var in vars {
            if let Some(g) = grads.remove(var.as_tensor()) {
                let _ = grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// AdamW over named parameter groups, each with its own learning rate.
#[derive(Debug)]
pub struct GroupedAdamW {
    groups: Vec<(String, AdamW, f64)>,
}

impl GroupedAdamW {
    /// One group per `(name, vars, learning rate)`, sharing betas, eps and weight decay.
    ///
    /// # Errors
    ///
    /// On a candle error creating the state.
    pub fn new(groups: Vec<(String, Vec<Var>, f64)>, beta1: f64, beta2: f64, weight_decay: f64) -> Result<Self> {
        let groups = groups
            .into_iter()
            .map(|(name, vars, lr)| {
                let params = ParamsAdamW {
                    lr,
                    beta1,
                    beta2,
                    eps: 1e-8,
                    weight_decay,
                };
                Ok((name, AdamW::new(vars, params)?, lr))
            })
            .collect::<Result<_>>()?;
        Ok(Self { groups })
    }

    /// MedDINOv3's setting: betas (0.9, 0.98), weight decay 0.05.
    ///
    /// # Errors
    ///
    /// On a candle error.
    pub fn meddinov3(decoder: Vec<Var>, decoder_lr: f64, encoder: Vec<Var>, encoder_lr: f64) -> Result<Self> {
        Self::new(
            vec![
                ("decoder".into(), decoder, decoder_lr),
                ("encoder".into(), encoder, encoder_lr),
            ],
            0.9,
            0.98,
            0.05,
        )
    }

    /// One update of every group.
    ///
    /// # Errors
    ///
    /// On a candle error.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (_, optimizer, _) in &mut self.groups {
            optimizer.step(grads)?;
        }
        Ok(())
    }

    /// Sets every group's learning rate to its initial one times `factor` (schedules).
    pub fn scale_learning_rates(&mut self, factor: f64) {
        for (_, optimizer, initial) in &mut self.groups {
            optimizer.set_learning_rate(*initial * factor);
        }
    }

    /// Current learning rate per group.
    pub fn learning_rates(&self) -> Vec<(String, f64)> {
        self.groups
            .iter()
            .map(|(name, optimizer, _)| (name.clone(), optimizer.learning_rate()))
            .collect()
    }
}

/// SGD with Nesterov momentum and L2 weight decay, PyTorch's rule:
/// `g ← g + wd·p; b ← μ·b + g; p ← p − lr·(g + μ·b)`.
#[derive(Debug)]
pub struct NesterovSgd {
    vars: Vec<(Var, Option<Tensor>)>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl NesterovSgd {
    /// nnU-Net's defaults are `momentum = 0.99`, `weight_decay = 3e-5`, `lr = 1e-2`.
    pub fn new(vars: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            vars: vars.into_iter().map(|v| (v, None)).collect(),
            lr,
            momentum,
            weight_decay,
        }
    }

    /// Sets the learning rate.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// One update.
    ///
    /// # Errors
    ///
    /// On a candle error.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (var, buffer) in &mut self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = (grad + (var.as_tensor() * self.weight_decay)?)?;
            let next = match buffer.take() {
                Some(b) => ((b * self.momentum)? + &grad)?,
                None => grad.clone(),
            };
            let update = (&grad + (&next * self.momentum)?)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            *buffer = Some(next);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn clipping_caps_the_global_norm() {
        let a = Var::new(&[0f32, 0.0], &Device::Cpu).expect("a");
        let b = Var::new(&[0f32], &Device::Cpu).expect("b");
        // Gradients 3·(1,1) and 4·... via a loss: 3a0 + 3a1 + 4b has gradients (3, 3) and (4).
        let loss = ((a.as_tensor().sum_all().expect("sum") * 3.0).expect("x")
            + (b.as_tensor().sum_all().expect("sum") * 4.0).expect("y"))
        .expect("loss");
        let mut grads = loss.backward().expect("backward");
        let norm = clip_grad_norm(&mut grads, &[a.clone(), b.clone()], 1.0).expect("clip");
        assert!((norm - (9f64 + 9.0 + 16.0).sqrt()).abs() < 1e-5);
        let clipped: Vec<f32> = grads.get(a.as_tensor()).expect("grad").to_vec1().expect("vec");
        let expected = 3.0 / (34f32).sqrt();
        assert!((clipped[0] - expected).abs() < 1e-5, "{clipped:?}");
    }

    #[test]
    fn groups_learn_at_their_own_rates() {
        let fast = Var::new(&[1f32], &Device::Cpu).expect("fast");
        let slow = Var::new(&[1f32], &Device::Cpu).expect("slow");
        let mut optimizer =
            GroupedAdamW::meddinov3(vec![fast.clone()], 1e-2, vec![slow.clone()], 1e-3).expect("optimizer");
        let loss = (fast.as_tensor() + slow.as_tensor())
            .and_then(|t| t.sum_all())
            .expect("loss");
        optimizer.step(&loss.backward().expect("backward")).expect("step");
        let moved = |v: &Var| 1.0 - v.as_tensor().to_vec1::<f32>().expect("vec")[0];
        // Adam's first step moves each parameter by about its learning rate (plus decay).
        assert!(
            (moved(&fast) - 1e-2).abs() < 1e-3 && (moved(&slow) - 1e-3).abs() < 1e-4,
            "{} {}",
            moved(&fast),
            moved(&slow)
        );
        optimizer.scale_learning_rates(0.5);
        assert_eq!(optimizer.learning_rates()[0].1, 5e-3);
    }

    #[test]
    fn nesterov_sgd_follows_pytorch() {
        let p = Var::new(&[1f32], &Device::Cpu).expect("p");
        let mut sgd = NesterovSgd::new(vec![p.clone()], 0.1, 0.9, 0.0);
        // Loss 2p: gradient 2 each step. Step 1: b = 2, p -= 0.1·(2 + 0.9·2) = 0.38.
        for expected in [0.62f32, 0.62 - 0.1 * (2.0 + 0.9 * (0.9 * 2.0 + 2.0))] {
            let loss = (p.as_tensor() * 2.0).and_then(|t| t.sum_all()).expect("loss");
            sgd.step(&loss.backward().expect("backward")).expect("step");
            let value = p.as_tensor().to_vec1::<f32>().expect("vec")[0];
            assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
        }
    }
}
