//! How many epochs a time budget holds, decided again after every epoch from the pace the
//! machine shows now: a machine that is slower, or becomes busier, gets fewer epochs instead
//! of overrunning; one that speeds up gets more. The learning-rate schedule runs over the
//! training time, not over a guessed epoch count: each plan says how far through its time
//! training is.

/// Re-plans the number of epochs of a run that must finish within a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochPlanner {
    /// Seconds the whole run may take, counted from its start.
    budget: f64,
    /// Seconds that follow training (prediction, scoring), as a fixed part and a part in
    /// epochs, since those steps slow down with the machine as training does.
    reserve_fixed: f64,
    reserve_epochs: f64,
    /// The last plan, to tell whether it changed.
    epochs: Option<usize>,
    /// When training started (the start of the first epoch planned after).
    started: Option<f64>,
    /// The last progress handed out (it never goes back).
    progress: f64,
    /// The latest epochs' lengths, newest last (at most [`RECENT`]).
    recent: Vec<f64>,
}

/// How many of the latest epochs the pace averages.
const RECENT: usize = 3;

/// What the planner decided after an epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Epochs in all (never fewer than those done).
    pub epochs: usize,
    /// The pace it assumed, seconds per epoch.
    pub pace: f64,
    /// Whether this differs from the previous plan (the first plan counts as a change).
    pub changed: bool,
    /// When training ends by this plan, seconds from the start of the run.
    pub train_until: f64,
    /// The seconds kept for what follows training.
    pub reserve: f64,
    /// The share of the training time spent, 0 to 1 (1 once no epoch is left): where the
    /// learning-rate schedule stands for the next epoch. It never decreases.
    pub progress: f64,
}

impl EpochPlanner {
    /// A planner for a run of `budget` seconds whose steps after training take about
    /// `reserve_fixed` seconds plus `reserve_epochs` epochs.
    pub fn new(budget: f64, reserve_fixed: f64, reserve_epochs: f64) -> Self {
        Self {
            budget,
            reserve_fixed,
            reserve_epochs,
            epochs: None,
            started: None,
            progress: 0.0,
            recent: Vec::with_capacity(RECENT + 1),
        }
    }

