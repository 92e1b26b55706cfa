//! Times one forward pass of a DINOv3 backbone with random weights.
//!
//! ```text
//! cargo run --release -p meddino-backbone --example forward_bench -- --arch vit_base --size 448 --repeats 3 [--batch 1] [--device cpu|cuda]
//! ```
//!
//! Prints each pass and, last, `median_s=<seconds>` (f32, `forward_features`).

use std::collections::HashMap;
use std::time::Instant;

use candle_nn::{VarBuilder, VarMap};
use meddino_backbone::candle::{DType, Device, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer};

type Error = Box<dyn std::error::Error + Send + Sync>;

// As the `meddino` binary: an allocator that keeps freed pages, so activation buffers are
// not page-faulted in afresh on every pass.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A field of this process's `/proc/self/status` (`VmRSS`, `VmHWM`), in MiB.
fn memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let arch = flag("--arch", "vit_base");
    let size: usize = flag("--size", "448").parse()?;
    let repeats: usize = flag("--repeats", "3").parse::<usize>()?.max(1);
    let batch: usize = flag("--batch", "1").parse()?;
    let device = match flag("--device", "cpu").as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("unknown device {other:?}: cpu or cuda").into()),
    };
    let cfg = Config::preset(&arch)?;
    // Random weights drawn as variables, then loaded as plain tensors, as `meddino predict`
    // loads a checkpoint: no autograd graph is kept alive by the outputs.
    let varmap = VarMap::new();
    DinoVisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| "poisoned variable map")?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let model = DinoVisionTransformer::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &device))?;
    let xs = Tensor::randn(0f32, 1.0, (batch, cfg.in_chans, size, size), &device)?;
    eprintln!(
        "after init: rss {:?} MiB, peak {:?} MiB",
        memory_mib("VmRSS:"),
        memory_mib("VmHWM:")
    );

    // One untimed pass warms allocators and (on CUDA) loads the kernels.
    let _ = model.forward_features(&xs)?.x_prenorm.sum_all()?.to_scalar::<f32>()?;
    eprintln!(
        "after warm-up: rss {:?} MiB, peak {:?} MiB",
        memory_mib("VmRSS:"),
        memory_mib("VmHWM:")
    );
    let mut times = Vec::with_capacity(repeats);
    for i in 0..repeats {
        let start = Instant::now();
        let features = model.forward_features(&xs)?;
        // Reading a value back synchronises the device before the clock stops.
        let _ = features.x_prenorm.sum_all()?.to_scalar::<f32>()?;
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "{arch} {size}x{size} batch {batch} on {device:?}: pass {} {seconds:.3} s",
            i + 1
        );
        times.push(seconds);
    }
    times.sort_by(f64::total_cmp);
    println!("median_s={:.4}", times[times.len() / 2]);
    Ok(())
}
