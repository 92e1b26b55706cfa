//! The attributes of one DICOM file that the series reader needs, checked one file at a
//! time; what must agree between files is checked in [`super::series`].

use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, Tag};

use crate::error::{Error, Result};

/// An attribute: its tag and its keyword, for error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attribute(pub Tag, pub &'static str);

impl std::fmt::Display for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.1, self.0)
    }
}

pub(crate) const SERIES_INSTANCE_UID: Attribute = Attribute(tags::SERIES_INSTANCE_UID, "SeriesInstanceUID");
pub(crate) const IMAGE_ORIENTATION: Attribute = Attribute(tags::IMAGE_ORIENTATION_PATIENT, "ImageOrientationPatient");
pub(crate) const IMAGE_POSITION: Attribute = Attribute(tags::IMAGE_POSITION_PATIENT, "ImagePositionPatient");
pub(crate) const PIXEL_SPACING: Attribute = Attribute(tags::PIXEL_SPACING, "PixelSpacing");
const ROWS: Attribute = Attribute(tags::ROWS, "Rows");
const COLUMNS: Attribute = Attribute(tags::COLUMNS, "Columns");
const BITS_ALLOCATED: Attribute = Attribute(tags::BITS_ALLOCATED, "BitsAllocated");
const BITS_STORED: Attribute = Attribute(tags::BITS_STORED, "BitsStored");
const PIXEL_REPRESENTATION: Attribute = Attribute(tags::PIXEL_REPRESENTATION, "PixelRepresentation");
const SAMPLES_PER_PIXEL: Attribute = Attribute(tags::SAMPLES_PER_PIXEL, "SamplesPerPixel");
const NUMBER_OF_FRAMES: Attribute = Attribute(tags::NUMBER_OF_FRAMES, "NumberOfFrames");
const RESCALE_SLOPE: Attribute = Attribute(tags::RESCALE_SLOPE, "RescaleSlope");
const RESCALE_INTERCEPT: Attribute = Attribute(tags::RESCALE_INTERCEPT, "RescaleIntercept");

/// Row and column direction cosines must be unit vectors and orthogonal to this precision
/// (GDCM's `DirectionCosines::IsValid` uses 1e-3 too); they are used as written.
const COSINE_TOLERANCE: f64 = 1e-3;

/// What the series reader takes from one image file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SliceHeader {
    /// The file.
    pub path: PathBuf,
    /// SeriesInstanceUID.
    pub series_uid: String,
    /// ImageOrientationPatient: the row cosine (direction of increasing column index), then
    /// the column cosine (direction of increasing row index), LPS.
    pub orientation: [f64; 6],
    /// ImagePositionPatient: the centre of the first transmitted pixel, LPS mm.
    pub position: [f64; 3],
    /// PixelSpacing as written: (between rows, between columns) in mm.
    pub pixel_spacing: [f64; 2],
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub columns: u16,
    /// BitsAllocated (8, 16 or 32).
    pub bits_allocated: u16,
    /// BitsStored.
    pub bits_stored: u16,
    /// PixelRepresentation 1 (two's complement).
    pub signed: bool,
    /// RescaleSlope (1 when absent).
    pub slope: f64,
    /// RescaleIntercept (0 when absent).
    pub intercept: f64,
}

fn missing(path: &Path, attribute: Attribute, needed: &str) -> Error {
    Error::MissingTag {
        path: path.to_path_buf(),
        tag: attribute.to_string(),
        needed: needed.to_string(),
    }
}

fn invalid(path: &Path, attribute: Attribute, value: impl std::fmt::Debug, expected: &str) -> Error {
    Error::InvalidTag {
        path: path.to_path_buf(),
        tag: attribute.to_string(),
        value: format!("{value:?}"),
        expected: expected.to_string(),
    }
}

/// The numbers of a multi-valued decimal or integer attribute, or `None` when absent or empty.
fn floats(object: &DefaultDicomObject, path: &Path, attribute: Attribute) -> Result<Option<Vec<f64>>> {
    let Some(element) = object.get(attribute.0) else {
        return Ok(None);
    };
    let text = element.to_str().map(|t| t.into_owned()).unwrap_or_default();
    if text.trim_matches(|c: char| c.is_whitespace() || c == '\0').is_empty() {
        return Ok(None);
    }
    let values = element
        .to_multi_float64()
        .map_err(|_| invalid(path, attribute, &text, "decimal numbers"))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(invalid(path, attribute, &text, "finite numbers"));
    }
    Ok(Some(values))
}

/// Exactly `N` numbers of a required attribute.
fn required<const N: usize>(
    object: &DefaultDicomObject,
    path: &Path,
    attribute: Attribute,
    needed: &str,
) -> Result<[f64; N]> {
    let values = floats(object, path, attribute)?.ok_or_else(|| missing(path, attribute, needed))?;
    <[f64; N]>::try_from(values.as_slice()).map_err(|_| invalid(path, attribute, &values, &format!("{N} values")))
}

