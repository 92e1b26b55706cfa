//! Times one forward pass of a DINOv3 backbone with random weights.
//!
//! ```text
//! cargo run --release -p meddino-backbone --example forward_bench -- --arch vit_base --size 448 --repeats 3 [--batch 1] [--device cpu|cuda] [--dtype f32|bf16]
//! ```
//!
//! Prints each pass, the forward's FLOP count (`gflop=`), and, last, `median_s=<seconds>`
//! and `gflops=<rate of the median pass>` (`forward_features`, weights and input in
//! `--dtype`). The GPU benchmark of issue 10 divides that rate by `matmul_bench`'s peak.
//!
//! The FLOP count is analytic, from the configuration, counting a multiply-add as 2 FLOPs
//! and only the matrix products (norms, GELU, softmax, RoPE and residuals are left out).
//! With batch B, P = (size / patch)² patches, N = 1 + storage tokens + P tokens, width D,
//! FFN hidden width F, depth L and C input channels:
//!
//! ```text
//! patch embedding   2·P·(C·patch²)·D
//! per block         qkv 2·N·D·3D + proj 2·N·D·D
//!                   + FFN 2·N·D·F·2 (MLP: fc1, fc2; SwiGLU: 3 instead of 2)
//!                   + attention 2·N·N·D (q·kᵀ, all heads) + 2·N·N·D (·v)
//! forward           B · (patch embedding + L · per block)
//! ```
//!
//! ViT-B/16 at 896² (N = 3137): about 0.90 TFLOP per image, of which 30 GFLOP per block
//! is attention.

use std::collections::HashMap;
use std::time::Instant;

use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use meddino_backbone::candle::{DType, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer, FfnLayer};
use meddino_testutil::bench;

type Error = Box<dyn std::error::Error + Send + Sync>;

// As the `meddino` binary: an allocator that keeps freed pages, so activation buffers are
// not page-faulted in afresh on every pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FLOPs of one `forward_features` pass of `cfg` on a batch of `batch` images of
/// `size`², as the module documentation counts them.
fn forward_flops(cfg: &Config, size: usize, batch: usize) -> f64 {
    let patches = (size / cfg.patch_size).pow(2) as f64;
    let tokens = (1 + cfg.n_storage_tokens) as f64 + patches;
    let d = cfg.embed_dim as f64;
    let hidden = cfg.ffn_layer.hidden_dim(cfg.embed_dim, cfg.ffn_ratio) as f64;
    let ffn_matrices = if cfg.ffn_layer == FfnLayer::Mlp { 2.0 } else { 3.0 };
    let patch_embed = 2.0 * patches * (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f64 * d;
    let qkv = 2.0 * tokens * d * 3.0 * d;
    let proj = 2.0 * tokens * d * d;
    let ffn = 2.0 * tokens * d * hidden * ffn_matrices;
    let attention = 2.0 * 2.0 * tokens * tokens * d;
    batch as f64 * (patch_embed + cfg.depth as f64 * (qkv + proj + ffn + attention))
}

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    /// A preset name (`vit_base`, `meddinov3_vitb16`, …).
    #[arg(long, default_value = "vit_base")]
    arch: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 448)]
    size: usize,
    /// Timed passes (after one warm-up pass).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Weights and input: `f32` or `bf16`.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
}

fn main() -> Result<(), Error> {
    let Args {
        arch,
        size,
        repeats,
        batch,
        device,
        dtype,
    } = Args::parse();
    let device = bench::device(&device)?;
    let dtype = if dtype == "bf16" { DType::BF16 } else { DType::F32 };
    let cfg = Config::preset(&arch)?;
    // Random weights drawn as variables, then loaded as plain tensors, as `meddino predict`
    // loads a checkpoint: no autograd graph is kept alive by the outputs. They are drawn in
    // f32 (candle's CUDA backend draws no bf16 numbers) and converted to `--dtype`.
    let varmap = VarMap::new();
    DinoVisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| "poisoned variable map")?
        .iter()
        .map(|(name, var)| Ok((name.clone(), var.as_tensor().detach().to_dtype(dtype)?)))
        .collect::<Result<_, Error>>()?;
    let model = DinoVisionTransformer::new(&cfg, VarBuilder::from_tensors(weights, dtype, &device))?;
    let xs = Tensor::randn(0f32, 1.0, (batch, cfg.in_chans, size, size), &device)?.to_dtype(dtype)?;
    let flops = forward_flops(&cfg, size, batch);
    println!("gflop={:.1}", flops / 1e9);
    eprintln!(
        "after init: rss {:?} MiB, peak {:?} MiB",
        bench::memory_mib("VmRSS"),
        bench::memory_mib("VmHWM")
    );

    // One untimed pass warms allocators and (on CUDA) loads the kernels.
    let _ = model
        .forward_features(&xs)?
        .x_prenorm
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    eprintln!(
        "after warm-up: rss {:?} MiB, peak {:?} MiB",
        bench::memory_mib("VmRSS"),
        bench::memory_mib("VmHWM")
    );
    let mut times = Vec::with_capacity(repeats as usize);
    for i in 0..repeats {
        let start = Instant::now();
        let features = model.forward_features(&xs)?;
        // Reading a value back synchronises the device before the clock stops.
        let _ = features.x_prenorm.sum_all()?.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{arch} {size}x{size} batch {batch} {dtype:?} on {device:?}: pass {} {seconds:.3} s",
            i + 1
        );
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("median_s={median:.4}");
    println!("gflops={:.1}", flops / median / 1e9);
    Ok(())
}
