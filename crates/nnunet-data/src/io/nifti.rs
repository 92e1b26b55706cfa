//! NIfTI-1 reading through the `nifti` crate (`.nii` and `.nii.gz`, every datatype,
//! big-endian, `scl_slope`/`scl_inter` applied).
//!
//! The voxel array is returned in C order with the axes reversed from NIfTI's, so a 3-D
//! file of NIfTI shape (x, y, z) gives (z, y, x) and a 2-D file (x, y) gives (y, x); trailing
//! axes of length 1 beyond the third (e.g. a 4-D file with one time point) are dropped. The
//! spacing is SimpleITK's (`|pixdim[1..=n]|`, or the sform's column lengths when the sform
//! defines the geometry; see [`super::geometry`]) in the same reversed order.

use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use nifti::{InMemNiftiVolume, IntoNdArray, NiftiObject, NiftiType, NiftiVolume, ReaderOptions};

use super::geometry::{itk_geometry, ItkGeometry};
use crate::error::{Error, Result};

/// An image: voxel values in array order, the spacing (mm) of each array axis, and the
/// geometry SimpleITK reports (for writing results back in place).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Voxel values after scaling, shape ((Z,) Y, X), C order.
    pub data: ArrayD<f32>,
    /// Spacing per array axis in mm.
    pub spacing: Vec<f64>,
    /// Spacing, origin and direction in ITK's (x, y, z) order and LPS world.
    pub geometry: ItkGeometry,
}

/// A label map: integer labels in array order and the spacing of each array axis.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    /// Labels, shape ((Z,) Y, X), C order.
    pub data: ArrayD<u16>,
    /// Spacing per array axis in mm.
    pub spacing: Vec<f64>,
}

/// Reads a 2-D or 3-D NIfTI-1 image.
///
/// # Errors
///
/// When the file cannot be read or parsed (a truncated or corrupt file included), is not 2-D
/// or 3-D, or has an invalid spacing; the error names the file.
pub fn read_image(path: &Path) -> Result<Image> {
    let (header, volume) = open(path)?;
    image_from(path, &header, volume)
}

/// The image of an opened file: voxels converted to f32 (scaling applied) in array order.
fn image_from(path: &Path, header: &nifti::NiftiHeader, volume: InMemNiftiVolume) -> Result<Image> {
    let mut volume = volume.into_ndarray::<f32>().map_err(|source| Error::Nifti {
        path: path.to_path_buf(),
        source,
    })?;
    let (shape, geometry) = array_shape(path, header, volume.shape())?;
    while volume.ndim() > shape.len() {
        let last = Axis(volume.ndim() - 1);
        volume = volume.index_axis_move(last, 0);
    }
    // The crate returns NIfTI (x, y, z) order in Fortran layout: reversing the axes gives
    // (z, y, x) in C layout, kept as it is (`as_standard_layout` would copy it).
    let volume = volume.reversed_axes();
    let data = if volume.is_standard_layout() {
        volume
    } else {
        volume.as_standard_layout().into_owned()
    };
    Ok(Image {
        data,
        spacing: geometry.spacing.iter().rev().copied().collect(),
        geometry,
    })
}

