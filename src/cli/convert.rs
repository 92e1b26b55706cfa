//! `meddino convert`: bring images into the formats the pipeline reads (a DICOM series to
//! NIfTI).

use std::path::PathBuf;

use anyhow::Context;
use meddino::data::io::dicom::{read_dicom_series_with_options, DicomReadOptions};
use meddino::data::io::write_image;

/// Arguments of `meddino convert`.
#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    #[command(subcommand)]
    from: ConvertFrom,
}

/// What to convert from.
#[derive(Debug, clap::Subcommand)]
enum ConvertFrom {
    /// A folder holding one DICOM series to one NIfTI file (as SimpleITK's ImageSeriesReader
    /// reads it).
    #[command(long_about = "Read the DICOM series in DIR (its files, not its sub-folders) as \
        SimpleITK's ImageSeriesReader does — slices sorted along the slice normal, origin, \
        direction and spacing from ImagePositionPatient, ImageOrientationPatient and \
        PixelSpacing, RescaleSlope/RescaleIntercept applied (Hounsfield units) — and write it to \
        OUT (.nii or .nii.gz) atomically: int16 when every value is an integer in int16's range, \
        else float32. Refused with an error naming the files: more than one series in DIR, missing \
        or inconsistent geometry, slices off the normal (gantry tilt), non-uniform slice gaps \
        beyond the tolerance, pixel data this build cannot decode.")]
    Dicom(DicomArgs),
}

/// Arguments of `meddino convert dicom`.
#[derive(Debug, clap::Args)]
struct DicomArgs {
    /// Folder holding the series' files.
    #[arg(value_name = "DIR")]
    input: PathBuf,

    /// NIfTI file to write (`.nii.gz` or `.nii`).
    #[arg(value_name = "OUT")]
    output: PathBuf,

    /// Absolute part of the slice-position tolerance, mm: gaps may differ from the median gap,
    /// and positions stray from the slice normal, by this plus --relative-tolerance × the length.
    #[arg(long, value_name = "MM", default_value_t = DicomReadOptions::default().absolute_tolerance_mm)]
    absolute_tolerance: f64,

    /// Relative part of the slice-position tolerance.
    #[arg(long, value_name = "FRACTION", default_value_t = DicomReadOptions::default().relative_tolerance)]
    relative_tolerance: f64,
}

/// Runs `meddino convert`.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    match args.from {
        ConvertFrom::Dicom(args) => dicom(args),
    }
}

fn dicom(args: DicomArgs) -> anyhow::Result<()> {
    let name = args
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    anyhow::ensure!(
        name.ends_with(".nii.gz") || name.ends_with(".nii"),
        "{}: the output must end in .nii.gz or .nii",
        args.output.display()
    );
    anyhow::ensure!(
        args.absolute_tolerance >= 0.0 && args.relative_tolerance >= 0.0,
        "the tolerances must not be negative"
    );
    let options = DicomReadOptions::new()
        .with_absolute_tolerance_mm(args.absolute_tolerance)
        .with_relative_tolerance(args.relative_tolerance);
    let image = read_dicom_series_with_options(&args.input, &options)?;
    write_image(&args.output, image.data.view(), &image.geometry)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "{}: {:?} voxels (z, y, x), spacing {:?} mm (x, y, z), written to {}",
        args.input.display(),
        image.data.shape(),
        image.geometry.spacing,
        args.output.display()
    );
    Ok(())
}
