//! Optimisers and gradient clipping as the trainers use them.
//!
//! - MedDINOv3's trainers: AdamW (betas 0.9/0.98, weight decay 0.05) with two parameter
//!   groups — decoder and ViT — at different learning rates: [`GroupedAdamW`], written here
//!   (numerically candle's AdamW) so that its moments can be checkpointed and restored.
//! - nnU-Net's default (the baselines): SGD, momentum 0.99, Nesterov, weight decay 3e-5 —
//!   [`NesterovSgd`], with PyTorch's update rule; candle's SGD has no momentum.
//! - [`clip_grad_norm`]: the global L2 norm of all gradients capped at 12, as
//!   `torch.nn.utils.clip_grad_norm_`.

use candle_core::backprop::GradStore;
use std::collections::HashMap;

use candle_core::{Tensor, Var};

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

/// What the training loop needs of an optimiser: an update, per-epoch learning-rate
/// scaling, and a state that can be checkpointed and restored exactly.
pub trait Optimizer: std::fmt::Debug + Send {
    /// One update of every parameter that has a gradient.
    ///
    /// # Errors
    ///
    /// On a candle error.
    fn step(&mut self, grads: &GradStore) -> Result<()>;

    /// Sets every group's learning rate to its initial one times `factor` (schedules).
    fn scale_learning_rates(&mut self, factor: f64);

    /// Current learning rate per group.
    fn learning_rates(&self) -> Vec<(String, f64)>;

    /// Updates taken so far.
    fn steps(&self) -> usize;

    /// The state as named tensors and the step count, for a checkpoint.
    fn state(&self) -> (HashMap<String, Tensor>, usize);

    /// Restores a state saved by [`Optimizer::state`].
    ///
    /// # Errors
    ///
    /// When a parameter's state is missing or has the wrong shape (named).
    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()>;
}

/// Variables with their state-dict names (optimiser state is kept by name).
pub type NamedVars = Vec<(String, Var)>;

