//! Measures the matrix-product rate candle reaches on this machine (GFLOP/s), for the shapes
//! of a ViT-B forward pass and a large square one.
//!
//! ```text
//! cargo run --release -p meddino-backbone --example matmul_bench -- [--device cpu|cuda] [--dtype f32|bf16] [--repeats 10]
//! ```
//!
//! Prints one line per shape and, last, `peak_gflops=<best rate>`; the GPU benchmark of
//! issue 10 divides the ViT's rate by this peak.

use std::time::Instant;

use clap::Parser;
use meddino_backbone::candle::{DType, Tensor};
use meddino_testutil::bench;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    /// Timed products per shape.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `f32` or `bf16`.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let repeats = args.repeats as usize;
    let device = bench::device(&args.device)?;
    let dtype = if args.dtype == "bf16" { DType::BF16 } else { DType::F32 };
    let large = if device.is_cuda() { 8192 } else { 2048 };
    // (batch, m, k, n): square, and the ViT-B/16 448² shapes (789 tokens): qkv, mlp fc1,
    // mlp fc2, per-head attention scores.
    let shapes = [
        (1, large, large, large),
        (1, 789, 768, 2304),
        (1, 789, 768, 3072),
        (1, 789, 3072, 768),
        (12, 789, 64, 789),
    ];
    let mut peak: f64 = 0.0;
    for (batch, m, k, n) in shapes {
        let a = Tensor::randn(0f32, 1.0, (batch, m, k), &device)?.to_dtype(dtype)?;
        let b = Tensor::randn(0f32, 1.0, (batch, k, n), &device)?.to_dtype(dtype)?;
        let _ = a.matmul(&b)?.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let start = Instant::now();
        let mut keep = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            keep.push(a.matmul(&b)?);
        }
        let _ = keep
            .last()
            .map(|c| c.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>())
            .transpose()?;
        let seconds = start.elapsed().as_secs_f64() / repeats as f64;
        let gflops = 2.0 * (batch * m * k * n) as f64 / seconds / 1e9;
        peak = peak.max(gflops);
        println!(
            "{batch}x[{m}x{k}]@[{k}x{n}] {dtype:?} on {device:?}: {:.3} ms, {gflops:.1} GFLOP/s",
            seconds * 1e3
        );
    }
    println!("peak_gflops={peak:.1}");
    Ok(())
}
