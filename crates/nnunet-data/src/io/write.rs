//! Writing label maps as NIfTI with a given SimpleITK geometry, as nnU-Net's SimpleITKIO
//! does: uint8 when every label is below 255, else uint16; compressed by the `.gz` ending;
//! both the sform and the qform describe the geometry (codes 1, scanner anatomical), and the
//! file appears atomically.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::ArrayViewD;
use nifti::writer::WriterOptions;
use nifti::NiftiHeader;

use super::geometry::ItkGeometry;
use crate::error::{Error, Result};

/// The header fields that carry `geometry` (ITK, LPS) as a NIfTI RAS affine.
fn header_for(geometry: &ItkGeometry) -> NiftiHeader {
    let n = geometry.spacing.len();
    // 3-D direction and spacing, a 2-D geometry extended with a unit z axis.
    let dir = |i: usize, j: usize| {
        if i < n && j < n {
            geometry.direction[i * n + j]
        } else if i == j {
            1.0
        } else {
            0.0
        }
    };
    let spacing = [0, 1, 2].map(|j| geometry.spacing.get(j).copied().unwrap_or(1.0));
    let origin = [0, 1, 2].map(|i| geometry.origin.get(i).copied().unwrap_or(0.0));
    // LPS → RAS: negate the first two world rows.
    let flip = |i: usize| if i < 2 { -1.0 } else { 1.0 };
    let r = [0, 1, 2].map(|i| [0, 1, 2].map(|j| flip(i) * dir(i, j)));
    let mut header = NiftiHeader::default();
    for i in 0..3 {
        let row = [
            r[i][0] * spacing[0],
            r[i][1] * spacing[1],
            r[i][2] * spacing[2],
            flip(i) * origin[i],
        ]
        .map(|v| v as f32);
        match i {
            0 => header.srow_x = row,
            1 => header.srow_y = row,
            _ => header.srow_z = row,
        }
    }
    // qform: a proper rotation, with a reflection carried by qfac (pixdim[0]).
    let det = r[0][0] * (r[1][1] * r[2][2] - r[1][2] * r[2][1]) - r[0][1] * (r[1][0] * r[2][2] - r[1][2] * r[2][0])
        + r[0][2] * (r[1][0] * r[2][1] - r[1][1] * r[2][0]);
    let qfac = if det < 0.0 { -1.0 } else { 1.0 };
    let m = [0, 1, 2].map(|i| [r[i][0], r[i][1], r[i][2] * qfac]);
    let trace = m[0][0] + m[1][1] + m[2][2];
    let (a, b, c, d) = if trace > 0.0 {
        let s = 0.5 / (trace + 1.0).sqrt();
        (
            0.25 / s,
            (m[2][1] - m[1][2]) * s,
            (m[0][2] - m[2][0]) * s,
            (m[1][0] - m[0][1]) * s,
        )
    } else if m[0][0] > m[1][1] && m[0][0] > m[2][2] {
        let s = 2.0 * (1.0 + m[0][0] - m[1][1] - m[2][2]).sqrt();
        (
            (m[2][1] - m[1][2]) / s,
            0.25 * s,
            (m[0][1] + m[1][0]) / s,
            (m[0][2] + m[2][0]) / s,
        )
    } else if m[1][1] > m[2][2] {
        let s = 2.0 * (1.0 + m[1][1] - m[0][0] - m[2][2]).sqrt();
        (
            (m[0][2] - m[2][0]) / s,
            (m[0][1] + m[1][0]) / s,
            0.25 * s,
            (m[1][2] + m[2][1]) / s,
        )
    } else {
        let s = 2.0 * (1.0 + m[2][2] - m[0][0] - m[1][1]).sqrt();
        (
            (m[1][0] - m[0][1]) / s,
            (m[0][2] + m[2][0]) / s,
            (m[1][2] + m[2][1]) / s,
            0.25 * s,
        )
    };
    let sign = if a < 0.0 { -1.0 } else { 1.0 };
    header.quatern_b = (sign * b) as f32;
    header.quatern_c = (sign * c) as f32;
    header.quatern_d = (sign * d) as f32;
    header.quatern_x = (flip(0) * origin[0]) as f32;
    header.quatern_y = (flip(1) * origin[1]) as f32;
    header.quatern_z = (flip(2) * origin[2]) as f32;
    header.pixdim = [
        qfac as f32,
        spacing[0] as f32,
        spacing[1] as f32,
        spacing[2] as f32,
        1.0,
        1.0,
        1.0,
        1.0,
    ];
    header.sform_code = 1;
    header.qform_code = 1;
    header.xyzt_units = 2; // millimetres
    header
}

