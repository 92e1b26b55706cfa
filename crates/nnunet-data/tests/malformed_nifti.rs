//! The NIfTI reader on malformed files: every one is an `Err` naming the file, never a
//! panic. Each case starts from a valid image and breaks one thing.

use std::path::{Path, PathBuf};

use nnunet_data::io::{read_image, read_label_map, write_ct_image, ItkGeometry};
use nnunet_data::ndarray::Array3;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nnunet-data-malformed-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

/// A valid 4×5×6 int16 image written to `dir/name`.
fn valid(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let image = Array3::from_shape_fn((4, 5, 6), |(z, y, x)| (z * 100 + y * 10 + x) as i16);
    let geometry = ItkGeometry {
        spacing: vec![0.8, 0.8, 2.5],
        origin: vec![0.0; 3],
        direction: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
    };
    write_ct_image(&path, image.view().into_dyn(), &geometry).expect("write");
    path
}

/// Overwrites `bytes` at `offset` of the file.
fn patch(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).expect("read");
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).expect("write");
}

/// Reading `path` fails with a message naming it (and `expected`), for images and labels.
fn refused(path: &Path, expected: &str) {
    let name = path.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    for (what, result) in [
        ("image", std::panic::catch_unwind(|| read_image(path).map(|_| ()))),
        (
            "label map",
            std::panic::catch_unwind(|| read_label_map(path).map(|_| ())),
        ),
    ] {
        let result = result.unwrap_or_else(|_| panic!("reading {name} as {what} panicked"));
        let error = result
            .expect_err(&format!("{name} must be refused as {what}"))
            .to_string();
        assert!(error.contains(&name), "{what}: the error names the file: {error}");
        assert!(
            error.to_lowercase().contains(expected),
            "{what}: {error:?} should say {expected:?}"
        );
    }
}

// NIfTI-1 header offsets.
const DIM: usize = 40;
const DATATYPE: usize = 70;
const PIXDIM: usize = 76;
const VOX_OFFSET: usize = 108;
/// `qform_code` (i16), then `sform_code` (i16).
const QFORM_CODE: usize = 252;

#[test]
fn the_valid_image_reads() {
    let dir = scratch("valid");
    assert_eq!(
        read_image(&valid(&dir, "ok.nii")).expect("valid").data.shape(),
        [4, 5, 6]
    );
}

#[test]
fn truncated_and_corrupt_compressed_files() {
    let dir = scratch("gzip");
    let path = valid(&dir, "truncated.nii.gz");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    refused(&path, "");
    let path = dir.join("garbage.nii.gz");
    std::fs::write(&path, b"this is not gzip at all, just text").expect("write");
    refused(&path, "");
    let path = dir.join("empty.nii");
    std::fs::write(&path, b"").expect("write");
    refused(&path, "");
}

#[test]
fn headers_that_lie() {
    let dir = scratch("header");
    // dim says 40 slices, the data holds 6.
    let path = valid(&dir, "dim.nii");
    patch(&path, DIM + 2 * 3, &40i16.to_le_bytes());
    refused(&path, "");
    // The data would start beyond the end of the file.
    let path = valid(&dir, "offset.nii");
    patch(&path, VOX_OFFSET, &1.0e6f32.to_le_bytes());
    refused(&path, "vox_offset");
    // dim[0] (the rank) out of range.
    let path = valid(&dir, "rank.nii");
    patch(&path, DIM, &9i16.to_le_bytes());
    refused(&path, "");
    // A datatype code that does not exist.
    let path = valid(&dir, "datatype.nii");
    patch(&path, DATATYPE, &9999i16.to_le_bytes());
    refused(&path, "");
    // bitpix that is not the datatype's size (int16 data read as uint8 of 16 bits): the
    // nifti crate panicked on it (found by the nifti fuzz target).
    let path = valid(&dir, "bitpix.nii");
    patch(&path, DATATYPE, &2i16.to_le_bytes());
    refused(&path, "bitpix 16 does not match datatype");
}

#[test]
fn a_compressed_header_promising_gigabytes_is_refused_without_allocating_them() {
    // Found by the nifti fuzz target: the nifti crate reserves what dim promises before
    // reading, and a .nii.gz can promise anything (here 30000³ int16 voxels, 54 TB).
    let dir = scratch("promise");
    let plain = valid(&dir, "huge.nii");
    for axis in 1..=3 {
        patch(&plain, DIM + 2 * axis, &30000i16.to_le_bytes());
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &std::fs::read(&plain).expect("read")).expect("compress");
    let path = dir.join("huge.nii.gz");
    std::fs::write(&path, gz.finish().expect("compress")).expect("write");
    refused(&path, "promise");
    refused(&plain, "promise");
}

#[test]
fn spacings_that_are_zero_or_not_numbers() {
    let dir = scratch("spacing");
    // Without qform and sform, the spacing is the pixdims.
    let no_transforms = |path: &Path| patch(path, QFORM_CODE, &[0, 0, 0, 0]);
    let path = valid(&dir, "zero.nii");
    no_transforms(&path);
    patch(&path, PIXDIM + 4, &0f32.to_le_bytes());
    refused(&path, "spacing");
    let path = valid(&dir, "nan.nii");
    no_transforms(&path);
    patch(&path, PIXDIM + 8, &f32::NAN.to_le_bytes());
    refused(&path, "spacing");
}

#[test]
fn integer_label_maps_read_directly_and_refuse_values_outside_u16() {
    let dir = scratch("labels");
    // The valid image's voxels are 0..=356: a label map, read without the float detour, that
    // equals the image as floats.
    let path = valid(&dir, "labels.nii.gz");
    let (image, labels) = (
        read_image(&path).expect("image"),
        read_label_map(&path).expect("labels"),
    );
    assert_eq!(labels.data.mapv(f32::from), image.data);
    assert_eq!(labels.spacing, image.spacing);
    // A negative int16 voxel (the last one, x = 5, y = 4, z = 3 in the file's order).
    let path = valid(&dir, "negative.nii");
    let data_end = std::fs::metadata(&path).expect("size").len() as usize;
    patch(&path, data_end - 2, &(-3i16).to_le_bytes());
    let error = read_label_map(&path).expect_err("negative label").to_string();
    assert!(error.contains("negative.nii") && error.contains("-3"), "{error}");
    // scl_slope 2: scaled values, through floats.
    let path = valid(&dir, "scaled.nii");
    patch(&path, 112, &2f32.to_le_bytes());
    let (image, labels) = (
        read_image(&path).expect("image"),
        read_label_map(&path).expect("labels"),
    );
    assert_eq!(labels.data.mapv(f32::from), image.data);
    assert_eq!(labels.data[[3, 4, 5]], 2 * 345);
}
