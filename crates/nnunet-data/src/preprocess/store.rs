//! Class locations for foreground oversampling, and the on-disk format of preprocessed
//! cases.
//!
//! Format, in `<preprocessed dataset>/<data_identifier>/` (memory-mappable, readable by
//! NumPy): `{id}.npy` (data, float32, (C, Z, Y, X), C order), `{id}_seg.npy` (int16,
//! (1, Z, Y, X)) and `{id}.json` (the properties, with `class_locations`: per label a list of
//! `[0, z, y, x]`). Every file is written to a temporary name and renamed; the JSON comes last,
//! so a case is done exactly when its JSON exists and an interrupted run resumes cleanly.

use std::io::Write;
use std::path::Path;

use ndarray::Array4;
use serde_json::{json, Map, Value};

use super::Preprocessed;
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::random::RandomState;

/// nnU-Net's `_sample_foreground_locations`: for each class, up to 10 000 voxel coordinates
/// `[0, z, y, x]` (at least 1 % of the class), drawn without replacement by one legacy
/// `RandomState(1234)` shared by the classes in order. Absent classes get no locations.
pub fn class_locations(seg: &Array4<i16>, classes: &[i16]) -> Vec<(i16, Vec<[usize; 4]>)> {
    let mut rng = RandomState::new(1234);
    classes
        .iter()
        .map(|&class| {
            let all: Vec<[usize; 4]> = seg
                .indexed_iter()
                .filter(|(_, &v)| v == class)
                .map(|((c, z, y, x), _)| [c, z, y, x])
                .collect();
            let total = all.len();
            if total == 0 {
                return (class, Vec::new());
            }
            let k = total.min(10_000).max((total as f64 * 0.01).ceil() as usize);
            // choice(total, k, replace=False): the first k of a permutation of 0..total.
            let mut order: Vec<usize> = (0..total).collect();
            rng.shuffle(&mut order);
            (class, order[..k].iter().map(|&i| all[i]).collect())
        })
        .collect()
}

/// Whether a case was already written completely.
pub fn is_done(folder: &Path, id: &str) -> bool {
    folder.join(format!("{id}.json")).is_file()
}

fn write_npy<A: ndarray_npy::WritableElement>(path: &Path, array: &Array4<A>) -> Result<()> {
    write_atomic(path, |out: &mut dyn Write| {
        ndarray_npy::WriteNpyExt::write_npy(array, out).map_err(std::io::Error::other)
    })
}

/// Writes a preprocessed case (data, seg, then properties with class locations).
///
/// # Errors
///
/// When a file cannot be written; the error names it.
pub fn write_case(folder: &Path, id: &str, case: &Preprocessed, locations: &[(i16, Vec<[usize; 4]>)]) -> Result<()> {
    std::fs::create_dir_all(folder).map_err(|source| Error::Io {
        path: folder.to_path_buf(),
        source,
    })?;
    write_npy(&folder.join(format!("{id}.npy")), &case.data)?;
    write_npy(&folder.join(format!("{id}_seg.npy")), &case.seg)?;
    let mut properties = match serde_json::to_value(&case.properties) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let locations: Map<String, Value> = locations.iter().map(|(c, l)| (c.to_string(), json!(l))).collect();
    let _ = properties.insert("class_locations".into(), Value::Object(locations));
    let path = folder.join(format!("{id}.json"));
    write_atomic(&path, |out: &mut dyn Write| {
        serde_json::to_writer(&mut *out, &Value::Object(properties)).map_err(std::io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_cover_every_class_voxel_when_few() {
        let mut seg = Array4::<i16>::zeros((1, 2, 3, 4));
        seg[[0, 1, 2, 3]] = 1;
        seg[[0, 0, 0, 1]] = 1;
        let locations = class_locations(&seg, &[1, 2]);
        let mut ones = locations[0].1.clone();
        ones.sort();
        assert_eq!(ones, [[0, 0, 0, 1], [0, 1, 2, 3]]);
        assert!(locations[1].1.is_empty());
    }

    #[test]
    fn many_voxels_are_capped_at_ten_thousand_or_one_percent() {
        let seg = Array4::<i16>::ones((1, 10, 100, 120)); // 120 000 voxels
        let locations = class_locations(&seg, &[1]);
        assert_eq!(locations[0].1.len(), 10_000);
        let seg = Array4::<i16>::ones((1, 10, 400, 300)); // 1.2 M voxels: 1 % is 12 000
        assert_eq!(class_locations(&seg, &[1])[0].1.len(), 12_000);
    }
}
