//! The memory-efficient attention op (`meddino_backbone::flash`) against the composite
//! attention (matmul, softmax, matmul under candle's autograd) on the same inputs: forward
//! and the three gradients, then both timed at a ViT-B's 896² shape. Run by
//! `scripts/gpu-check.sh`; exits 1 when a comparison exceeds its limit.
//!
//! ```text
//! attention_check [--device cuda] [--repeats 5]
//! ```
//!
//! For bf16 the forward runs on tensor cores where the head size allows (32, 64), and the
//! scalar kernel's output is compared too (`MEDDINO_FLASH_TENSOR_CORES=0`, read at each call).
//!
//! The reference is the composite path in f32 on the same (for bf16: the same rounded)
//! inputs, so a bf16 case measures only what the op adds: its results' rounding to bf16, at
//! most one bf16 ulp of the largest value (2⁻⁷ of it).

use std::time::Instant;

use candle_core::{DType, Tensor, Var, D};
use clap::Parser;
use meddino_backbone::flash::flash_attention;
use meddino_testutil::bench;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags (see the module documentation).
#[derive(Debug, Parser)]
struct Args {
    /// `cuda` or `cpu`.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Timed repeats (after one warm-up), median reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn composite(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
}

/// `max |a − b| / max |b|`.
fn rel_err(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let diff: f64 = (&a - &b)?.abs()?.flatten_all()?.max(0)?.to_scalar()?;
    let scale: f64 = b.abs()?.flatten_all()?.max(0)?.to_scalar()?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

/// Output and gradients of `attend` for an upstream gradient `upstream`.
fn run(
    attend: impl Fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>,
    inputs: &[Var; 3],
    upstream: &Tensor,
) -> candle_core::Result<[Tensor; 4]> {
    let out = attend(inputs[0].as_tensor(), inputs[1].as_tensor(), inputs[2].as_tensor())?;
    let grads = (out.to_dtype(DType::F32)? * upstream)?.sum_all()?.backward()?;
    let grad = |i: usize| {
        grads
            .get(inputs[i].as_tensor())
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
    };
    Ok([out, grad(0)?, grad(1)?, grad(2)?])
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let device = bench::device(&args.device)?;
    let mut failed = false;
    println!("| case | dtype | output | grad q | grad k | grad v | output, scalar kernel | limit | ok |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    // Small and odd sizes (tails of the tiles), each head size, and the ViT-B's 896² shape.
    let cases = [(1, 3, 37, 32), (2, 4, 300, 128), (2, 12, 3137, 64)];
    for (b, h, n, d) in cases {
        for (dtype, limit) in [(DType::F32, 1e-4), (DType::BF16, 1e-2)] {
            let scale = 1.0 / (d as f64).sqrt();
            // Spread scores, so the softmax is far from uniform.
            let make = |spread: f64| -> candle_core::Result<Var> {
                let t = (Tensor::randn(0f32, 1.0, (b, h, n, d), &device)? * spread)?.to_dtype(dtype)?;
                Var::from_tensor(&t)
            };
            let inputs = [make(3.0)?, make(3.0)?, make(1.0)?];
            let widen = |i: usize| Var::from_tensor(&inputs[i].as_tensor().to_dtype(DType::F32)?);
            let widened = [widen(0)?, widen(1)?, widen(2)?];
            let upstream = Tensor::randn(0f32, 1.0, (b, h, n, d), &device)?;
            let ours = run(|q, k, v| flash_attention(q, k, v, scale), &inputs, &upstream)?;
            let reference = run(|q, k, v| composite(q, k, v, scale), &widened, &upstream)?;
            // The forward's other kernel too: scalar, where bf16 ran on tensor cores above.
            std::env::set_var("MEDDINO_FLASH_TENSOR_CORES", "0");
            let scalar = flash_attention(
                inputs[0].as_tensor(),
                inputs[1].as_tensor(),
                inputs[2].as_tensor(),
                scale,
            )?;
            std::env::remove_var("MEDDINO_FLASH_TENSOR_CORES");
            let errors: Vec<f64> = ours
                .iter()
                .chain([&scalar])
                .zip(reference.iter().chain([&reference[0]]))
                .map(|(a, b)| rel_err(a, b))
                .collect::<candle_core::Result<_>>()?;
            let ok = errors.iter().all(|e| *e <= limit);
            failed |= !ok;
            println!(
                "| {b}×{h}×{n}×{d} | {dtype:?} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {limit:.0e} | {} |",
                errors[0],
                errors[1],
                errors[2],
                errors[3],
                errors[4],
                if ok { "yes" } else { "NO" }
            );
        }
    }

    // Time at a ViT-B's 896² attention, batch 2: forward, and forward + backward.
    let (b, h, n, d) = (2, 12, 3137, 64);
    let scale = 1.0 / (d as f64).sqrt();
    println!("\nattention {b}×{h}×{n}×{d}, median of {} (ms)\n", args.repeats);
    println!("| dtype | path | forward | forward + backward |");
    println!("|---|---|---:|---:|");
    for dtype in [DType::BF16, DType::F32] {
        let make = || Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, n, d), &device)?.to_dtype(dtype)?);
        let inputs = [make()?, make()?, make()?];
        let upstream = Tensor::randn(0f32, 1.0, (b, h, n, d), &device)?;
        for (path, flash) in [("flash", true), ("flash_scalar", true), ("composite", false)] {
            if dtype != DType::BF16 && path == "flash_scalar" {
                continue; // f32 has only the scalar kernels
            }
            // Read by the op at every call: the bf16 forward on tensor cores unless "0".
            std::env::set_var(
                "MEDDINO_FLASH_TENSOR_CORES",
                if path == "flash_scalar" { "0" } else { "1" },
            );
            let attend = |q: &Tensor, k: &Tensor, v: &Tensor| {
                if flash {
                    flash_attention(q, k, v, scale)
                } else {
                    composite(q, k, v, scale)
                }
            };
            let time = |backward: bool| -> candle_core::Result<f64> {
                let mut times = Vec::new();
                for repeat in 0..=args.repeats {
                    device.synchronize()?;
                    let started = Instant::now();
                    if backward {
                        run(attend, &inputs, &upstream)?;
                    } else {
                        attend(inputs[0].as_tensor(), inputs[1].as_tensor(), inputs[2].as_tensor())?;
                    }
                    device.synchronize()?;
                    if repeat > 0 {
                        times.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                times.sort_by(f64::total_cmp);
                Ok(times[times.len() / 2])
            };
            let (forward, both) = (time(false)?, time(true)?);
            println!("| {dtype:?} | {path} | {forward:.2} | {both:.2} |");
            println!(
                "attention_{path}_{}_ms={forward:.3} attention_{path}_{}_fwd_bwd_ms={both:.3}",
                dtype.as_str(),
                dtype.as_str()
            );
        }
    }
    if failed {
        println!("FAIL: the flash attention parts from the composite one");
        std::process::exit(1);
    }
    Ok(())
}