    /// The plan after `done` epochs, `elapsed` seconds into the run, the last epoch having
    /// taken `last` seconds. The pace is the mean of the latest three epochs, or the last
    /// one when it was slower: a slow-down counts at once (another process started), while
    /// one fast epoch does not raise the plan (epoch times vary by ±20 % on an idle machine,
    /// and each re-plan moves the learning-rate schedule). Another epoch is planned only
    /// when it and the reserve fit in what is left, so the budget is exceeded by at most
    /// the part of one epoch a sudden slow-down adds.
    pub fn plan(&mut self, done: usize, elapsed: f64, last: f64) -> Plan {
        self.recent.push(last);
        if self.recent.len() > RECENT {
            let _ = self.recent.remove(0);
        }
        let mean = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let pace = last.max(mean).max(1e-3);
        let reserve = self.reserve_fixed + self.reserve_epochs * pace;
        let left = self.budget - elapsed - reserve;
        let more = if left > 0.0 { (left / pace).floor() as usize } else { 0 };
        let epochs = (done + more).max(done).max(1);
        let changed = self.epochs != Some(epochs);
        self.epochs = Some(epochs);
        let started = *self.started.get_or_insert(elapsed - last);
        let train_until = elapsed + (epochs - done) as f64 * pace;
        let trained = elapsed - started;
        if epochs == done {
            self.progress = 1.0;
        } else if train_until > started {
            self.progress = self.progress.max(trained / (train_until - started));
        }
        Plan {
            epochs,
            pace,
            changed,
            train_until,
            reserve,
            progress: self.progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXED: f64 = 20.0;
    const IN_EPOCHS: f64 = 1.5;

    /// A run on a fake clock: `duration(k)` is epoch k's length, and what follows training
    /// takes `FIXED + IN_EPOCHS × (last epoch)`.
    struct Run {
        epochs: usize,
        /// When training ended.
        trained: f64,
        /// When the run ended.
        end: f64,
        /// When training should have ended by the plan that started its last epoch.
        deadline: f64,
        /// The last epoch's length.
        last: f64,
        /// The schedule's progress at the start of each epoch after the first.
        progress: Vec<f64>,
    }

    fn simulate(budget: f64, duration: impl Fn(usize) -> f64) -> Run {
        let mut planner = EpochPlanner::new(budget, FIXED, IN_EPOCHS);
        // Data set generation and planning take 10 s before training.
        let (mut clock, mut done, mut deadline) = (10.0, 0, budget);
        let mut progress = Vec::new();
        loop {
            let last = duration(done);
            clock += last;
            done += 1;
            let plan = planner.plan(done, clock, last);
            assert!(plan.epochs >= done);
            progress.push(plan.progress);
            if plan.epochs == done {
                return Run {
                    epochs: done,
                    trained: clock,
                    end: clock + FIXED + IN_EPOCHS * last,
                    deadline,
                    last,
                    progress,
                };
            }
            deadline = budget - FIXED - IN_EPOCHS * plan.pace;
            assert!(done < 10_000, "never stops");
        }
    }

    fn assert_uses_budget(name: &str, budget: f64, duration: impl Fn(usize) -> f64) {
        let run = simulate(budget, duration);
        assert!(
            run.trained <= run.deadline + run.last,
            "{name}: training ended at {:.0} s, more than one epoch after {:.0} s",
            run.trained,
            run.deadline
        );
        assert!(
            (0.9 * budget..=1.1 * budget).contains(&run.end),
            "{name}: ended at {:.0} s of {budget} s ({} epochs)",
            run.end,
            run.epochs
        );
        // The schedule runs over the training time: it only moves forward, ends at 1, and
        // before the last epoch stands where the time spent says.
        assert!(
            run.progress.windows(2).all(|p| p[0] <= p[1]),
            "{name}: {:?}",
            run.progress
        );
        assert_eq!(run.progress.last(), Some(&1.0), "{name}");
        let before_last = run.progress[run.progress.len().saturating_sub(2)];
        let share = (run.trained - run.last - 10.0) / (run.trained - 10.0);
        assert!((before_last - share).abs() < 0.15, "{name}: {before_last} vs {share}");
    }

    #[test]
    fn fast_slow_and_loaded_machines_use_the_budget() {
        assert_uses_budget("fast", 540.0, |_| 5.0);
        assert_uses_budget("idle 2 cores", 540.0, |_| 20.0);
        assert_uses_budget("slow", 540.0, |_| 45.0);
        // Another process starts, or runs for a while.
        assert_uses_budget("slower from epoch 5", 540.0, |k| if k < 5 { 20.0 } else { 45.0 });
        assert_uses_budget("slower for a while", 540.0, |k| {
            if (3..8).contains(&k) {
                50.0
            } else {
                20.0
            }
        });
        assert_uses_budget("noisy", 540.0, |k| 20.0 + 8.0 * ((k * 7919) % 5) as f64 / 4.0);
    }

    #[test]
    fn on_an_even_machine_the_schedule_follows_the_epochs() {
        let run = simulate(540.0, |_| 20.0);
        for (k, progress) in run.progress[..run.epochs - 1].iter().enumerate() {
            let expected = (k + 1) as f64 / run.epochs as f64;
            assert!(
                (progress - expected).abs() < 1e-9,
                "epoch {k}: {progress} vs {expected}"
            );
        }
    }

    #[test]
    fn a_slow_down_in_the_last_epoch_overruns_by_that_epoch_only() {
        // 24 epochs of 20 s fit; the 24th takes 60 s.
        let run = simulate(540.0, |k| if k < 23 { 20.0 } else { 60.0 });
        assert_eq!(run.epochs, 24);
        assert!(
            run.trained <= run.deadline + run.last,
            "{} vs {}",
            run.trained,
            run.deadline
        );
        assert!(run.trained > run.deadline, "the slow last epoch should overrun");
    }

    #[test]
    fn a_budget_too_short_for_a_second_epoch_stops_after_one() {
        let mut planner = EpochPlanner::new(60.0, FIXED, IN_EPOCHS);
        let plan = planner.plan(1, 45.0, 35.0);
        assert_eq!(plan.epochs, 1);
        assert!(plan.changed);
        assert!(!planner.plan(1, 45.0, 35.0).changed);
    }
}
