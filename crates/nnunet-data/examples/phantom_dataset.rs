//! Writes an nnU-Net raw data set of synthetic abdominal CT phantoms
//! ([`nnunet_data::phantom`]): `imagesTr`, `labelsTr`, `imagesTs`, `labelsTs` and
//! `dataset.json` in `FOLDER`, which must be named `DatasetNNN_Name` so that both
//! `nnUNetv2_plan_and_preprocess -d NNN` and `meddino plan-and-preprocess -d NNN` find it
//! under its parent (their raw folder).
//!
//! ```text
//! cargo run --release -p nnunet-data --example phantom_dataset -- /tmp/raw/Dataset501_CtBench
//! cargo run --release -p nnunet-data --example phantom_dataset -- FOLDER [--size 512] [--slices 64] \
//!     [--pixel-spacing MM] [--slice-thickness 3.0] [--train 12] [--test 0] [--seed 10]
//! ```
//!
//! The defaults make the plan-and-preprocess benchmark's data set (`docs/benchmarks.md`):
//! twelve CT-sized training cases, 64 slices of 512 × 512, 0.78 mm pixels (a 400 mm field of
//! view) and 3 mm slices (about 300 MB of `.nii.gz`). Every case of a data set has the same
//! spacing, so preprocessing resamples nothing. Everything follows from the seed.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use nnunet_data::phantom::{write_dataset, PhantomOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The in-plane field of view the default pixel spacing keeps, in mm.
const FIELD_OF_VIEW_MM: f64 = 400.0;

/// Writes an nnU-Net raw data set of synthetic abdominal CT phantoms.
#[derive(Debug, Parser)]
struct Args {
    /// The data set folder to write, named `DatasetNNN_Name` (e.g. /tmp/raw/Dataset501_CtBench)
    folder: PathBuf,
    /// In-plane size in voxels (square)
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Slices per case
    #[arg(long, default_value_t = 64)]
    slices: usize,
    /// In-plane spacing in mm (default: a 400 mm field of view, 400 / size)
    #[arg(long)]
    pixel_spacing: Option<f64>,
    /// Slice thickness in mm
    #[arg(long, default_value_t = 3.0)]
    slice_thickness: f64,
    /// Training cases (imagesTr, labelsTr)
    #[arg(long, default_value_t = 12)]
    train: usize,
    /// Held-out cases (imagesTs, labelsTs)
    #[arg(long, default_value_t = 0)]
    test: usize,
    /// Seed of the phantoms' shapes, positions and noise
    #[arg(long, default_value_t = 10)]
    seed: u32,
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    check_dataset_name(&args.folder)?;
    if args.size == 0 || args.slices == 0 || args.train == 0 {
        return Err(format!(
            "--size, --slices and --train must be positive, got {}, {} and {}",
            args.size, args.slices, args.train
        )
        .into());
    }
    let pixel_spacing = args.pixel_spacing.unwrap_or(FIELD_OF_VIEW_MM / args.size as f64);
    for (flag, value) in [
        ("--pixel-spacing", pixel_spacing),
        ("--slice-thickness", args.slice_thickness),
    ] {
        if !(value.is_finite() && value > 0.0) {
            return Err(format!("{flag} must be a positive number of mm, got {value}").into());
        }
    }
    let options = PhantomOptions {
        slices: args.slices,
        size: args.size,
        slice_thickness: args.slice_thickness,
        pixel_spacing,
        ..PhantomOptions::default()
    };
    let start = Instant::now();
    write_dataset(&args.folder, &options, args.seed, args.train, args.test)?;
    println!(
        "wrote {} + {} phantoms of {} × {} × {} (z, y, x), spacing {} × {pixel_spacing} × {pixel_spacing} mm, to {} in {:.1} s",
        args.train,
        args.test,
        args.slices,
        args.size,
        args.size,
        args.slice_thickness,
        args.folder.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// nnU-Net finds a raw data set by the folder name `DatasetNNN_Name` (three digits).
fn check_dataset_name(folder: &std::path::Path) -> Result<(), Error> {
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let valid = name
        .strip_prefix("Dataset")
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(id, label)| id.len() == 3 && id.bytes().all(|b| b.is_ascii_digit()) && !label.is_empty());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{}: the folder must be named DatasetNNN_Name (e.g. Dataset501_CtBench) for nnU-Net to find it",
            folder.display()
        )
        .into())
    }
}
