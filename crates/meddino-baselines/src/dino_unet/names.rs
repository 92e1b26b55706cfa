//! A variable-builder backend that records the name of every tensor a network asks for, so
//! the network knows its own state-dict names (for `state_dict_aliases`).

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

/// Delegates to `inner`, writing down each requested name (relative to `inner`'s prefix).
struct Recording<'a> {
    inner: VarBuilder<'a>,
    names: Arc<Mutex<Vec<String>>>,
}

impl Recording<'_> {
    fn record(&self, name: &str) {
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
}

impl SimpleBackend for Recording<'_> {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        self.record(name);
        self.inner.get_with_hints_dtype(shape, name, init, dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        self.record(name);
        self.inner.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

/// A builder over `vb` (same tensors, same dtype and device, names relative to `vb`'s
/// prefix) and the list its requests are written to.
pub(super) fn recording(vb: VarBuilder<'_>) -> (VarBuilder<'_>, Arc<Mutex<Vec<String>>>) {
    let names = Arc::new(Mutex::new(Vec::new()));
    let (dtype, device) = (vb.dtype(), vb.device().clone());
    let backend = Recording {
        inner: vb,
        names: names.clone(),
    };
    (VarBuilder::from_backend(Box::new(backend), dtype, device), names)
}

/// The names recorded so far.
pub(super) fn recorded(names: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    names.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
