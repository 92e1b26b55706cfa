//! NIfTI reading against nibabel 5.4.2 and SimpleITK 2.5.7 (`nifti/expected.json` in the
//! reference folder): shapes, spacing, scaled voxel values and statistics of every file;
//! files SimpleITK cannot read, and 4-D images, must be refused with an error naming them.

use meddino_testutil::reference_or_skip;
use nnunet_data::io::read_image;
use serde_json::Value;

/// Voxel statistics are sums of f32 values; nibabel sums in f64.
const TOLERANCE: f64 = 1e-5;

fn numbers(value: &Value, what: &str) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what}: expected a list"))
        .iter()
        .map(|v| {
            v.as_f64()
                .unwrap_or_else(|| panic!("{what}: expected numbers, got {v}"))
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * b.abs().max(1.0)
}

#[test]
fn every_reference_file_reads_as_nibabel_and_simpleitk_do() {
    let reference = reference_or_skip!();
    let expected = reference.json("nifti/expected.json");
    let files = expected["files"]
        .as_object()
        .expect("expected.json: \"files\" is an object");
    let (mut read, mut refused) = (0, 0);
    for (name, entry) in files {
        let path = reference.file(format!("nifti/files/{name}"));
        let sitk = &entry["sitk"];
        let sitk_size = sitk.get("size").map(|s| numbers(s, "sitk.size"));
        let readable = matches!(&sitk_size, Some(size) if (2..=3).contains(&size.len()));
        let result = read_image(&path);
        if !readable {
            let error = result
                .expect_err(&format!("{name}: SimpleITK size {sitk_size:?}, expected an error"))
                .to_string();
            assert!(
                error.contains(name.as_str()),
                "{name}: error does not name the file: {error}"
            );
            refused += 1;
            continue;
        }
        let image = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        read += 1;

        // Array order is SimpleITK's reversed.
        let size: Vec<usize> = sitk_size
            .unwrap_or_default()
            .iter()
            .rev()
            .map(|&s| s as usize)
            .collect();
        assert_eq!(image.data.shape(), size.as_slice(), "{name}: shape");
        let spacing: Vec<f64> = numbers(&sitk["spacing"], "sitk.spacing").into_iter().rev().collect();
        for (ours, theirs) in image.spacing.iter().zip(&spacing) {
            assert!(
                close(*ours, *theirs),
                "{name}: spacing {:?}, SimpleITK {spacing:?}",
                image.spacing
            );
        }

        // ITK geometry: spacing, origin, direction exactly as SimpleITK reports them.
        let geometry = &image.geometry;
        for (what, ours, key) in [
            ("spacing", &geometry.spacing, "spacing"),
            ("origin", &geometry.origin, "origin"),
            ("direction", &geometry.direction, "direction"),
        ] {
            let theirs = numbers(&sitk[key], key);
            assert_eq!(
                ours.len(),
                theirs.len(),
                "{name}: {what} {ours:?} vs SimpleITK {theirs:?}"
            );
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{name}: {what} {ours:?} vs SimpleITK {theirs:?}"
                );
            }
        }

        // nibabel's affine (RAS) is ITK's geometry with the first two world axes flipped back.
        let n = geometry.spacing.len();
        let affine = &entry["affine"];
        for i in 0..n {
            let flip = if i < 2 { -1.0 } else { 1.0 };
            for j in 0..n {
                let ours = flip * geometry.direction[i * n + j] * geometry.spacing[j];
                let theirs = affine[i][j].as_f64().expect("affine entry");
                assert!(
                    (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0),
                    "{name}: affine[{i}][{j}] {ours} vs {theirs}"
                );
            }
            let (ours, theirs) = (flip * geometry.origin[i], affine[i][3].as_f64().expect("affine offset"));
            assert!(
                (ours - theirs).abs() <= 1e-4 * theirs.abs().max(1.0),
                "{name}: affine[{i}][3] {ours} vs {theirs}"
            );
        }

        let values: Vec<f64> = image.data.iter().map(|&v| f64::from(v)).collect();
        let sum: f64 = values.iter().sum();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        for (what, ours, key) in [
            ("sum", sum, "sum"),
            ("mean", sum / values.len() as f64, "mean"),
            ("min", min, "min"),
            ("max", max, "max"),
        ] {
            let theirs = entry[key].as_f64().unwrap_or_else(|| panic!("{name}: {key}"));
            assert!(close(ours, theirs), "{name}: {what} {ours}, nibabel {theirs}");
        }
        for voxel in entry["voxels"].as_array().expect("voxels") {
            // nibabel indexes (x, y[, z]); our array is ([z,] y, x).
            let index: Vec<usize> = numbers(&voxel["index"], "index")
                .iter()
                .rev()
                .map(|&i| i as usize)
                .collect();
            let index = &index[index.len() - image.data.ndim()..];
            let theirs = voxel["value"].as_f64().expect("value");
            let ours = f64::from(image.data[index]);
            assert!(
                close(ours, theirs),
                "{name}: voxel {index:?} = {ours}, nibabel {theirs}"
            );
        }
    }
    eprintln!("{read} files read as the references do, {refused} refused with the file named");
    assert!(read > 0, "no readable file in nifti/expected.json");
}

#[test]
fn label_maps_written_with_a_files_geometry_read_back_identically() {
    let reference = reference_or_skip!();
    let expected = reference.json("nifti/expected.json");
    let dir = std::env::temp_dir().join(format!("nnunet-data-write-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    let mut written = 0;
    for name in expected["files"].as_object().expect("files").keys() {
        let Ok(image) = read_image(&reference.file(format!("nifti/files/{name}"))) else {
            continue;
        };
        // A label map of the image's shape with a few labels, one above 255 for some files.
        let big = written % 2 == 1;
        let labels = image.data.mapv(|v| {
            if v > 0.0 {
                if big {
                    300
                } else {
                    2
                }
            } else {
                0
            }
        });
        for ending in [".nii.gz", ".nii"] {
            let path = dir.join(format!("out_{written}{ending}"));
            nnunet_data::io::write_label_map(&path, labels.view(), &image.geometry)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let back = read_image(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(back.data.mapv(|v| v as i32), labels, "{name}{ending}: voxels");
            for (what, a, b) in [
                ("spacing", &back.geometry.spacing, &image.geometry.spacing),
                ("origin", &back.geometry.origin, &image.geometry.origin),
                ("direction", &back.geometry.direction, &image.geometry.direction),
            ] {
                assert!(
                    a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4 * y.abs().max(1.0)),
                    "{name}{ending}: {what} {a:?} vs {b:?}"
                );
            }
        }
        written += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(written > 0);
}