/// Variables of a VarMap by name, sorted (a stable order for optimiser groups and clipping).
pub fn named_vars(varmap: &candle_nn::VarMap) -> NamedVars {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut vars: NamedVars = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// One parameter group of [`GroupedAdamW`]: named variables and their learning rate.
#[derive(Debug)]
struct Group {
    name: String,
    vars: NamedVars,
    initial_lr: f64,
    lr: f64,
}

/// AdamW (decoupled weight decay, bias correction; PyTorch's `torch.optim.AdamW`) over
/// named parameter groups, each with its own learning rate. Its moments are kept by
/// parameter name, so [`GroupedAdamW::state`] / [`GroupedAdamW::load_state`] can checkpoint
/// and resume it exactly (candle's `AdamW` keeps its moments private).
#[derive(Debug)]
pub struct GroupedAdamW {
    groups: Vec<Group>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    steps: usize,
    /// First and second moments by parameter name.
    moments: HashMap<String, (Tensor, Tensor)>,
}

impl GroupedAdamW {
    /// One group per `(name, named vars, learning rate)`, sharing betas, eps 1e-8 and weight
    /// decay.
    pub fn new(groups: Vec<(String, NamedVars, f64)>, beta1: f64, beta2: f64, weight_decay: f64) -> Self {
        let groups = groups
            .into_iter()
            .map(|(name, vars, lr)| Group {
                name,
                vars,
                initial_lr: lr,
                lr,
            })
            .collect();
        Self {
            groups,
            beta1,
            beta2,
            eps: 1e-8,
            weight_decay,
            steps: 0,
            moments: Default::default(),
        }
    }

    /// MedDINOv3's setting: betas (0.9, 0.98), weight decay 0.05; decoder and encoder groups.
    pub fn meddinov3(
        decoder: Vec<(String, Var)>,
        decoder_lr: f64,
        encoder: Vec<(String, Var)>,
        encoder_lr: f64,
    ) -> Self {
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
}

impl Optimizer for GroupedAdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        let t = self.steps as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let (correction1, correction2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for group in &self.groups {
            for (name, var) in &group.vars {
                let Some(grad) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let (m, v) = match self.moments.remove(name) {
                    Some(moments) => moments,
                    None => (grad.zeros_like()?, grad.zeros_like()?),
                };
                let m = ((m * b1)? + (grad * (1.0 - b1))?)?;
                let v = ((v * b2)? + (grad.sqr()? * (1.0 - b2))?)?;
                let step = ((&m / correction1)? / ((&v / correction2)?.sqrt()? + self.eps)?)?;
                let decayed = (var.as_tensor() * (1.0 - group.lr * self.weight_decay))?;
                var.set(&(decayed - (step * group.lr)?)?)?;
                let _ = self.moments.insert(name.clone(), (m, v));
            }
        }
        Ok(())
    }

    fn scale_learning_rates(&mut self, factor: f64) {
        for group in &mut self.groups {
            group.lr = group.initial_lr * factor;
        }
    }

    fn learning_rates(&self) -> Vec<(String, f64)> {
        self.groups.iter().map(|g| (g.name.clone(), g.lr)).collect()
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> (HashMap<String, Tensor>, usize) {
        let mut tensors = HashMap::new();
        for (name, (m, v)) in &self.moments {
            let _ = tensors.insert(format!("m.{name}"), m.clone());
            let _ = tensors.insert(format!("v.{name}"), v.clone());
        }
        (tensors, self.steps)
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        let names: std::collections::HashSet<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.vars.iter().map(|(name, _)| name.as_str()))
            .collect();
        check_known(tensors, |key| {
            key.strip_prefix("m.")
                .or_else(|| key.strip_prefix("v."))
                .is_some_and(|name| names.contains(name))
        })?;
        let mut moments = HashMap::new();
        for group in &self.groups {
            for (name, var) in &group.vars {
                match (tensors.get(&format!("m.{name}")), tensors.get(&format!("v.{name}"))) {
                    (Some(m), Some(v)) if m.shape() == var.shape() && v.shape() == var.shape() => {
                        let _ = moments.insert(name.clone(), (m.to_device(var.device())?, v.to_device(var.device())?));
                    }
                    // A parameter that never had a gradient has no moments (as in PyTorch).
                    (None, None) => {}
                    _ => return Err(missing_state(name, var)),
                }
            }
        }
        self.moments = moments;
        self.steps = steps;
        Ok(())
    }
}

/// SGD with Nesterov momentum and L2 weight decay, PyTorch's rule:
/// `g ← g + wd·p; b ← μ·b + g; p ← p − lr·(g + μ·b)`. Momentum buffers are kept by
/// parameter name, so the state can be checkpointed like [`GroupedAdamW`]'s.
#[derive(Debug)]
pub struct NesterovSgd {
    vars: NamedVars,
    initial_lr: f64,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    steps: usize,
    buffers: HashMap<String, Tensor>,
}

impl NesterovSgd {
    /// nnU-Net's defaults are `momentum = 0.99`, `weight_decay = 3e-5`, `lr = 1e-2`.
    pub fn new(vars: NamedVars, lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self {
            vars,
            initial_lr: lr,
            lr,
            momentum,
            weight_decay,
            steps: 0,
            buffers: HashMap::new(),
        }
    }
}

impl Optimizer for NesterovSgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.steps += 1;
        for (name, var) in &self.vars {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            let grad = (grad + (var.as_tensor() * self.weight_decay)?)?;
            let next = match self.buffers.remove(name) {
                Some(b) => ((b * self.momentum)? + &grad)?,
                None => grad.clone(),
            };
            let update = (&grad + (&next * self.momentum)?)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
            let _ = self.buffers.insert(name.clone(), next);
        }
        Ok(())
    }

    fn scale_learning_rates(&mut self, factor: f64) {
        self.lr = self.initial_lr * factor;
    }

    fn learning_rates(&self) -> Vec<(String, f64)> {
        vec![("all".into(), self.lr)]
    }

    fn steps(&self) -> usize {
        self.steps
    }

    fn state(&self) -> (HashMap<String, Tensor>, usize) {
        let tensors = self
            .buffers
            .iter()
            .map(|(name, b)| (format!("momentum.{name}"), b.clone()))
            .collect();
        (tensors, self.steps)
    }

    fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: usize) -> Result<()> {
        let names: std::collections::HashSet<&str> = self.vars.iter().map(|(name, _)| name.as_str()).collect();
        check_known(tensors, |key| {
            key.strip_prefix("momentum.").is_some_and(|name| names.contains(name))
        })?;
        let mut buffers = HashMap::new();
        for (name, var) in &self.vars {
            match tensors.get(&format!("momentum.{name}")) {
                Some(b) if b.shape() == var.shape() => {
                    let _ = buffers.insert(name.clone(), b.to_device(var.device())?);
                }
                None => {} // Never had a gradient.
                _ => return Err(missing_state(name, var)),
            }
        }
        self.buffers = buffers;
        self.steps = steps;
        Ok(())
    }
}