/// Writes a label map in array order ((Z,) Y, X) with `geometry` (ITK order, from the image
/// it belongs to) to `path` (`.nii` or `.nii.gz`), atomically.
///
/// # Errors
///
/// When the rank does not match the geometry, a label is outside `0..=65535`, or the file
/// cannot be written (the error names it; nothing is left at `path`).
pub fn write_label_map(path: &Path, labels: ArrayViewD<'_, i32>, geometry: &ItkGeometry) -> Result<()> {
    let fail = |message: String| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(message),
    };
    if labels.ndim() != geometry.spacing.len() || !(2..=3).contains(&labels.ndim()) {
        return Err(fail(format!(
            "label map of shape {:?} does not fit a {}-D geometry",
            labels.shape(),
            geometry.spacing.len()
        )));
    }
    let max = labels.iter().copied().max().unwrap_or(0);
    if labels.iter().any(|&v| !(0..=i32::from(u16::MAX)).contains(&v)) {
        return Err(fail("label values must lie in 0..=65535".into()));
    }
    // NIfTI order is (x, y, z): reversing the axes of the C-order (z, y, x) array.
    let xyz = labels.reversed_axes();
    write_atomically(path, geometry, |options| {
        if max < 255 {
            options.write_nifti(&xyz.mapv(|v| v as u8))
        } else {
            options.write_nifti(&xyz.mapv(|v| v as u16))
        }
    })
}

/// Writes a CT image in Hounsfield units as int16 (as scanners store them), in array order
/// ((Z,) Y, X) with `geometry`, atomically.
///
/// # Errors
///
/// When the rank does not match the geometry or the file cannot be written.
pub fn write_ct_image(path: &Path, image: ArrayViewD<'_, i16>, geometry: &ItkGeometry) -> Result<()> {
    if image.ndim() != geometry.spacing.len() || !(2..=3).contains(&image.ndim()) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "image of shape {:?} does not fit a {}-D geometry",
                image.shape(),
                geometry.spacing.len()
            )),
        });
    }
    let xyz = image.reversed_axes();
    write_atomically(path, geometry, |options| options.write_nifti(&xyz))
}

/// Writes an image in array order ((Z,) Y, X) with `geometry`, atomically: as int16 when
/// every voxel is an integer in int16's range (CT in HU as scanners store it, half the size),
/// else as float32, so the values read back exactly either way.
///
/// # Errors
///
/// When the rank does not match the geometry or the file cannot be written.
pub fn write_image(path: &Path, image: ArrayViewD<'_, f32>, geometry: &ItkGeometry) -> Result<()> {
    let integral = image
        .iter()
        .all(|&v| v.fract() == 0.0 && (f32::from(i16::MIN)..=f32::from(i16::MAX)).contains(&v));
    if integral {
        return write_ct_image(path, image.mapv(|v| v as i16).view(), geometry);
    }
    if image.ndim() != geometry.spacing.len() || !(2..=3).contains(&image.ndim()) {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "image of shape {:?} does not fit a {}-D geometry",
                image.shape(),
                geometry.spacing.len()
            )),
        });
    }
    let xyz = image.reversed_axes();
    write_atomically(path, geometry, |options| options.write_nifti(&xyz))
}

/// Runs `write` on writer options for a temporary file beside `path` with `geometry`'s
/// header, then renames it to `path`; nothing is left behind on failure.
fn write_atomically(
    path: &Path,
    geometry: &ItkGeometry,
    write: impl FnOnce(WriterOptions<'_>) -> std::result::Result<(), nifti::NiftiError>,
) -> Result<()> {
    let fail = |message: String| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(message),
    };
    let header = header_for(geometry);
    // The writer picks compression from the ending and rewrites everything after the last
    // dots of the name, so the temporary name has no other dots; a counter keeps parallel
    // writers in one process apart.
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ending = if name.ends_with(".gz") { "nii.gz" } else { "nii" };
    let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
    let temporary = path.with_file_name(format!(".meddino-tmp-{}-{unique}.{ending}", std::process::id()));
    let result = match write(WriterOptions::new(&temporary).reference_header(&header)) {
        Ok(()) => std::fs::rename(&temporary, path).map_err(|e| fail(e.to_string())),
        Err(e) => Err(fail(e.to_string())),
    };
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