/// One number of an optional attribute, or `default`.
fn optional(object: &DefaultDicomObject, path: &Path, attribute: Attribute, default: f64) -> Result<f64> {
    match floats(object, path, attribute)? {
        None => Ok(default),
        Some(values) => match values[..] {
            [value] => Ok(value),
            _ => Err(invalid(path, attribute, &values, "one value")),
        },
    }
}

/// An unsigned integer attribute (US), required.
fn unsigned(object: &DefaultDicomObject, path: &Path, attribute: Attribute) -> Result<u16> {
    let element = object
        .get(attribute.0)
        .ok_or_else(|| missing(path, attribute, "pixel data"))?;
    element
        .to_int::<u16>()
        .map_err(|_| invalid(path, attribute, element.value(), "an unsigned integer"))
}

impl SliceHeader {
    /// The header of an opened file, or `None` for a DICOM object without pixel data (a
    /// structured report, a presentation state), which is not a slice.
    ///
    /// # Errors
    ///
    /// When an attribute the volume needs is missing or unusable (the error names the file and
    /// the attribute), or the image is not a single-frame, single-sample grey image.
    pub(crate) fn read(object: &DefaultDicomObject, path: &Path) -> Result<Option<Self>> {
        if object.get(tags::PIXEL_DATA).is_none() {
            return Ok(None);
        }
        let series_uid = object
            .get(SERIES_INSTANCE_UID.0)
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim_end_matches(['\0', ' ']).to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing(path, SERIES_INSTANCE_UID, "grouping of files into one series"))?;
        let samples = optional(object, path, SAMPLES_PER_PIXEL, 1.0)?;
        if samples != 1.0 {
            return Err(invalid(
                path,
                SAMPLES_PER_PIXEL,
                samples,
                "1 (a grey-level image such as CT)",
            ));
        }
        let frames = optional(object, path, NUMBER_OF_FRAMES, 1.0)?;
        if frames != 1.0 {
            return Err(invalid(
                path,
                NUMBER_OF_FRAMES,
                frames,
                "1 (one slice per file; multi-frame images are not read as series)",
            ));
        }
        let orientation: [f64; 6] = required(object, path, IMAGE_ORIENTATION, "direction")?;
        let [r0, r1, r2, c0, c1, c2] = orientation;
        let dot = r0 * c0 + r1 * c1 + r2 * c2;
        let row_norm = (r0 * r0 + r1 * r1 + r2 * r2).sqrt();
        let column_norm = (c0 * c0 + c1 * c1 + c2 * c2).sqrt();
        if (row_norm - 1.0).abs() > COSINE_TOLERANCE
            || (column_norm - 1.0).abs() > COSINE_TOLERANCE
            || dot.abs() > COSINE_TOLERANCE
        {
            return Err(invalid(
                path,
                IMAGE_ORIENTATION,
                orientation,
                "two orthogonal unit vectors (row and column cosines, to 1e-3)",
            ));
        }
        let position: [f64; 3] = required(object, path, IMAGE_POSITION, "origin and slice order")?;
        let pixel_spacing: [f64; 2] = required(object, path, PIXEL_SPACING, "in-plane spacing")?;
        if pixel_spacing.iter().any(|s| *s <= 0.0) {
            return Err(invalid(
                path,
                PIXEL_SPACING,
                pixel_spacing,
                "two positive spacings (mm)",
            ));
        }
        let rows = unsigned(object, path, ROWS)?;
        let columns = unsigned(object, path, COLUMNS)?;
        if rows == 0 || columns == 0 {
            return Err(invalid(
                path,
                ROWS,
                (rows, columns),
                "a non-empty image (Rows, Columns > 0)",
            ));
        }
        let bits_allocated = unsigned(object, path, BITS_ALLOCATED)?;
        if ![8, 16, 32].contains(&bits_allocated) {
            return Err(invalid(path, BITS_ALLOCATED, bits_allocated, "8, 16 or 32"));
        }
        let bits_stored = unsigned(object, path, BITS_STORED)?;
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(invalid(
                path,
                BITS_STORED,
                bits_stored,
                &format!("1..={bits_allocated} (BitsAllocated)"),
            ));
        }
        let signed = match unsigned(object, path, PIXEL_REPRESENTATION)? {
            0 => false,
            1 => true,
            other => return Err(invalid(path, PIXEL_REPRESENTATION, other, "0 (unsigned) or 1 (signed)")),
        };
        Ok(Some(Self {
            path: path.to_path_buf(),
            series_uid,
            orientation,
            position,
            pixel_spacing,
            rows,
            columns,
            bits_allocated,
            bits_stored,
            signed,
            slope: optional(object, path, RESCALE_SLOPE, 1.0)?,
            intercept: optional(object, path, RESCALE_INTERCEPT, 0.0)?,
        }))
    }
}
