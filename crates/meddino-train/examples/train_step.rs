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
//! untimed warm-up. Prints a Markdown table: the step, and its phases (each timed alone, the
//! device synchronised between them), medians over the timed steps.

use std::time::Instant;

use candle_nn::VarMap;
use clap::Parser;
use meddino_testutil::bench;
use meddino_train::candle::{DType, Tensor, Var};
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

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "meddinov3_base_primus_multiscale_Trainer")]
    trainer: String,
    /// A ViT preset; default: the trainer's.
    #[arg(long)]
    backbone: Option<String>,
    /// Patch sides, comma-separated.
    #[arg(long, default_value = "224,448", value_delimiter = ',')]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed steps per size (after one warm-up step).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    #[arg(long, default_value_t = 4)]
    classes: usize,
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn main() -> Result<(), Error> {
    meddino_train::allocator::keep_freed_pages();
    let args = Args::parse();
    let registry = TrainerRegistry::builtin();
    let spec = registry.get(&args.trainer)?;
    let backbone = spec.backbone.ok_or("the trainer has no ViT")?;
    let cfg = backbone.config(Some(args.backbone.as_deref().unwrap_or(backbone.preset)))?;
    let (sizes, batch, steps, classes) = (args.sizes, args.batch, args.steps as usize, args.classes);
    let device = bench::device(&args.device)?;

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
    println!("| patch | s/iter (median of {steps}) | forward + loss | backward | clipping + AdamW | peak RSS so far |");
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        let images = Tensor::randn(0f32, 1.0, (batch, 1, size, size), &device)?;
        let labels = Tensor::rand(0f32, classes as f32, (batch, 1, size, size), &device)?
            .floor()?
            .to_dtype(DType::U32)?;
        // Seconds of each phase, and of the whole step, per timed step. The device is
        // synchronised between phases so that each is timed alone (GPU work is asynchronous).
        let mut phases: [Vec<f64>; 4] = Default::default();
        for step in 0..=steps {
            let started = Instant::now();
            let mut lap = Instant::now();
            let mut split = |phase: usize, phases: &mut [Vec<f64>; 4]| -> meddino_train::candle::Result<()> {
                device.synchronize()?;
                if step > 0 {
                    phases[phase].push(lap.elapsed().as_secs_f64());
                }
                lap = Instant::now();
                Ok(())
            };
            let logits = network.forward_t(&images, true)?;
            let loss = dice_and_ce_loss(&logits, &labels, DiceReduction::Batch)?;
            split(0, &mut phases)?;
            let mut grads = loss.backward()?;
            split(1, &mut phases)?;
            let _ = clip_grad_norm(&mut grads, &plain, 12.0)?;
            optimizer.step(&grads)?;
            split(2, &mut phases)?;
            if step > 0 {
                phases[3].push(started.elapsed().as_secs_f64());
            }
        }
        let [forward, backward, update, total] = phases.map(|mut times| {
            times.sort_by(f64::total_cmp);
            times[times.len() / 2]
        });
        let peak = bench::memory_mib("VmHWM").map_or_else(|| "n/a".to_string(), |m| format!("{m:.0} MiB"));
        println!("| {size}² | {total:.3} | {forward:.3} | {backward:.3} | {update:.3} | {peak} |");
    }
    Ok(())
}
