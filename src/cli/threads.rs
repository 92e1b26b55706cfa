//! One thread budget for the whole process (`--threads`), settled before any worker thread
//! starts.
//!
//! Three pools share the cores: rayon's global pool (our kernels, planning, metrics),
//! candle's own rayon pool and its barrier pool (matrix products and element-wise ops).
//! candle sizes its pools from `RAYON_NUM_THREADS`, else from the CPU affinity mask alone,
//! so a container limited by a cgroup CPU quota (`docker --cpus 2` on a 64-core host) gets
//! one spinning thread per host core and training collapses. The budget is resolved once —
//! `--threads`, else `RAYON_NUM_THREADS`, else the cores this process may use as
//! [`std::thread::available_parallelism`] reports them (affinity and cgroup quota) — and
//! handed to all three pools.

use anyhow::Context;

/// The environment variable candle and rayon read their thread count from.
const RAYON_NUM_THREADS: &str = "RAYON_NUM_THREADS";

/// The number of threads: `requested` (`--threads`), else `from_env` (the value of
/// `RAYON_NUM_THREADS`, where a positive number), else one per core this process may use.
pub(crate) fn resolve(requested: Option<usize>, from_env: Option<&str>) -> usize {
    requested
        .or_else(|| from_env.and_then(|text| text.trim().parse().ok()))
        .filter(|&threads| threads > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// [`resolve`] with this process's environment.
pub(crate) fn resolve_from_env(requested: Option<usize>) -> usize {
    resolve(requested, std::env::var(RAYON_NUM_THREADS).ok().as_deref())
}

/// Sizes every worker pool of the process for `threads` threads. Call it first thing in
/// `main`, while the process has one thread: it sets an environment variable, and pools
/// that already started keep their size.
///
/// # Errors
///
/// When rayon's global pool was already built.
pub(crate) fn install(threads: usize) -> anyhow::Result<()> {
    std::env::set_var(RAYON_NUM_THREADS, threads.to_string());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|index| format!("meddino-{index}"))
        .build_global()
        .context("cannot start the worker threads")?;
    tracing::debug!(threads, "thread budget");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_then_the_environment_then_the_usable_cores() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(resolve(Some(3), Some("5")), 3);
        assert_eq!(resolve(None, Some("5")), 5);
        assert_eq!(resolve(None, Some(" 2 ")), 2);
        // rayon reads 0 and garbage as "the default"; so do we.
        assert_eq!(resolve(None, Some("0")), cores);
        assert_eq!(resolve(None, Some("many")), cores);
        assert_eq!(resolve(None, None), cores);
    }
}
