//! PTX of this crate's CUDA kernels (`kernels/*.cu`), compiled by this crate's build
//! script (only with the `cuda` feature, so CPU builds never need nvcc).

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
