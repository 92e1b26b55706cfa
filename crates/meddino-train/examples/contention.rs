//! Training steps per second on an idle machine and beside competing busy processes this
//! example starts itself, and the ratio: how much of its fair share training keeps when the
//! machine is shared (one busy process on 2 cores leaves a fair share of 0.5).
//!
//! ```text
//! cargo run --release -p meddino-train --example contention -- \
//!     [--trainer phantom_demo_Trainer] [--backbone PRESET] [--size 128] [--batch 4] \
//!     [--steps 20] [--busy 1]
//! ```
//!
//! Each phase runs one untimed warm-up step, then `--steps` timed ones (forward, Dice + CE
//! loss, backward, clipping, optimiser step) on random data; the competing processes are
//! copies of this binary spinning on one core each (`--burn`), killed at the end. Thread
//! settings come from the environment (`RAYON_NUM_THREADS`), so one binary compares them.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use candle_nn::VarMap;
use clap::Parser;
use meddino_train::candle::{DType, Device, Tensor, Var};
use meddino_train::init::seeded_var_builder;
use meddino_train::loss::{dice_and_ce_loss, DiceReduction};
use meddino_train::optim::{clip_grad_norm, named_vars, Optimizer};
use meddino_train::trainers::NetworkRequest;
use meddino_train::TrainerRegistry;

type Error = Box<dyn std::error::Error + Send + Sync>;

// As the `meddino` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "phantom_demo_Trainer")]
    trainer: String,
    /// A ViT preset; default: the trainer's.
    #[arg(long)]
    backbone: Option<String>,
    /// Patch side (the demo's 2d plans use 128).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Batch size (the demo's is 4).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed steps per phase.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    steps: u64,
    /// Competing busy processes in the loaded phase.
    #[arg(long, default_value_t = 1)]
    busy: usize,
    /// Internal: spin forever (the competing process).
    #[arg(long, hide = true)]
    burn: bool,
}

/// A network, its optimiser and one batch of random data.
struct Workload {
    network: Box<dyn meddino_train::decoder::SegmentationNetwork>,
    optimizer: Box<dyn Optimizer>,
    vars: Vec<Var>,
    images: Tensor,
    labels: Tensor,
}

impl Workload {
    fn new(args: &Args) -> Result<Self, Error> {
        let registry = TrainerRegistry::builtin();
        let spec = registry.get(&args.trainer)?;
        let backbone = spec.backbone.ok_or("the trainer has no ViT")?;
        let cfg = backbone.config(Some(args.backbone.as_deref().unwrap_or(backbone.preset)))?;
        let classes = 4;
        let varmap = VarMap::new();
        let request = NetworkRequest {
            backbone: Some(cfg),
            num_classes: classes,
            input_channels: 1,
            configuration: Default::default(),
        };
        let network = (spec.build)(&request, seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu))?;
        let named = named_vars(&varmap);
        let optimizer = spec.optimizer.build(&named);
        let shape = (args.batch, 1, args.size, args.size);
        Ok(Self {
            network,
            optimizer,
            vars: named.iter().map(|(_, v)| v.clone()).collect(),
            images: Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?,
            labels: Tensor::rand(0f32, classes as f32, shape, &Device::Cpu)?
                .floor()?
                .to_dtype(DType::U32)?,
        })
    }

    fn step(&mut self) -> Result<(), Error> {
        let logits = self.network.forward_t(&self.images, true)?;
        let loss = dice_and_ce_loss(&logits, &self.labels, DiceReduction::Batch)?;
        let mut grads = loss.backward()?;
        let _ = clip_grad_norm(&mut grads, &self.vars, 12.0)?;
        self.optimizer.step(&grads)?;
        Ok(())
    }

    /// Steps per second over `steps` timed steps after one warm-up step.
    fn rate(&mut self, steps: u64) -> Result<f64, Error> {
        self.step()?;
        let started = Instant::now();
        for _ in 0..steps {
            self.step()?;
        }
        Ok(steps as f64 / started.elapsed().as_secs_f64())
    }
}

/// The competing processes; killed when dropped, so an error cannot leave them spinning.
struct Busy(Vec<Child>);

impl Busy {
    fn start(count: usize) -> Result<Self, Error> {
        let exe = std::env::current_exe()?;
        let mut children = Busy(Vec::with_capacity(count));
        for _ in 0..count {
            children.0.push(
                Command::new(&exe)
                    .arg("--burn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            );
        }
        Ok(children)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn burn() -> ! {
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    if args.burn {
        burn();
    }
    meddino_train::allocator::keep_freed_pages();
    let mut workload = Workload::new(&args)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "{} at {}² batch {}, {} timed steps per phase, {} threads, {cores} cores, {} busy process(es)\n",
        args.trainer,
        args.size,
        args.batch,
        args.steps,
        rayon::current_num_threads(),
        args.busy
    );
    let idle = workload.rate(args.steps)?;
    let loaded = {
        let _busy = Busy::start(args.busy)?;
        workload.rate(args.steps)?
    };
    // Each busy process takes one core's worth: what is left for training.
    let fair = cores.saturating_sub(args.busy) as f64 / cores as f64;
    println!("| phase | steps/s |");
    println!("|---|---|");
    println!("| idle | {idle:.3} |");
    println!("| beside {} busy process(es) | {loaded:.3} |", args.busy);
    println!("\nratio loaded/idle: {:.3} (fair share {fair:.2})", loaded / idle);
    Ok(())
}
