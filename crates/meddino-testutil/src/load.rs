//! Reading reference files: safetensors, npz and JSON, every tensor widened to `f64`.
//!
//! Widening keeps comparisons simple (one element type) and loses nothing: every dtype the
//! reference uses (f32, f64, bf16, f16, integers up to 32 bits, bool) is exact in `f64`;
//! 64-bit integers are exact up to 2^53, far beyond any index or count in the data.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, OwnedRepr};
use ndarray_npy::NpzReader;
use safetensors::{Dtype, SafeTensors};

/// One array of a [`TensorFile`]: its stored dtype and its values as `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    /// The dtype as stored in the file (`"F32"`, `"BF16"`, `"int16"`, …).
    pub dtype: String,
    /// The values, in the stored shape (C order).
    pub values: ArrayD<f64>,
}

/// Every tensor of one file, by name.
#[derive(Debug, Clone)]
pub struct TensorFile {
    path: PathBuf,
    tensors: BTreeMap<String, StoredTensor>,
}

impl TensorFile {
    /// Reads a safetensors file.
    ///
    /// # Panics
    ///
    /// When the file cannot be read or parsed, or holds a dtype the reference never uses.
    pub fn read_safetensors(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let file = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{} is not a valid safetensors file: {e}", path.display()));
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let values = decode_safetensors(view.dtype(), view.data()).unwrap_or_else(|| {
                    panic!(
                        "{}: tensor {name:?} has unsupported dtype {:?}",
                        path.display(),
                        view.dtype()
                    )
                });
                let values = ArrayD::from_shape_vec(IxDyn(view.shape()), values).unwrap_or_else(|e| {
                    panic!(
                        "{}: tensor {name:?} data does not fit its shape {:?}: {e}",
                        path.display(),
                        view.shape()
                    )
                });
                (
                    name,
                    StoredTensor {
                        dtype: format!("{:?}", view.dtype()),
                        values,
                    },
                )
            })
            .collect();
        Self {
            path: path.to_path_buf(),
            tensors,
        }
    }

    /// Reads a `.npz` file (compressed or not).
    ///
    /// # Panics
    ///
    /// When the file cannot be read, or holds an array of a dtype the reference never uses.
    pub fn read_npz(path: &Path) -> Self {
        let open = || {
            let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            NpzReader::new(file).unwrap_or_else(|e| panic!("{} is not a valid npz file: {e}", path.display()))
        };
        let mut npz = open();
        let names = npz
            .names()
            .unwrap_or_else(|e| panic!("cannot list arrays of {}: {e}", path.display()));
        let tensors = names
            .into_iter()
            .map(|entry| {
                let stored = read_npz_array(&mut npz, &entry).unwrap_or_else(|| {
                    panic!(
                        "{}: array {entry:?} has a dtype the reference never uses",
                        path.display()
                    )
                });
                // np.savez stores `name` as `name.npy`.
                let name = entry.strip_suffix(".npy").unwrap_or(&entry).to_string();
                (name, stored)
            })
            .collect();
        Self {
            path: path.to_path_buf(),
            tensors,
        }
    }

    /// The file these tensors came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The values of `name`.
    ///
    /// # Panics
    ///
    /// When the file has no such tensor (the message lists the names it has).
    pub fn get(&self, name: &str) -> &ArrayD<f64> {
        &self.stored(name).values
    }

    /// The values of `name` with its stored dtype.
    ///
    /// # Panics
    ///
    /// When the file has no such tensor.
    pub fn stored(&self, name: &str) -> &StoredTensor {
        self.tensors.get(name).unwrap_or_else(|| {
            let known: Vec<&str> = self.names().collect();
            panic!("{}: no tensor {name:?}; the file holds {known:?}", self.path.display())
        })
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Decodes little-endian safetensors data; `None` for dtypes the reference never uses.
fn decode_safetensors(dtype: Dtype, data: &[u8]) -> Option<Vec<f64>> {
    fn each<const N: usize>(data: &[u8], convert: impl Fn([u8; N]) -> f64) -> Vec<f64> {
        data.chunks_exact(N)
            .map(|chunk| {
                let mut bytes = [0u8; N];
                bytes.copy_from_slice(chunk);
                convert(bytes)
            })
            .collect()
    }
    Some(match dtype {
        Dtype::F64 => each(data, f64::from_le_bytes),
        Dtype::F32 => each(data, |b| f32::from_le_bytes(b).into()),
        Dtype::BF16 => each(data, |b| half::bf16::from_le_bytes(b).to_f64()),
        Dtype::F16 => each(data, |b| half::f16::from_le_bytes(b).to_f64()),
        Dtype::I64 => each(data, |b| i64::from_le_bytes(b) as f64),
        Dtype::I32 => each(data, |b| i32::from_le_bytes(b).into()),
        Dtype::I16 => each(data, |b| i16::from_le_bytes(b).into()),
        Dtype::I8 => each(data, |b: [u8; 1]| i8::from_le_bytes(b).into()),
        Dtype::U64 => each(data, |b| u64::from_le_bytes(b) as f64),
        Dtype::U32 => each(data, |b| u32::from_le_bytes(b).into()),
        Dtype::U16 => each(data, |b| u16::from_le_bytes(b).into()),
        Dtype::U8 => each(data, |b: [u8; 1]| b[0].into()),
        Dtype::BOOL => each(data, |b: [u8; 1]| f64::from(u8::from(b[0] != 0))),
        _ => return None,
    })
}

/// Reads one npz array whatever its element type; `None` when no supported type fits.
fn read_npz_array(npz: &mut NpzReader<File>, name: &str) -> Option<StoredTensor> {
    macro_rules! try_types {
        ($($t:ty => $label:literal),* $(,)?) => {$(
            if let Ok(array) = npz.by_name::<OwnedRepr<$t>, IxDyn>(name) {
                #[allow(clippy::unnecessary_cast)]
                let values = array.mapv(|v| v as f64);
                return Some(StoredTensor { dtype: $label.to_string(), values });
            }
        )*};
    }
    try_types!(
        f32 => "float32", f64 => "float64",
        i8 => "int8", i16 => "int16", i32 => "int32", i64 => "int64",
        u8 => "uint8", u16 => "uint16", u32 => "uint32", u64 => "uint64",
    );
    if let Ok(array) = npz.by_name::<OwnedRepr<bool>, IxDyn>(name) {
        return Some(StoredTensor {
            dtype: "bool".into(),
            values: array.mapv(|v| f64::from(u8::from(v))),
        });
    }
    None
}

/// A number of a reference JSON file where NaN is written `null` and infinities `"inf"` /
/// `"-inf"` (the convention of `metrics/expected.json`); `None` for anything else.
pub fn json_f64(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Null => Some(f64::NAN),
        serde_json::Value::String(s) if s == "inf" => Some(f64::INFINITY),
        serde_json::Value::String(s) if s == "-inf" => Some(f64::NEG_INFINITY),
        other => other.as_f64(),
    }
}

