//! Errors of the nnU-Net data crate.

use std::path::PathBuf;

/// What can go wrong reading or checking nnU-Net data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A NIfTI file could not be parsed.
    #[error("{}: not a readable NIfTI-1 file: {source}", path.display())]
    Nifti {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: nifti::NiftiError,
    },
    /// A NIfTI header whose fields contradict the file.
    #[error("{}: invalid NIfTI header: {message}", path.display())]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// Which field is wrong, and what was expected.
        message: String,
    },
    /// An image of a dimensionality this code does not handle.
    #[error("{}: expected a 2-D or 3-D image, got shape {shape:?} (NIfTI x, y, z, ...)", path.display())]
    UnsupportedDimensionality {
        /// The file.
        path: PathBuf,
        /// The shape in NIfTI order.
        shape: Vec<usize>,
    },
    /// Voxel spacing that is zero, negative or not finite.
    #[error("{}: invalid voxel spacing {spacing:?} (x, y, z) in the header (expected positive, finite values)", path.display())]
    InvalidSpacing {
        /// The file.
        path: PathBuf,
        /// The spacing found, in NIfTI order.
        spacing: Vec<f64>,
    },
    /// A label map holding a value that is not a label.
    #[error("{}: not a label map: voxel value {value} is not an integer in [0, {max}]", path.display())]
    NotALabelMap {
        /// The file.
        path: PathBuf,
        /// The offending value.
        value: f64,
        /// The largest label supported.
        max: u16,
    },
    /// A JSON file that does not parse or lacks what nnU-Net requires.
    #[error("{}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// Channels (or image and label) of one case that do not fit together.
    #[error("{} and {} do not match: {detail}", first.display(), other.display())]
    ChannelMismatch {
        /// The first file.
        first: PathBuf,
        /// The file that differs.
        other: PathBuf,
        /// Shapes and spacings of both.
        detail: String,
    },
    /// A preprocessed case that cannot be used.
    #[error("{}: {message}", path.display())]
    Preprocessed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A raw case that cannot be used as it is.
    #[error("{}: {}", path.display(), problems.join("; "))]
    InvalidCase {
        /// The raw data set's folder.
        path: PathBuf,
        /// Every problem found, each starting with the case id.
        problems: Vec<String>,
    },
    /// A DICOM file that cannot be parsed or decoded (dicom-rs's error as the source).
    #[error("{}: {what}: {source}", path.display())]
    Dicom {
        /// The file.
        path: PathBuf,
        /// What was being done (reading the data set, decoding the pixel data).
        what: String,
        /// dicom-rs's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A folder that holds no DICOM image files.
    #[error("{}: no DICOM image files (files with the DICM signature and pixel data) in this folder", path.display())]
    NoDicomFiles {
        /// The folder.
        path: PathBuf,
    },
    /// Files of more than one series in one folder (one folder must be one series).
    #[error("more than one DICOM series in one folder: SeriesInstanceUID {first_uid} ({}) and {other_uid} ({}); put each series in its own folder", first.display(), other.display())]
    MixedSeries {
        /// The first series' UID.
        first_uid: String,
        /// A file of the first series.
        first: PathBuf,
        /// The other series' UID.
        other_uid: String,
        /// A file of the other series.
        other: PathBuf,
    },
    /// A DICOM attribute the series reader needs is absent.
    #[error("{}: missing DICOM attribute {tag} (needed for the volume's {needed})", path.display())]
    MissingTag {
        /// The file.
        path: PathBuf,
        /// The attribute's keyword and tag, e.g. `ImagePositionPatient (0020,0032)`.
        tag: String,
        /// What it is needed for.
        needed: String,
    },
    /// A DICOM attribute with a value the series reader cannot use.
    #[error("{}: DICOM attribute {tag} is {value}, expected {expected}", path.display())]
    InvalidTag {
        /// The file.
        path: PathBuf,
        /// The attribute's keyword and tag.
        tag: String,
        /// The value found.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// Slices of one series with different ImageOrientationPatient.
    #[error("{} has ImageOrientationPatient {first_value:?}, {} has {other_value:?}: slices of one volume must share their orientation", first.display(), other.display())]
    InconsistentOrientation {
        /// The first file (in file-name order).
        first: PathBuf,
        /// Its row and column cosines.
        first_value: Box<[f64; 6]>,
        /// A file that differs.
        other: PathBuf,
        /// Its row and column cosines.
        other_value: Box<[f64; 6]>,
    },
    /// Slices of one series that differ in size, pixel spacing or pixel format.
    #[error("{} has {attribute} {first_value}, {} has {other_value}: slices of one volume must agree", first.display(), other.display())]
    InconsistentSlices {
        /// The first file (in file-name order).
        first: PathBuf,
        /// A file that differs.
        other: PathBuf,
        /// The attribute's keyword (`Rows`, `Columns`, `PixelSpacing`, `BitsAllocated`, ...).
        attribute: &'static str,
        /// The first file's value.
        first_value: Box<str>,
        /// The other file's value.
        other_value: Box<str>,
    },
    /// Slice positions that do not lie along the slice normal (a gantry-tilted or sheared
    /// acquisition), which a volume with an orthogonal direction cannot represent.
    #[error("slice positions are tilted {angle_degrees:.3}° from the slice normal (from {} to {}, {off_line:.4} mm off the normal, tolerance {tolerance:.4} mm); gantry-tilted series must be resampled first", first.display(), other.display())]
    GantryTilt {
        /// The first slice along the normal.
        first: PathBuf,
        /// The slice whose position strays most.
        other: PathBuf,
        /// The angle between the normal and the line from the first slice to `other`.
        angle_degrees: f64,
        /// How far `other` lies from the line through the first slice along the normal (mm).
        off_line: f64,
        /// The distance allowed there (mm).
        tolerance: f64,
    },
    /// Gaps between neighbouring slices that differ from the series' median gap (a missing or
    /// duplicated slice).
    #[error("non-uniform slice spacing: {} at {from:.4} mm and {} at {to:.4} mm along the normal are {gap:.4} mm apart, expected {expected:.4} mm (tolerance {tolerance:.4} mm)", first.display(), second.display())]
    NonUniformSpacing {
        /// The slice before the gap.
        first: PathBuf,
        /// The slice after the gap.
        second: PathBuf,
        /// The first slice's position along the normal (mm).
        from: f64,
        /// The second slice's position along the normal (mm).
        to: f64,
        /// The gap found (mm).
        gap: f64,
        /// The median gap of the series (mm).
        expected: f64,
        /// The difference from `expected` allowed (mm).
        tolerance: f64,
    },
    /// A transfer syntax whose pixel data this build cannot decode.
    #[error("{}: transfer syntax {uid} ({name}) cannot be decoded: {reason}", path.display())]
    UnsupportedTransferSyntax {
        /// The file.
        path: PathBuf,
        /// The transfer syntax UID.
        uid: String,
        /// Its name, or `unknown`.
        name: String,
        /// Why (no decoder in this build, and which would be needed).
        reason: String,
    },
    /// Plans that cannot be used (missing or circular configurations).
    #[error("plans: {0}")]
    Plan(String),
    /// Cross-validation folds that cannot be made.
    #[error("{0}")]
    Split(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
