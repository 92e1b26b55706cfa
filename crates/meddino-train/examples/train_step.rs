//! Seconds per training iteration (forward, loss, backward, clipping, AdamW) of a trainer's
//! network at several patch sizes, and the process's peak memory.
//!
//! ```text
//! cargo run --release -p meddino-train --example train_step -- \
//!     [--trainer meddinov3_base_primus_multiscale_Trainer] [--backbone vit_base] \
//!     [--sizes 224,448] [--batch 2] [--steps 3] [--classes 4] [--device cpu|cuda]
//! ```
//!
//! Weights are random (speed does not depend on them); the first step of each size is an
//! untimed warm-up. Prints a Markdown table.

use std::time::Instant;

use candle_nn::VarMap;
use meddino_train::candle::{DType, Device, Tensor, Var};
use meddino_train::init::seeded_var_builder;
use meddino_train::loss::{dice_and_ce_loss, DiceReduction};
use meddino_train::optim::{clip_grad_norm, named_vars};
use meddino_train::trainers::NetworkRequest;
use meddino_train::TrainerRegistry;

type Error = Box<dyn std::error::Error + Send + Sync>;

// As the `meddino` binary: an allocator that keeps freed pages, so the large activation
// buffers of every step are not page-faulted in afresh.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Error> {
    meddino_train::allocator::keep_freed_pages();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let registry = TrainerRegistry::builtin();
    let spec = registry.get(&flag("--trainer", "meddinov3_base_primus_multiscale_Trainer"))?;
    let backbone = spec.backbone.ok_or("the trainer has no ViT")?;
    let cfg = backbone.config(Some(&flag("--backbone", backbone.preset)))?;
    let sizes: Vec<usize> = flag("--sizes", "224,448")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let batch: usize = flag("--batch", "2").parse()?;
    let steps: usize = flag("--steps", "3").parse::<usize>()?.max(1);
    let classes: usize = flag("--classes", "4").parse()?;
    let device = match flag("--device", "cpu").as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::new_cuda(0)?,
        other => return Err(format!("unknown device {other:?}: cpu or cuda").into()),
    };

    let varmap = VarMap::new();
    let request = NetworkRequest {
        backbone: Some(cfg.clone()),
        num_classes: classes,
        input_channels: 1,
        configuration: Default::default(),
    };
    let network = (spec.build)(&request, seeded_var_builder(&varmap, 0, DType::F32, &device))?;
    let vars = named_vars(&varmap);
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut optimizer = spec.optimizer.build(&vars);
    let parameters: usize = plain.iter().map(|v| v.elem_count()).sum();

    println!(
        "{} ({}-wide, {} blocks, {:.1} M parameters), batch {batch}, {} threads, {device:?}\n",
        spec.name,
        cfg.embed_dim,
        cfg.depth,
        parameters as f64 / 1e6,
        rayon::current_num_threads()
    );
    println!("| patch | s/iter (median of {steps}) | peak RSS so far |");
    println!("|---|---|---|");
    for size in sizes {
        let images = Tensor::randn(0f32, 1.0, (batch, 1, size, size), &device)?;
        let labels = Tensor::rand(0f32, classes as f32, (batch, 1, size, size), &device)?
            .floor()?
            .to_dtype(DType::U32)?;
        let mut times = Vec::with_capacity(steps);
        for step in 0..=steps {
            let started = Instant::now();
            let logits = network.forward_t(&images, true)?;
            let loss = dice_and_ce_loss(&logits, &labels, DiceReduction::Batch)?;
            let mut grads = loss.backward()?;
            let _ = clip_grad_norm(&mut grads, &plain, 12.0)?;
            optimizer.step(&grads)?;
            device.synchronize()?;
            if step > 0 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        let peak = peak_rss_mib().map_or_else(|| "n/a".to_string(), |m| format!("{m:.0} MiB"));
        println!("| {size}² | {:.2} | {peak} |", times[times.len() / 2]);
    }
    Ok(())
}
