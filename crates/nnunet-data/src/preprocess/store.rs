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
    // The class's voxels and their permutation are held as flat indices, 4 bytes each when
    // the volume allows (a large organ has millions of voxels).
    if u32::try_from(seg.len()).is_ok() {
        sample_locations::<u32>(seg, classes)
    } else {
        sample_locations::<usize>(seg, classes)
    }
}

/// A flat voxel index, stored as `u32` when the volume allows.
trait FlatIndex: Copy {
    /// `i`, which the caller knows fits.
    fn new(i: usize) -> Self;
    fn get(self) -> usize;
}

impl FlatIndex for u32 {
    fn new(i: usize) -> Self {
        i as u32
    }

    fn get(self) -> usize {
        self as usize
    }
}

impl FlatIndex for usize {
    fn new(i: usize) -> Self {
        i
    }

    fn get(self) -> usize {
        self
    }
}

/// [`class_locations`] with flat indices of type `I` (every index of `seg` must fit).
fn sample_locations<I: FlatIndex>(seg: &Array4<i16>, classes: &[i16]) -> Vec<(i16, Vec<[usize; 4]>)> {
    let (_, nz, ny, nx) = seg.dim();
    let unravel = |i: usize| [i / (nz * ny * nx), i / (ny * nx) % nz, i / nx % ny, i % nx];
    let mut rng = RandomState::new(1234);
    classes
        .iter()
        .map(|&class| {
            // Flat indices in logical (C) order, the order of `argwhere`.
            let all: Vec<I> = seg
                .iter()
                .enumerate()
                .filter(|(_, &v)| v == class)
                .map(|(i, _)| I::new(i))
                .collect();
            let total = all.len();
            if total == 0 {
                return (class, Vec::new());
            }
            let k = total.min(10_000).max((total as f64 * 0.01).ceil() as usize);
            // choice(total, k, replace=False): the first k of a permutation of 0..total.
            let mut order: Vec<I> = (0..total).map(I::new).collect();
            rng.shuffle(&mut order);
            let chosen = order[..k].iter().map(|&i| unravel(all[i.get()].get())).collect();
            (class, chosen)
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

/// An `.npy` array of a preprocessed case: memory-mapped when its layout allows (C order,
/// native endianness, aligned), so that data sets larger than memory train, else read.
#[derive(Debug)]
enum NpyArray<A> {
    Mapped(memmap2::Mmap),
    Owned(Array4<A>),
}

impl<A: ndarray_npy::ReadableElement + ndarray_npy::ViewElement> NpyArray<A> {
    fn open(path: &Path) -> Result<Self> {
        let fail = |message: String| Error::Preprocessed {
            path: path.to_path_buf(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; preprocessed files are written once (to a temporary
        // name, then renamed) and never modified in place, so the mapped bytes do not change
        // underneath us unless another program rewrites the file, as with any mmap reader.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| fail(format!("cannot map: {e}")))?;
        if <ndarray::ArrayView4<'_, A> as ndarray_npy::ViewNpyExt>::view_npy(&map).is_ok() {
            return Ok(Self::Mapped(map));
        }
        let array = <Array4<A> as ndarray_npy::ReadNpyExt>::read_npy(std::io::Cursor::new(&map[..]))
            .map_err(|e| fail(format!("not a 4-D .npy array of the expected type: {e}")))?;
        Ok(Self::Owned(array))
    }

    /// The array; `path` names it in the (unexpected) error of a map that no longer parses.
    fn view(&self, path: impl FnOnce() -> std::path::PathBuf) -> Result<ndarray::ArrayView4<'_, A>> {
        match self {
            Self::Mapped(map) => <ndarray::ArrayView4<'_, A> as ndarray_npy::ViewNpyExt>::view_npy(map).map_err(|e| {
                Error::Preprocessed {
                    path: path(),
                    message: format!("changed while in use: {e}"),
                }
            }),
            Self::Owned(array) => Ok(array.view()),
        }
    }
}

/// A preprocessed training case as the data loader reads it.
#[derive(Debug)]
pub struct PreprocessedCase {
    /// Case identifier.
    pub id: String,
    folder: std::path::PathBuf,
    data: NpyArray<f32>,
    seg: NpyArray<i16>,
    /// The foreground classes with stored locations, ascending.
    pub classes: Vec<i16>,
    /// Stored foreground locations (`[0, z, y, x]`) of each of [`Self::classes`].
    pub class_locations: Vec<Vec<[usize; 4]>>,
    /// The case's properties (geometry before and after preprocessing).
    pub properties: super::CaseProperties,
}

impl PreprocessedCase {
    /// Opens a case written by [`write_case`]: `{id}.npy`, `{id}_seg.npy` and `{id}.json` in
    /// `folder`.
    ///
    /// # Errors
    ///
    /// When a file is missing or malformed, or data and segmentation disagree in shape; the
    /// error names the file.
    pub fn open(folder: &Path, id: &str) -> Result<Self> {
        let json_path = folder.join(format!("{id}.json"));
        let text = std::fs::read_to_string(&json_path).map_err(|source| Error::Io {
            path: json_path.clone(),
            source,
        })?;
        let json_error = |message: String| Error::Json {
            path: json_path.clone(),
            message,
        };
        let value: Value = serde_json::from_str(&text).map_err(|e| json_error(e.to_string()))?;
        let properties: super::CaseProperties =
            serde_json::from_value(value.clone()).map_err(|e| json_error(format!("properties: {e}")))?;
        let mut class_locations = Vec::new();
        if let Some(map) = value.get("class_locations").and_then(Value::as_object) {
            for (class, list) in map {
                let class: i16 = class
                    .parse()
                    .map_err(|_| json_error(format!("class_locations: {class:?} is not a label")))?;
                let list: Vec<[usize; 4]> = serde_json::from_value(list.clone())
                    .map_err(|e| json_error(format!("class_locations[{class}]: {e}")))?;
                class_locations.push((class, list));
            }
        }
        class_locations.sort_by_key(|(class, _)| *class);
        let data_path = folder.join(format!("{id}.npy"));
        let seg_path = folder.join(format!("{id}_seg.npy"));
        let case = Self {
            id: id.to_string(),
            folder: folder.to_path_buf(),
            data: NpyArray::open(&data_path)?,
            seg: NpyArray::open(&seg_path)?,
            classes: class_locations.iter().map(|(c, _)| *c).collect(),
            class_locations: class_locations.into_iter().map(|(_, l)| l).collect(),
            properties,
        };
        let (data, seg) = (case.data()?.dim(), case.seg()?.dim());
        if (data.1, data.2, data.3) != (seg.1, seg.2, seg.3) || seg.0 != 1 {
            return Err(Error::Preprocessed {
                path: seg_path,
                message: format!("segmentation shape {seg:?} does not fit data shape {data:?} (expected (1, Z, Y, X))"),
            });
        }
        let shape = [data.1, data.2, data.3];
        for (class, list) in case.classes.iter().zip(&case.class_locations) {
            if let Some(bad) = list.iter().find(|l| (0..3).any(|a| l[a + 1] >= shape[a])) {
                return Err(json_error(format!(
                    "class_locations[{class}]: {bad:?} lies outside the case's shape {shape:?}"
                )));
            }
        }
        Ok(case)
    }

    /// Image data (C, Z, Y, X).
    ///
    /// # Errors
    ///
    /// Only when the memory-mapped file was rewritten by another program since it was opened.
    pub fn data(&self) -> Result<ndarray::ArrayView4<'_, f32>> {
        self.data.view(|| self.folder.join(format!("{}.npy", self.id)))
    }

    /// Segmentation (1, Z, Y, X); −1 outside the nonzero region where nnU-Net marks it.
    ///
    /// # Errors
    ///
    /// As [`Self::data`].
    pub fn seg(&self) -> Result<ndarray::ArrayView4<'_, i16>> {
        self.seg.view(|| self.folder.join(format!("{}_seg.npy", self.id)))
    }
}
