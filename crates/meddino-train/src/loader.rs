//! Batches built on background threads, in a fixed order and independent of the number of
//! workers: batch `i` of a phase is drawn with its own generator seeded from
//! `(seed, epoch, phase, i)`, so a seeded run, and a run resumed at an epoch boundary, sees
//! exactly the same batches.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use nnunet_data::batch::{Batch2d, BatchSampler2d};
use nnunet_data::preprocess::store::PreprocessedCase;
use nnunet_data::random::RandomState;

use crate::error::{Error, Result};
use crate::splitmix::{mix, GAMMA};

/// Which loop a batch belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Training iterations (augmented).
    Train,
    /// Validation iterations.
    Validation,
}

/// The seed of one step's randomness (its batch, and its stochastic depth).
pub fn step_seed(seed: u64, epoch: usize, phase: Phase, index: usize) -> u64 {
    let phase = match phase {
        Phase::Train => 1,
        Phase::Validation => 2,
    };
    [epoch as u64, phase, index as u64]
        .iter()
        .fold(mix(seed), |acc, &v| mix(acc ^ v.wrapping_mul(GAMMA)))
}

/// `count` batches drawn by `workers` threads, delivered in order; dropping the loader
/// stops the threads.
#[derive(Debug)]
pub struct BatchLoader {
    receivers: Vec<Receiver<Result<Batch2d>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    count: usize,
}

impl BatchLoader {
    /// Starts the workers for the batches of `phase` in `epoch`.
    pub fn start(
        cases: Arc<Vec<PreprocessedCase>>,
        sampler: BatchSampler2d,
        (seed, epoch, phase): (u64, usize, Phase),
        count: usize,
        workers: usize,
    ) -> Self {
        // Two batches in flight per worker keep the model fed without holding many in memory.
        const PREFETCH: usize = 2;
        let workers = workers.clamp(1, count.max(1));
        let sampler = Arc::new(sampler);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for worker in 0..workers {
            let (sender, receiver) = sync_channel(PREFETCH);
            let (cases, sampler) = (Arc::clone(&cases), Arc::clone(&sampler));
            let handle = std::thread::Builder::new()
                .name(format!("batches-{worker}"))
                .spawn(move || {
                    for index in (worker..count).step_by(workers) {
                        let mut rng = RandomState::new(step_seed(seed, epoch, phase, index) as u32);
                        let batch = sampler.sample(&cases, &mut rng).map_err(Error::from);
                        if sender.send(batch).is_err() {
                            return; // The loader was dropped.
                        }
                    }
                });
            match handle {
                Ok(handle) => {
                    handles.push(handle);
                    receivers.push(receiver);
                }
                // No thread: this worker's batches are reported as errors in turn below.
                Err(_) => receivers.push(receiver),
            }
        }
        Self {
            receivers,
            handles,
            next: 0,
            count,
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Result<Batch2d>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.count {
            return None;
        }
        let receiver = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(
            receiver
                .recv()
                .unwrap_or_else(|_| Err(Error::Loader("a batch worker stopped unexpectedly".into()))),
        )
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the channels makes blocked workers return; then wait for them.
        self.receivers.clear();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}
