//! Image I/O. Volumes come out in nnU-Net's array order ((Z,) Y, X, C-contiguous) with the
//! spacing in the same order, i.e. SimpleITK's order reversed; NIfTI's (x, y, z) order exists
//! only inside the readers.

pub mod atomic;
pub mod case;
#[cfg(feature = "dicom")]
pub mod dicom;
pub mod geometry;
pub mod nifti;
pub mod write;

pub use self::atomic::{remove_stale_temporaries, write_atomic};
pub use self::case::{input_cases, CaseSource};
pub use self::geometry::ItkGeometry;
pub use self::nifti::{read_image, read_label_map, Image, LabelMap};
pub use self::write::{write_ct_image, write_image, write_label_map};

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
    stack_channels(paths, read_image)
}

/// Reads each of `paths` with `read` and stacks the images as channels, as [`read_images`].
fn stack_channels(paths: &[PathBuf], read: impl Fn(&std::path::Path) -> Result<Image>) -> Result<Volume> {
    let mut channels = Vec::with_capacity(paths.len());
    let mut first: Option<(PathBuf, [f64; 3], ItkGeometry)> = None;
    for path in paths {
        let image = read(path)?;
        let shape = image.data.shape().to_vec();
        let (data, spacing) = match image.spacing[..] {
            [sy, sx] => (image.data.insert_axis(Axis(0)), [999.0 * sx.max(sy), sy, sx]),
            [sz, sy, sx] => (image.data, [sz, sy, sx]),
            _ => {
                return Err(Error::UnsupportedDimensionality {
                    path: path.clone(),
                    shape,
                })
            }
        };
        let data = data
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|_| Error::UnsupportedDimensionality {
                path: path.clone(),
                shape,
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

/// Reads the images of one case as nnU-Net's reader classes do (the `ImageReader` seam):
/// channels stacked to (C, Z, Y, X), spacing in (Z, Y, X), the geometry kept for writing.
/// Object-safe; [`NiftiIo`] is the NIfTI implementation, and a minimal one only has to
/// produce a [`Volume`]:
///
/// ```
/// use std::path::PathBuf;
/// use nnunet_data::io::{ImageReader, ItkGeometry, Volume};
///
/// #[derive(Debug)]
/// struct Blank;
///
/// impl ImageReader for Blank {
///     fn read_images(&self, files: &[PathBuf]) -> nnunet_data::Result<Volume> {
///         let geometry = ItkGeometry { spacing: vec![1.0; 3], origin: vec![0.0; 3], direction: vec![1., 0., 0., 0., 1., 0., 0., 0., 1.] };
///         Ok(Volume { data: ndarray::Array4::zeros((files.len(), 1, 8, 8)), spacing: [1.0; 3], geometry })
///     }
/// }
/// ```
pub trait ImageReader: std::fmt::Debug + Send + Sync {
    /// The channel files of one case (or one label file) as a volume.
    ///
    /// # Errors
    ///
    /// When a file cannot be read, or channels disagree in shape or spacing.
    fn read_images(&self, files: &[PathBuf]) -> Result<Volume>;
}

/// Writes a segmentation back with the geometry of the image it was made from (the
/// `ImageWriter` seam).
pub trait ImageWriter: std::fmt::Debug + Send + Sync {
    /// Writes `seg` ((Z, Y, X); Z = 1 for a 2-D image) to `path` with `geometry`.
    ///
    /// # Errors
    ///
    /// When the labels do not fit the geometry or the file cannot be written.
    fn write_seg(
        &self,
        seg: ndarray::ArrayView3<'_, i32>,
        path: &std::path::Path,
        geometry: &ItkGeometry,
    ) -> Result<()>;
}

/// NIfTI-1 (`.nii`, `.nii.gz`) reading and writing, as nnU-Net's `SimpleITKIO`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NiftiIo;

impl ImageReader for NiftiIo {
    fn read_images(&self, files: &[PathBuf]) -> Result<Volume> {
        read_images(files)
    }
}

impl ImageWriter for NiftiIo {
    fn write_seg(
        &self,
        seg: ndarray::ArrayView3<'_, i32>,
        path: &std::path::Path,
        geometry: &ItkGeometry,
    ) -> Result<()> {
        // A 2-D image was read as (1, H, W): write its only slice.
        if geometry.spacing.len() == 2 && seg.dim().0 == 1 {
            write_label_map(path, seg.index_axis(Axis(0), 0).into_dyn(), geometry)
        } else {
            write_label_map(path, seg.into_dyn(), geometry)
        }
    }
}
