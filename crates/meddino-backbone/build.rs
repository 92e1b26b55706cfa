//! Compiles this crate's `kernels/*.cu` to PTX when the `cuda` feature is on (see
//! meddino-nvcc; `.ci/run` compiles them with the same `kernels/nvcc-flags.txt`).

fn main() {
    meddino_nvcc::build_kernels("meddino-backbone");
}
