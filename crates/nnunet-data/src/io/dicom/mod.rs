//! DICOM series reading (feature `dicom`, on by default): one folder holding the slices of
//! one CT series becomes one [`Image`], equal to what SimpleITK's `ImageSeriesReader` reads
//! from the files `ImageSeriesReader.GetGDCMSeriesFileNames(folder)` lists.
//!
//! - Files: every regular file of the folder (not its sub-folders) that carries the DICOM
//!   signature (`DICM` at byte 128); `DICOMDIR`, hidden files, other files and DICOM objects
//!   without pixel data are skipped.
//! - Voxels: stored values (BitsStored, two's complement when PixelRepresentation is 1) times
//!   RescaleSlope plus RescaleIntercept, computed in f64 and rounded to f32 — SimpleITK's
//!   values exactly, whether it returns them as integers or as floats. Transfer syntaxes:
//!   uncompressed (implicit/explicit VR), deflated, RLE Lossless and JPEG
//!   baseline/extended/lossless through dicom-rs's pure-Rust decoders.
//! - Layout: (Z, Y, X) in C order — Z along the slice normal (ascending), Y down the rows,
//!   X along a row — with the spacing in that order; the geometry in ITK's (x, y, z) order
//!   and LPS world (see [`series`] for how origin, direction and spacing are derived).
//!
//! Refused, each with its own [`Error`] variant naming the files: files of several series
//! ([`Error::MixedSeries`]), a missing or unusable geometry attribute
//! ([`Error::MissingTag`], [`Error::InvalidTag`]), slices that disagree in orientation
//! ([`Error::InconsistentOrientation`]) or size, spacing and pixel format
//! ([`Error::InconsistentSlices`]), positions off the slice normal ([`Error::GantryTilt`]),
//! non-uniform gaps ([`Error::NonUniformSpacing`]), pixel data this build cannot decode
//! ([`Error::UnsupportedTransferSyntax`]), multi-frame files and single-slice series.
//! SimpleITK reads tilted and unevenly spaced series without complaint, into a volume whose
//! geometry is wrong; the tolerances are [`DicomReadOptions`]'.
//!
//! ```no_run
//! # #[cfg(feature = "dicom")]
//! # fn main() -> nnunet_data::Result<()> {
//! let image = nnunet_data::io::dicom::read_dicom_series(std::path::Path::new("case_001/"))?;
//! println!("{:?} voxels, spacing {:?} (z, y, x)", image.data.shape(), image.spacing);
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "dicom"))]
//! # fn main() {}
//! ```

mod header;
mod pixels;
pub mod series;

use std::io::Read;
use std::path::{Path, PathBuf};

use dicom_object::{DefaultDicomObject, OpenFileOptions};
use ndarray::Array3;
use rayon::prelude::*;

use self::header::SliceHeader;
use super::{ImageReader, Volume};
use crate::error::{Error, Result};
use crate::io::Image;

/// How far a series may stray from a regular grid and still be read.
///
/// A length `L` along the slice normal (a gap between neighbours, or a slice's distance from
/// the first) is allowed an error of `absolute_tolerance_mm + relative_tolerance × L`:
/// - every gap between neighbouring slices must lie that close to the median gap, or
///   [`Error::NonUniformSpacing`] (the z spacing is then ITK's (last − first) / (slices − 1));
/// - every slice position must lie that close to the line through the first slice along the
///   normal, or [`Error::GantryTilt`].
///
/// The defaults, 5 µm + 1e-3 × L, absorb the rounding of positions written as decimal strings
/// (and a 0.06° slant) and refuse a missing slice or any real gantry tilt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DicomReadOptions {
    /// Absolute part of the tolerance, mm (default 0.005).
    pub absolute_tolerance_mm: f64,
    /// Relative part of the tolerance (default 1e-3).
    pub relative_tolerance: f64,
}

impl Default for DicomReadOptions {
    fn default() -> Self {
        Self {
            absolute_tolerance_mm: 0.005,
            relative_tolerance: 1e-3,
        }
    }
}

impl DicomReadOptions {
    /// The default tolerances.
    pub fn new() -> Self {
        Self::default()
    }

