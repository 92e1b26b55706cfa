//! Our side of issue 10's network benchmarks: `meddinov3_base_primus_multiscale_Trainer`'s
//! network (ViT-B/16 with 4 registers + Primus_Multiscale on blocks 2, 5, 8, 11), random
//! weights, f32, eval mode without autograd (the weights are plain tensors, as when a
//! checkpoint is loaded for prediction). The PyTorch side is `scripts/bench/primus_torch.py`.
//!
//! ```text
//! # forward of one 448² image: prints each pass, median_s= and peak_rss_mib= (VmHWM)
//! cargo run --release -p meddino-train --example network_bench -- --mode forward --size 448 --repeats 3
//! # sliding-window logits of a random 16×256×256 volume, 2-D patch 224, step 0.5, Gaussian
//! # weighting, no mirroring: prints seconds= and peak_rss_mib=
//! cargo run --release -p meddino-train --example network_bench -- --mode predict
//! ```
//!
//! Other flags: `--threads 2` (sets `RAYON_NUM_THREADS`, which candle's matmul and rayon
//! read), `--classes 6`, `--backbone vit_base`, `--rope bf16|fp32` (MedDINOv3 computes RoPE
//! and rounds q/k in bf16; transformers uses fp32), `--batch 1` (forward), `--slices 16
//! --height 256 --width 256 --patch 224 --step 0.5 --tile-batch 4` (predict; 4 tiles per
//! forward pass is `meddino predict`'s default, nnU-Net runs them one at a time: `--tile-batch
//! 1`), `--seed 0`.
//!
//! `predict` times [`sliding_window_logits`], the counterpart of nnU-Net's
//! `predict_sliding_window_return_logits`: no preprocessing, resampling or export.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Instant;

use candle_nn::{VarBuilder, VarMap};
use clap::Parser;
use meddino_backbone::RopeDtype;
use meddino_testutil::bench;
use meddino_train::candle::{DType, Device, Tensor};
use meddino_train::decoder::SegmentationNetwork;
use meddino_train::init::seeded_var_builder;
use meddino_train::predict::{sliding_window_logits, tile_starts, SlidingWindowOptions};
use meddino_train::trainers::NetworkRequest;
use meddino_train::TrainerRegistry;
use ndarray::Array4;

type Error = Box<dyn std::error::Error + Send + Sync>;

// As the `meddino` binary: an allocator that keeps freed pages, so activation buffers are
// not page-faulted in afresh on every pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TRAINER: &str = "meddinov3_base_primus_multiscale_Trainer";

fn print_peak_rss() {
    match bench::memory_mib("VmHWM") {
        Some(mib) => println!("peak_rss_mib={mib:.0}"),
        None => println!("peak_rss_mib=n/a"),
    }
}

/// The trainer's network with seeded random weights, rebuilt from plain (detached) tensors
/// so that no forward pass records an autograd graph.
fn build_network(
    backbone: &str,
    rope: RopeDtype,
    classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn SegmentationNetwork>, Error> {
    let registry = TrainerRegistry::builtin();
    let spec = registry.get(TRAINER)?;
    let recipe = spec.backbone.ok_or("the trainer has no ViT")?;
    let mut cfg = recipe.config(Some(backbone))?;
    cfg.pos_embed_rope_dtype = rope;
    let request = NetworkRequest {
        backbone: Some(cfg),
        num_classes: classes,
        input_channels: 1,
        configuration: Default::default(),
    };
    let varmap = VarMap::new();
    drop((spec.build)(
        &request,
        seeded_var_builder(&varmap, seed, DType::F32, device),
    )?);
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    Ok((spec.build)(
        &request,
        VarBuilder::from_tensors(tensors, DType::F32, device),
    )?)
}

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "forward", value_parser = ["forward", "predict"])]
    mode: String,
    /// Threads (sets `RAYON_NUM_THREADS` before any pool starts); 0 keeps the default.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 6)]
    classes: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// RoPE precision: `bf16` (MedDINOv3) or `fp32` (transformers).
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "fp32"])]
    rope: String,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "vit_base")]
    backbone: String,
    /// forward: image side.
    #[arg(long, default_value_t = 448)]
    size: usize,
    /// forward: timed passes (after one warm-up pass).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
    /// forward: images per pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// predict: the volume's slices, height and width.
    #[arg(long, default_value_t = 16)]
    slices: usize,
    #[arg(long, default_value_t = 256)]
    height: usize,
    #[arg(long, default_value_t = 256)]
    width: usize,
    /// predict: the 2-D patch side and the tile step (fraction of the patch).
    #[arg(long, default_value_t = 224)]
    patch: usize,
    #[arg(long, default_value_t = 0.5)]
    step: f64,
    /// predict: tiles per forward pass.
    #[arg(long, default_value_t = 4)]
    tile_batch: usize,
}