/// Refuses state entries that name no parameter (a checkpoint of another network).
fn check_known(tensors: &HashMap<String, Tensor>, known: impl Fn(&str) -> bool) -> Result<()> {
    let mut unknown: Vec<&String> = tensors.keys().filter(|k| !known(k)).collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(first) => Err(crate::Error::Checkpoint(format!(
            "optimizer state entry {first} (and {} more) names no parameter of the network",
            unknown.len() - 1
        ))),
    }
}

fn missing_state(name: &str, var: &Var) -> crate::Error {
    crate::Error::Checkpoint(format!(
        "optimizer state for {name} is missing or does not have shape {:?}",
        var.dims()
    ))
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
        let mut optimizer = GroupedAdamW::meddinov3(
            vec![("fast".into(), fast.clone())],
            1e-2,
            vec![("slow".into(), slow.clone())],
            1e-3,
        );
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
    fn adamw_matches_candles_and_resumes_exactly() {
        use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
        let start = Tensor::new(&[0.5f32, -1.0, 2.0], &Device::Cpu).expect("start");
        let loss_of = |v: &Var| {
            (v.as_tensor().sqr().expect("sqr") * Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).expect("w"))
                .and_then(|t| t.sum_all())
                .expect("loss")
        };
        let ours = Var::from_tensor(&start).expect("var");
        let theirs = Var::from_tensor(&start).expect("var");
        let mut mine = GroupedAdamW::new(
            vec![("g".into(), vec![("p".into(), ours.clone())], 1e-2)],
            0.9,
            0.98,
            0.05,
        );
        let params = ParamsAdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let mut reference = AdamW::new(vec![theirs.clone()], params).expect("adamw");
        for _ in 0..5 {
            mine.step(&loss_of(&ours).backward().expect("backward")).expect("step");
            reference
                .step(&loss_of(&theirs).backward().expect("backward"))
                .expect("step");
        }
        let (a, b): (Vec<f32>, Vec<f32>) = (
            ours.as_tensor().to_vec1().expect("a"),
            theirs.as_tensor().to_vec1().expect("b"),
        );
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs candle {b:?}");
        }
        // Checkpoint after 5 steps, resume in a fresh optimiser: identical to not stopping.
        let (state, steps) = mine.state();
        let resumed = Var::from_tensor(ours.as_tensor()).expect("var");
        let mut restarted = GroupedAdamW::new(
            vec![("g".into(), vec![("p".into(), resumed.clone())], 1e-2)],
            0.9,
            0.98,
            0.05,
        );
        restarted.load_state(&state, steps).expect("load");
        for _ in 0..3 {
            mine.step(&loss_of(&ours).backward().expect("backward")).expect("step");
            restarted
                .step(&loss_of(&resumed).backward().expect("backward"))
                .expect("step");
        }
        assert_eq!(
            ours.as_tensor().to_vec1::<f32>().expect("a"),
            resumed.as_tensor().to_vec1::<f32>().expect("b")
        );
        let mut wrong = GroupedAdamW::new(
            vec![("g".into(), vec![("q".into(), resumed.clone())], 1e-2)],
            0.9,
            0.98,
            0.05,
        );
        assert!(wrong
            .load_state(&state, steps)
            .expect_err("another network's state")
            .to_string()
            .contains("m.p"));
    }

    #[test]
    fn nesterov_sgd_follows_pytorch() {
        let p = Var::new(&[1f32], &Device::Cpu).expect("p");
        let mut sgd = NesterovSgd::new(vec![("p".into(), p.clone())], 0.1, 0.9, 0.0);
        // Loss 2p: gradient 2 each step. Step 1: b = 2, p -= 0.1·(2 + 0.9·2) = 0.38.
        for expected in [0.62f32, 0.62 - 0.1 * (2.0 + 0.9 * (0.9 * 2.0 + 2.0))] {
            let loss = (p.as_tensor() * 2.0).and_then(|t| t.sum_all()).expect("loss");
            sgd.step(&loss.backward().expect("backward")).expect("step");
            let value = p.as_tensor().to_vec1::<f32>().expect("vec")[0];
            assert!((value - expected).abs() < 1e-6, "{value} vs {expected}");
        }
    }
}
