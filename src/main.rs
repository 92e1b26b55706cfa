//! The `meddino` command line: see `meddino --help` and `docs/cli.md`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

// candle allocates a fresh buffer for every tensor; the system allocator hands large ones
// back to the kernel on free, so each training step page-faults its activations in again.
// mimalloc keeps them: 0.33 → 0.19 s per step of the demo network (128², batch 8), once told
// not to return freed memory to the OS (`keep_freed_pages`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    meddino::train::allocator::keep_freed_pages();
    let args = cli::Cli::parse_from(std::env::args_os().map(cli::nnunet_style_flag));
    cli::init_logging(args.verbosity());
    if let Err(error) = args.install_thread_budget() {
        eprintln!("error: {}", cli::describe_error(&error));
        return ExitCode::from(cli::EXIT_FAILURE);
    }
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", cli::describe_error(&error));
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

/// A closed stdout (`meddino … | head`) is not an error worth reporting.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
