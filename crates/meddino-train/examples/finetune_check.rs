//! A short fine-tune run twice from the same weights on the same batches, once on the CPU and
//! once on another device, printing both loss curves and failing when they part.
//!
//! ```text
//! cargo run -p meddino-train --features cuda --example finetune_check -- \
//!     [--trainer meddinov3_base_primus_multiscale_Trainer] [--backbone vit_small] \
//!     [--size 224] [--batch 2] [--steps 20] [--classes 4] [--device cuda] [--tolerance 2e-3]
//! ```
//!
//! Both networks are built from the same host-seeded initialisation, and their stochastic
//! depth and RoPE augmentation draw from host generators with the same seed, so the two runs
//! differ only by the device's arithmetic: the order of f32 sums, and the bf16 rounding of
//! MedDINOv3's RoPE that an ulp of difference in q or k can flip. The task is learnable (the
//! label of a pixel is a band of its intensity), so the losses fall and the check covers
//! real updates, not only the first forward. Exit status 1 when the largest relative loss
//! difference exceeds `--tolerance`, or when the loss did not fall.

use candle_nn::VarMap;
use clap::Parser;
use meddino_testutil::bench;
use meddino_train::candle::{DType, Device, Tensor, Var};
use meddino_train::init::seeded_var_builder;
use meddino_train::loss::{dice_and_ce_loss, DiceReduction};
use meddino_train::optim::{clip_grad_norm, named_vars};
use meddino_train::trainers::{NetworkRequest, TrainerSpec};
use meddino_train::TrainerRegistry;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value = "meddinov3_base_primus_multiscale_Trainer")]
    trainer: String,
    /// A ViT preset; default `vit_small`, so that the CPU run takes seconds.
    #[arg(long, default_value = "vit_small")]
    backbone: String,
    /// Patch side (a multiple of the patch size).
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 2)]
    batch: usize,
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..))]
    steps: u64,
    #[arg(long, default_value_t = 4)]
    classes: usize,
    /// The device compared with the CPU: `cuda` (or `cpu`, which must agree exactly).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Largest allowed |loss_device − loss_cpu| / loss_cpu over all steps.
    #[arg(long, default_value_t = 2e-3)]
    tolerance: f64,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let registry = TrainerRegistry::builtin();
    let spec = registry.get(&args.trainer)?;
    let device = bench::device(&args.device)?;
    let batches = learnable_batches(&args)?;

    let reference = fine_tune(spec, &args, &Device::Cpu, &batches)?;
    let tested = fine_tune(spec, &args, &device, &batches)?;

    println!(
        "{} with {} at {}², batch {}: {} AdamW steps, CPU f32 vs {device:?} f32\n",
        spec.name, args.backbone, args.size, args.batch, args.steps
    );
    println!("| step | CPU loss | {} loss | relative difference |", args.device);
    println!("|---:|---:|---:|---:|");
    let mut worst = 0f64;
    for (step, (cpu, other)) in reference.iter().zip(&tested).enumerate() {
        let relative = (other - cpu).abs() / cpu.abs().max(f64::MIN_POSITIVE);
        worst = worst.max(if relative.is_nan() { f64::INFINITY } else { relative });
        println!("| {step} | {cpu:.6} | {other:.6} | {relative:.2e} |");
    }
    let fell = tested.last() < tested.first();
    println!("\nfinetune_max_relative_difference={worst:.3e}");
    println!(
        "finetune_loss_first={:.6} finetune_loss_last={:.6}",
        tested[0],
        tested[tested.len() - 1]
    );
    if worst > args.tolerance || !fell {
        println!(
            "FAIL: largest relative loss difference {worst:.3e} (tolerance {:.1e}); loss fell: {fell}",
            args.tolerance
        );
        std::process::exit(1);
    }
    println!(
        "ok: the {} run follows the CPU run within {:.1e}",
        args.device, args.tolerance
    );
    Ok(())
}

/// `steps` (image, label) pairs on the CPU: smooth random images (noise averaged over 8×8
/// cells, upsampled) whose label is the intensity band a pixel falls in.
fn learnable_batches(args: &Args) -> Result<Vec<(Tensor, Tensor)>, Error> {
    let (b, s, classes) = (args.batch, args.size, args.classes);
    (0..args.steps)
        .map(|_| {
            let coarse = Tensor::randn(0f32, 1.0, (b, 1, s / 8, s / 8), &Device::Cpu)?;
            let images = coarse.upsample_nearest2d(s, s)?;
            // Bands of width 1 around 0: class c where c ≤ x + k/2 < c + 1 (the ends open).
            let labels = ((&images + (classes as f64 / 2.0))?
                .clamp(0f32, classes as f32 - 0.5)?
                .floor()?)
            .to_dtype(DType::U32)?;
            Ok((images, labels))
        })
        .collect()
}

/// The loss of every step of a fine-tune on `device` (before that step's update).
fn fine_tune(
    spec: &TrainerSpec,
    args: &Args,
    device: &Device,
    batches: &[(Tensor, Tensor)],
) -> Result<Vec<f64>, Error> {
    let backbone = spec.backbone.ok_or("the trainer has no ViT")?;
    let request = NetworkRequest {
        backbone: Some(backbone.config(Some(args.backbone.as_str()))?),
        num_classes: args.classes,
        input_channels: 1,
        configuration: Default::default(),
    };
    let varmap = VarMap::new();
    let network = (spec.build)(&request, seeded_var_builder(&varmap, 0, DType::F32, device))?;
    let vars = named_vars(&varmap);
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let mut optimizer = spec.optimizer.build(&vars);
    let mut losses = Vec::with_capacity(batches.len());
    for (images, labels) in batches {
        let (images, labels) = (images.to_device(device)?, labels.to_device(device)?);
        let logits = network.forward_t(&images, true)?;
        let loss = dice_and_ce_loss(&logits, &labels, DiceReduction::Batch)?;
        losses.push(f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?));
        let mut grads = loss.backward()?;
        let _ = clip_grad_norm(&mut grads, &plain, 12.0)?;
        optimizer.step(&grads)?;
    }
    Ok(losses)
}
