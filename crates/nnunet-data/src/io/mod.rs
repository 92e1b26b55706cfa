//! Image I/O. Volumes come out in nnU-Net's array order ((Z,) Y, X, C-contiguous) with the
//! spacing in the same order, i.e. SimpleITK's order reversed; NIfTI's (x, y, z) order exists
//! only inside the readers.

pub mod atomic;
pub mod geometry;
pub mod nifti;

pub use self::atomic::write_atomic;
pub use self::geometry::ItkGeometry;
pub use self::nifti::{read_image, read_label_map, Image, LabelMap};

use std::path::PathBuf;

use ndarray::{Array4, Axis};

use crate::error::{Error, Result};

/// A case as nnU-Net's SimpleITK reader returns it: channels stacked to (C, Z, Y, X), the
/// spacing of (Z, Y, X), and the first channel's ITK geometry for writing results back.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    /// Voxel values, (C, Z, Y, X), C order.
    pub data: Array4<f32>,
    /// Spacing of the Z, Y and X axes in mm. A 2-D image gets Z spacing 999·max(sy, sx).
    pub spacing: [f64; 3],
    /// The first channel's geometry, in ITK's (x, y[, z]) order.
    pub geometry: ItkGeometry,
}

/// Reads a case's channel files (or a label file, as one channel) into one [`Volume`]: 2-D
/// images become (C, 1, H, W) with a Z spacing of 999 times the larger in-plane spacing, as
/// nnU-Net does.
///
/// # Errors
///
/// When a file cannot be read, or the channels differ in shape or spacing (the error names
/// both files).
pub fn read_images(paths: &[PathBuf]) -> Result<Volume> {
    let mut channels = Vec::with_capacity(paths.len());
    let mut first: Option<(PathBuf, [f64; 3], ItkGeometry)> = None;
    for path in paths {
        let image = read_image(path)?;
        let (data, spacing) = match image.spacing[..] {
            [sy, sx] => (image.data.insert_axis(Axis(0)), [999.0 * sx.max(sy), sy, sx]),
            [sz, sy, sx] => (image.data, [sz, sy, sx]),
            _ => unreachable!("read_image returns 2-D or 3-D images"),
        };
        let data = data
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|_| Error::UnsupportedDimensionality {
                path: path.clone(),
                shape: vec![],
            })?;
        if let Some((first_path, first_spacing, _)) = &first {
            let shape0: &[usize] = channels.first().map_or(&[][..], |c: &ndarray::Array3<f32>| c.shape());
            if data.shape() != shape0
                || first_spacing
                    .iter()
                    .zip(&spacing)
                    .any(|(a, b)| (a - b).abs() > 1e-5 * a.abs())
            {
                return Err(Error::ChannelMismatch {
                    first: first_path.clone(),
                    other: path.clone(),
                    detail: format!(
                        "shape {:?} spacing {first_spacing:?} vs shape {:?} spacing {spacing:?}",
                        shape0,
                        data.shape()
                    ),
                });
            }
        } else {
            first = Some((path.clone(), spacing, image.geometry.clone()));
        }
        channels.push(data);
    }
    let (_, spacing, geometry) = first.ok_or_else(|| Error::Io {
        path: PathBuf::new(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no image files given"),
    })?;
    let views: Vec<_> = channels.iter().map(|c| c.view()).collect();
    let data = ndarray::stack(Axis(0), &views).map_err(|e| Error::Io {
        path: paths[0].clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(Volume {
        data,
        spacing,
        geometry,
    })
}
