//! Tuning for mimalloc, the global allocator of the `meddino` binary and the examples.
//!
//! candle frees and allocates activation buffers of tens of MB at every tensor op. mimalloc
//! 3 returns freed memory to the OS after a delay (`purge_delay`, 1 s by default), so
//! buffers came back page-faulted and zeroed by the kernel: a third of a CPU training step
//! (ViT-B Primus, 224², batch 2) was system time, 20 s of 50 s over three steps; 7 s with
//! purging off. Keeping freed memory costs little here, as the next step reuses it.

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e` (`include/mimalloc.h` of the
/// libmimalloc-sys version in Cargo.lock); its bindings name no constant for it. The test
/// below checks the option's default (1000 ms in `src/options.c`) against it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. Call it first thing in `main`,
/// before other threads start (mimalloc's option setter is not thread-safe); it has no
/// effect unless mimalloc is the global allocator.
pub fn keep_freed_pages() {
    // SAFETY: setting an option is a plain store into mimalloc's option table; the caller
    // runs it before other threads exist.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // set from outside: the default cannot be told
        }
        // purge_delay defaults to 1000 ms; use_numa_nodes, the next option, to 0.
        // SAFETY: reading options is a plain load.
        let (delay, next) = unsafe {
            (
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY + 1),
            )
        };
        assert_eq!(
            (delay, next),
            (1000, 0),
            "option {MI_OPTION_PURGE_DELAY} is not purge_delay"
        );
    }
}