/// Parses a JSON file.
///
/// # Panics
///
/// When the file cannot be read or is not valid JSON; the message names the file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_safetensors_dtype() {
        assert_eq!(decode_safetensors(Dtype::F32, &1.5f32.to_le_bytes()), Some(vec![1.5]));
        assert_eq!(
            decode_safetensors(Dtype::BF16, &half::bf16::from_f32(-2.0).to_le_bytes()),
            Some(vec![-2.0])
        );
        assert_eq!(decode_safetensors(Dtype::I16, &(-7i16).to_le_bytes()), Some(vec![-7.0]));
        assert_eq!(decode_safetensors(Dtype::U8, &[3, 250]), Some(vec![3.0, 250.0]));
        assert_eq!(decode_safetensors(Dtype::BOOL, &[0, 1]), Some(vec![0.0, 1.0]));
    }

    #[test]
    fn round_trips_a_safetensors_file() {
        let path = std::env::temp_dir().join(format!("meddino-testutil-{}.safetensors", std::process::id()));
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2, 3], &data).expect("view");
        safetensors::serialize_to_file([("x", view)], None, &path).expect("write");
        let file = TensorFile::read_safetensors(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(file.names().collect::<Vec<_>>(), ["x"]);
        assert_eq!(file.stored("x").dtype, "F32");
        assert_eq!(file.get("x").shape(), [2, 3]);
        assert_eq!(file.get("x")[[1, 2]], 6.0);
    }

    #[test]
    fn round_trips_an_npz_file() {
        let path = std::env::temp_dir().join(format!("meddino-testutil-{}.npz", std::process::id()));
        {
            let mut npz = ndarray_npy::NpzWriter::new_compressed(File::create(&path).expect("create"));
            npz.add_array("seg", &ndarray::arr2(&[[-1i16, 0], [2, 3]]))
                .expect("add");
            npz.add_array("data", &ndarray::arr1(&[0.5f32])).expect("add");
            let _ = npz.finish().expect("finish");
        }
        let file = TensorFile::read_npz(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(file.names().collect::<Vec<_>>(), ["data", "seg"]);
        assert_eq!(file.stored("seg").dtype, "int16");
        assert_eq!(file.get("seg")[[1, 0]], 2.0);
        assert_eq!(file.get("data")[[0]], 0.5);
    }

    #[test]
    #[should_panic(expected = "no tensor \"y\"")]
    fn missing_tensor_names_what_the_file_holds() {
        let file = TensorFile {
            path: PathBuf::from("f.safetensors"),
            tensors: BTreeMap::new(),
        };
        let _ = file.get("y");
    }
}