fn main() -> Result<(), Error> {
    meddino_train::allocator::keep_freed_pages();
    let args = Args::parse();
    if args.threads > 0 {
        // Before anything starts a thread pool: rayon and candle's matmul read it.
        std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    }
    let classes = args.classes;
    let rope = if args.rope == "fp32" {
        RopeDtype::Fp32
    } else {
        RopeDtype::Bf16
    };
    let device = bench::device(&args.device)?;
    let network = build_network(&args.backbone, rope, classes, args.seed, &device)?;
    println!(
        "{TRAINER}, {classes} classes, rope {rope:?}, threads={} (candle {}), {device:?}",
        rayon::current_num_threads(),
        meddino_train::candle::utils::get_num_threads()
    );

    match args.mode.as_str() {
        "forward" => {
            let (size, repeats, batch) = (args.size, args.repeats as usize, args.batch);
            let xs = Tensor::randn(0f32, 1.0, (batch, 1, size, size), &device)?;
            // One untimed pass warms the allocator; reading a value back synchronises.
            let _ = network.forward(&xs)?.sum_all()?.to_scalar::<f32>()?;
            let mut times = Vec::with_capacity(repeats);
            for i in 0..repeats {
                let start = Instant::now();
                let logits = network.forward(&xs)?;
                let _ = logits.sum_all()?.to_scalar::<f32>()?;
                let seconds = start.elapsed().as_secs_f64();
                println!(
                    "forward {size}x{size} batch {batch} -> {:?}: pass {} {seconds:.3} s",
                    logits.dims(),
                    i + 1
                );
                times.push(seconds);
            }
            times.sort_by(f64::total_cmp);
            println!("median_s={:.4}", times[times.len() / 2]);
            print_peak_rss();
        }
        "predict" => {
            let (slices, height, width, patch) = (args.slices, args.height, args.width, args.patch);
            let options = SlidingWindowOptions {
                tile_step: args.step,
                mirroring: false,
                tile_batch: args.tile_batch.max(1),
            };
            let volume = Tensor::randn(0f32, 1.0, (1, slices, height, width), &device)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let volume = Array4::from_shape_vec((1, slices, height, width), volume)?;
            let tiles = slices
                * tile_starts(height.max(patch), patch, options.tile_step).len()
                * tile_starts(width.max(patch), patch, options.tile_step).len();
            println!(
                "volume 1x{slices}x{height}x{width}, patch {patch}², step {}, {tiles} tiles, {} per pass, no mirroring",
                options.tile_step, options.tile_batch
            );
            let start = Instant::now();
            let logits = sliding_window_logits(&[network.as_ref()], volume.view(), [patch, patch], &options, &device)?;
            let seconds = start.elapsed().as_secs_f64();
            println!(
                "logits {:?}, mean {:.5}",
                logits.dim(),
                logits.mean().unwrap_or(f32::NAN)
            );
            println!("seconds={seconds:.3}");
            print_peak_rss();
        }
        other => unreachable!("clap accepts forward or predict, not {other:?}"),
    }
    Ok(())
}
