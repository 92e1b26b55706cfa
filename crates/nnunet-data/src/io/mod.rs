//! Image I/O. Volumes come out in nnU-Net's array order ((Z,) Y, X, C-contiguous) with the
//! spacing in the same order, i.e. SimpleITK's order reversed; NIfTI's (x, y, z) order exists
//! only inside the readers.

pub mod atomic;
pub mod geometry;
pub mod nifti;

pub use self::atomic::write_atomic;
pub use self::geometry::ItkGeometry;
pub use self::nifti::{read_image, read_label_map, Image, LabelMap};