/// Checks the header, then reads it and the voxel data (decompressed, not yet converted).
fn open(path: &Path) -> Result<(nifti::NiftiHeader, InMemNiftiVolume)> {
    if !path.is_file() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        return Err(Error::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    check_header(path)?;
    let object = ReaderOptions::new().read_file(path).map_err(|source| Error::Nifti {
        path: path.to_path_buf(),
        source,
    })?;
    let header = object.header().clone();
    // The nifti crate reads a single-file image's data right after the extensions whatever
    // vox_offset says; nibabel and SimpleITK seek to vox_offset. Refuse files where the two
    // differ rather than read other bytes than the reference readers would.
    let data_start = 352 + object.extensions().bytes_on_disk();
    if &header.magic == b"n+1\0" && header.vox_offset.round() as usize != data_start {
        return Err(Error::InvalidHeader {
            path: path.to_path_buf(),
            message: format!(
                "vox_offset is {}, but the data starts at byte {data_start} (header and extensions)",
                header.vox_offset
            ),
        });
    }
    Ok((header, object.into_volume()))
}

/// The array's NIfTI-order shape without trailing axes of length 1 beyond the third, and
/// its geometry; refuses anything but 2-D and 3-D and invalid spacings.
fn array_shape(path: &Path, header: &nifti::NiftiHeader, dims: &[usize]) -> Result<(Vec<usize>, ItkGeometry)> {
    let mut shape = dims.to_vec();
    while shape.len() > 3 && shape.last() == Some(&1) {
        shape.pop();
    }
    if !(2..=3).contains(&shape.len()) {
        return Err(Error::UnsupportedDimensionality {
            path: path.to_path_buf(),
            shape,
        });
    }
    let geometry = itk_geometry(header, shape.len());
    if geometry.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
        return Err(Error::InvalidSpacing {
            path: path.to_path_buf(),
            spacing: geometry.spacing,
        });
    }
    Ok((shape, geometry))
}

/// Promised data sizes above this are checked against the file before the nifti crate
/// allocates them: a `.nii.gz` header can promise any size, and the crate reserves it all
/// up front (a fuzzed 1 kB file asked for 189 GB).
const CHECK_PROMISES_ABOVE: u64 = 256 << 20;

/// Refuses, before the nifti crate reads the data, headers it would mishandle:
/// - `bitpix` that is not its datatype's size (the crate reads `bitpix` bits per voxel,
///   then panics building the array from a datatype of another size; found by fuzzing);
/// - `dim` and `bitpix` promising more data than the file holds, without allocating it
///   (the crate reserves the promise up front). For `.nii` the file size tells; for
///   `.nii.gz`, promises above [`CHECK_PROMISES_ABOVE`] are checked by decompressing into
///   nothing and counting.
///
/// Headers the crate cannot parse at all are left to it (it names the problem).
fn check_header(path: &Path) -> Result<()> {
    let Ok(header) = nifti::NiftiHeader::from_file(path) else {
        return Ok(());
    };
    if let Ok(datatype) = header.data_type() {
        if i64::from(header.bitpix) != 8 * datatype.size_of() as i64 {
            return Err(Error::InvalidHeader {
                path: path.to_path_buf(),
                message: format!(
                    "bitpix {} does not match datatype {datatype:?} ({} bits per voxel)",
                    header.bitpix,
                    8 * datatype.size_of()
                ),
            });
        }
    }
    let rank = usize::from(header.dim[0]).min(7);
    let voxels = header.dim[1..=rank]
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(u64::from(d)));
    let bytes = voxels.and_then(|n| n.checked_mul(header.bitpix.max(8) as u64 / 8));
    let start = header.vox_offset.max(352.0) as u64;
    let Some(promised) = bytes.and_then(|b| b.checked_add(start)) else {
        return Err(Error::InvalidHeader {
            path: path.to_path_buf(),
            message: format!("dim {:?} promises an impossible amount of data", header.dim),
        });
    };
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    let held = if gzipped {
        if promised <= CHECK_PROMISES_ABOVE {
            return Ok(());
        }
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut stream = std::io::Read::take(
            flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file)),
            promised,
        );
        // A corrupt stream ends the count early; the read proper reports it.
        std::io::copy(&mut stream, &mut std::io::sink()).unwrap_or(0)
    } else {
        std::fs::metadata(path).map_or(u64::MAX, |m| m.len())
    };
    if held < promised {
        return Err(Error::InvalidHeader {
            path: path.to_path_buf(),
            message: format!(
                "dim {:?}, bitpix {} and vox_offset {} promise {promised} bytes, the file holds {}{held}",
                &header.dim[..=rank],
                header.bitpix,
                header.vox_offset,
                if gzipped { "at most " } else { "" }
            ),
        });
    }
    Ok(())
}