    /// With an absolute tolerance of `mm`.
    pub fn with_absolute_tolerance_mm(self, mm: f64) -> Self {
        Self {
            absolute_tolerance_mm: mm,
            ..self
        }
    }

    /// With a relative tolerance of `fraction`.
    pub fn with_relative_tolerance(self, fraction: f64) -> Self {
        Self {
            relative_tolerance: fraction,
            ..self
        }
    }
}

/// Whether `path` is a file with the DICOM signature (`DICM` after the 128-byte preamble).
pub fn is_dicom_file(path: &Path) -> bool {
    let mut head = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head[128..] == b"DICM")
}

/// The DICOM files directly in `folder`, in file-name order (skipping `DICOMDIR` and hidden
/// files).
///
/// # Errors
///
/// When the folder cannot be listed.
pub fn dicom_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let io_error = |source| Error::Io {
        path: folder.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.eq_ignore_ascii_case("DICOMDIR") {
            continue;
        }
        let path = entry.path();
        if path.is_file() && is_dicom_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Whether `folder` directly holds at least one DICOM file (a candidate series folder).
pub fn is_dicom_series_folder(folder: &Path) -> bool {
    folder.is_dir() && dicom_files(folder).is_ok_and(|files| !files.is_empty())
}

/// An opened image file: its checked header and the data set (pixel data still encoded).
fn open_slice(path: &Path) -> Result<Option<(SliceHeader, DefaultDicomObject)>> {
    let object = OpenFileOptions::new().open_file(path).map_err(|source| Error::Dicom {
        path: path.to_path_buf(),
        what: "cannot read the DICOM data set".into(),
        source: Box::new(source),
    })?;
    let Some(header) = SliceHeader::read(&object, path)? else {
        tracing::debug!(file = %path.display(), "no pixel data, not a slice");
        return Ok(None);
    };
    pixels::check_transfer_syntax(&object, &header)?;
    Ok(Some((header, object)))
}

/// Reads the DICOM series in `folder` with the default tolerances; see the module docs.
///
/// # Errors
///
/// See the module docs: each refusal names the files and attributes involved.
pub fn read_dicom_series(folder: &Path) -> Result<Image> {
    read_dicom_series_with_options(folder, &DicomReadOptions::default())
}

/// Reads the DICOM series in `folder` with `options`' tolerances.
///
/// # Errors
///
/// As [`read_dicom_series`].
pub fn read_dicom_series_with_options(folder: &Path, options: &DicomReadOptions) -> Result<Image> {
    if !folder.is_dir() {
        return Err(Error::Io {
            path: folder.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder of DICOM files"),
        });
    }
    let files = dicom_files(folder)?;
    let opened: Vec<Option<(SliceHeader, DefaultDicomObject)>> =
        files.par_iter().map(|path| open_slice(path)).collect::<Result<_>>()?;
    let (headers, objects): (Vec<SliceHeader>, Vec<DefaultDicomObject>) = opened.into_iter().flatten().unzip();
    let layout = series::layout(folder, &headers, options)?;
    let slices: Vec<Vec<f32>> = layout
        .order
        .par_iter()
        .map(|&k| pixels::slice_values(&objects[k], &headers[k]))
        .collect::<Result<_>>()?;
    let first = &headers[layout.order[0]];
    let shape = (slices.len(), usize::from(first.rows), usize::from(first.columns));
    let data = Array3::from_shape_vec(shape, slices.concat()).map_err(|e| Error::InvalidTag {
        path: first.path.clone(),
        tag: "PixelData (7FE0,0010)".into(),
        value: e.to_string(),
        expected: format!("{shape:?} voxels"),
    })?;
    let geometry = layout.geometry;
    Ok(Image {
        data: data.into_dyn(),
        spacing: geometry.spacing.iter().rev().copied().collect(),
        geometry,
    })
}

/// DICOM series reading behind the `ImageReader` seam: each path given is a series folder,
/// one channel of the case.
#[derive(Debug, Clone, Copy, Default)]
pub struct DicomIo {
    /// The tolerances.
    pub options: DicomReadOptions,
}

impl ImageReader for DicomIo {
    fn read_images(&self, files: &[PathBuf]) -> Result<Volume> {
        super::stack_channels(files, |folder| read_dicom_series_with_options(folder, &self.options))
    }
}
