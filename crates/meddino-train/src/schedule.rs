//! Learning-rate schedules, stepped once per epoch: the MedDINOv3 trainers decay linearly
//! to zero; nnU-Net's default is `PolyLRScheduler` (exponent 0.9).

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
        let remaining = (1.0 - epoch as f64 / epochs.max(1) as f64).max(0.0);
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
        assert!((Schedule::Poly { exponent: 0.9 }.factor(250, 1000) - 0.75f64.powf(0.9)).abs() < 1e-15);
    }
}