/// Reads a 2-D or 3-D NIfTI-1 label map (any integer or float datatype holding integers in
/// `0..=u16::MAX`).
///
/// # Errors
///
/// As [`read_image`], and [`Error::NotALabelMap`] for a negative, fractional, too large or
/// NaN value.
pub fn read_label_map(path: &Path) -> Result<LabelMap> {
    let (header, volume) = open(path)?;
    let dims: Vec<usize> = volume.dim().iter().map(|&d| usize::from(d)).collect();
    let unscaled = header.scl_slope == 0.0 || (header.scl_slope == 1.0 && header.scl_inter == 0.0);
    // Integer voxels become labels directly: one pass, no float copy of the volume.
    let labels = match (unscaled, volume.data_type()) {
        (true, NiftiType::Uint8) => Ok(typed::<u8>(path, volume)?.into_iter().map(u16::from).collect()),
        (true, NiftiType::Int8) => to_labels(typed::<i8>(path, volume)?),
        (true, NiftiType::Uint16) => Ok(typed::<u16>(path, volume)?),
        (true, NiftiType::Int16) => to_labels(typed::<i16>(path, volume)?),
        (true, NiftiType::Uint32) => to_labels(typed::<u32>(path, volume)?),
        (true, NiftiType::Int32) => to_labels(typed::<i32>(path, volume)?),
        (true, NiftiType::Uint64) => to_labels(typed::<u64>(path, volume)?),
        (true, NiftiType::Int64) => to_labels(typed::<i64>(path, volume)?),
        // Floats, or scaled integers: through f32 as SimpleITK reads them.
        _ => return float_label_map(path, &header, volume),
    };
    let labels = labels.map_err(|value| not_a_label_map(path, value))?;
    let (shape, geometry) = array_shape(path, &header, &dims)?;
    // NIfTI's Fortran-order (x, y, z) voxels are the C-order (z, y, x) array.
    let data =
        ArrayD::from_shape_vec(IxDyn(&shape.iter().rev().copied().collect::<Vec<_>>()), labels).map_err(|e| {
            Error::InvalidHeader {
                path: path.to_path_buf(),
                message: format!("dim {dims:?}: {e}"),
            }
        })?;
    Ok(LabelMap {
        data,
        spacing: geometry.spacing.iter().rev().copied().collect(),
    })
}

/// A label map from float (or scaled) voxels, each of which must be an integer in
/// `0..=u16::MAX`.
fn float_label_map(path: &Path, header: &nifti::NiftiHeader, volume: InMemNiftiVolume) -> Result<LabelMap> {
    let image = image_from(path, header, volume)?;
    if let Some(&bad) = image
        .data
        .iter()
        .find(|&&v| !(v >= 0.0 && v <= f32::from(u16::MAX) && v.fract() == 0.0))
    {
        return Err(not_a_label_map(path, f64::from(bad)));
    }
    Ok(LabelMap {
        data: image.data.mapv(|v| v as u16),
        spacing: image.spacing,
    })
}

/// The error for a voxel `value` that is no label.
fn not_a_label_map(path: &Path, value: f64) -> Error {
    Error::NotALabelMap {
        path: path.to_path_buf(),
        value,
        max: u16::MAX,
    }
}

/// The voxels as the header's own integer type.
fn typed<T: nifti::DataElement>(path: &Path, volume: InMemNiftiVolume) -> Result<Vec<T>> {
    volume.into_nifti_typed_data::<T>().map_err(|source| Error::Nifti {
        path: path.to_path_buf(),
        source,
    })
}

/// Integer voxels as labels, or the first value outside `0..=u16::MAX`.
fn to_labels<T: Copy + Into<i128>>(values: Vec<T>) -> std::result::Result<Vec<u16>, f64> {
    values
        .into_iter()
        .map(|v| {
            let v: i128 = v.into();
            u16::try_from(v).map_err(|_| v as f64)
        })
        .collect()
}
