//! Learning-rate schedules, stepped once per epoch: the MedDINOv3 trainers decay linearly
//! to zero; nnU-Net's default is `PolyLRScheduler` (exponent 0.9). A schedule is a function
//! of the run's progress from 0 to 1: epochs done over epochs planned, or, for a run bounded
//! by time, seconds trained over seconds it may train.

/// The factor on the initial learning rate at `epoch` of `epochs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `1 − epoch / epochs`.
    Linear,
    /// `(1 − epoch / epochs)^exponent`.
    Poly {
        /// nnU-Net uses 0.9.
        exponent: f64,
    },
}

impl Schedule {
    /// The learning-rate factor for `epoch` (0-based) of `epochs`.
    pub fn factor(self, epoch: usize, epochs: usize) -> f64 {
        self.factor_at(epoch as f64 / epochs.max(1) as f64)
    }

    /// The learning-rate factor `progress` of the way through the run (clamped to [0, 1];
    /// NaN counts as the start).
    pub fn factor_at(self, progress: f64) -> f64 {
        let remaining = if progress.is_nan() {
            1.0
        } else {
            1.0 - progress.clamp(0.0, 1.0)
        };
        match self {
            Schedule::Linear => remaining,
            Schedule::Poly { exponent } => remaining.powf(exponent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_start_at_one_and_fall_to_zero() {
        for schedule in [Schedule::Linear, Schedule::Poly { exponent: 0.9 }] {
            assert_eq!(schedule.factor(0, 1000), 1.0);
            assert_eq!(schedule.factor(1000, 1000), 0.0);
            assert!(schedule.factor(500, 1000) > 0.0 && schedule.factor(500, 1000) < 1.0);
        }
        assert_eq!(Schedule::Linear.factor(250, 1000), 0.75);
        assert_eq!(Schedule::Linear.factor_at(0.25), 0.75);
        assert_eq!(Schedule::Linear.factor_at(-0.5), 1.0);
        assert_eq!(Schedule::Poly { exponent: 0.9 }.factor_at(1.5), 0.0);
        assert_eq!(Schedule::Linear.factor_at(f64::NAN), Schedule::Linear.factor_at(0.0));
        assert!((Schedule::Poly { exponent: 0.9 }.factor(250, 1000) - 0.75f64.powf(0.9)).abs() < 1e-15);
    }
}
