//! GPU verification of the decoder, run by `scripts/gpu-check.sh` on a GPU machine:
//! the deformable-attention kernels against the f64 reference (forward and the three
//! gradients, in f64, f32 and bf16), Primus_Multiscale on the GPU against the CPU, the Dino
//! U-Net (whose adapter runs the deformable attention through the CUDA kernels on the GPU)
//! forward on the GPU against the CPU and its training-mode backward, and the op's forward +
//! backward time at the Dino U-Net's size. Prints a table last; exits 1 when a check fails.
//!
//! ```text
//! cargo build --features cuda -p meddino-baselines --example gpu_check   (see scripts/build-gpu-check.sh)
//! gpu_check REFERENCE_DIR
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use meddino_baselines::dino_unet::{DinoUNet, DinoUNetConfig};
use meddino_decoder::backbone::Config;
use meddino_decoder::{ms_deform_attn, Interaction, Primus, SegmentationNetwork};
use meddino_testutil::{compare, tensor_to_array, TensorFile};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One line of the final table.
struct Row {
    check: String,
    value: String,
    limit: String,
    ok: bool,
}

fn rel_err(ours: &Tensor, expected: &meddino_testutil::ndarray::ArrayD<f64>) -> Result<f64, Error> {
    let ours = tensor_to_array(&ours.to_device(&Device::Cpu)?.to_dtype(DType::F64)?);
    Ok(compare(ours.view(), expected.view())?.rel_err())
}

fn tensor(file: &TensorFile, name: &str, dtype: DType, device: &Device) -> Result<Tensor, Error> {
    let array = file.get(name);
    let values: Vec<f64> = array.iter().copied().collect();
    Ok(Tensor::from_vec(values, array.shape(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

/// Forward and the three gradients of the reference case at `dtype` on `device`.
fn core_checks(
    reference: &Path,
    dtype: DType,
    limits: [f64; 4],
    device: &Device,
    rows: &mut Vec<Row>,
) -> Result<(), Error> {
    let data = TensorFile::read_safetensors(&reference.join("models/ms_deform_attn_core.safetensors"));
    let shapes: Vec<(usize, usize)> = data
        .get("spatial_shapes")
        .outer_iter()
        .map(|r| (r[0] as usize, r[1] as usize))
        .collect();
    let starts: Vec<usize> = data.get("level_start_index").iter().map(|&v| v as usize).collect();
    let var = |name: &str| -> Result<Var, Error> { Ok(Var::from_tensor(&tensor(&data, name, dtype, device)?)?) };
    let (value, locations, weights) = (var("value")?, var("sampling_locations")?, var("attention_weights")?);
    let out = ms_deform_attn(&value, &shapes, &starts, &locations, &weights)?;
    let upstream = tensor(&data, "grad_output", dtype, device)?;
    let grads = (&out * &upstream)?.sum_all()?.backward()?;
    let results = [
        ("output", Some(out.clone()), "output"),
        ("grad value", grads.get(value.as_tensor()).cloned(), "grad_value"),
        (
            "grad locations",
            grads.get(locations.as_tensor()).cloned(),
            "grad_sampling_locations",
        ),
        (
            "grad weights",
            grads.get(weights.as_tensor()).cloned(),
            "grad_attention_weights",
        ),
    ];
    for ((what, ours, key), limit) in results.into_iter().zip(limits) {
        let err = match ours {
            Some(t) => rel_err(&t, data.get(key))?,
            None => f64::INFINITY,
        };
        rows.push(Row {
            check: format!("msda {dtype:?} {what} vs f64 reference"),
            value: format!("{err:.2e}"),
            limit: format!("{limit:.0e}"),
            ok: err <= limit,
        });
    }
    Ok(())
}

fn primus_check(reference: &Path, device: &Device, rows: &mut Vec<Row>) -> Result<(), Error> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("models/manifest.json"))?)?;
    let entry = &manifest["decoders"]["primus_multiscale"];
    let backbone = entry["backbone"]
        .as_str()
        .ok_or("manifest: decoders.primus_multiscale.backbone")?;
    let cfg: Config = serde_json::from_value(manifest["backbones"][backbone]["config"].clone())?;
    let classes = entry["num_classes"].as_u64().ok_or("manifest: num_classes")? as usize;
    let indices: Vec<usize> = serde_json::from_value(entry["interaction_indices"].clone())?;
    let weights = reference.join("models/primus_multiscale.weights.safetensors");
    let interaction = Interaction::Blocks(indices);
    let io = TensorFile::read_safetensors(&reference.join("models/primus_multiscale.io.safetensors"));
    let input = tensor(&io, "input", DType::F32, &Device::Cpu)?;
    let cpu = Primus::load(&cfg, classes, &interaction, &weights, &Device::Cpu)?.forward(&input)?;
    let gpu = Primus::load(&cfg, classes, &interaction, &weights, device)?.forward(&input.to_device(device)?)?;
    let err = rel_err(&gpu, &tensor_to_array(&cpu))?;
    // bf16 RoPE: a q/k value on a rounding boundary may round differently under cuBLAS.
    rows.push(Row {
        check: "Primus_Multiscale logits, GPU vs CPU".into(),
        value: format!("{err:.2e}"),
        limit: "1e-3".into(),
        ok: err <= 1e-3,
    });
    let err = rel_err(&gpu, io.get("logits"))?;
    rows.push(Row {
        check: "Primus_Multiscale logits, GPU vs reference".into(),
        value: format!("{err:.2e}"),
        limit: "1e-3".into(),
        ok: err <= 1e-3,
    });
    Ok(())
}

/// A small Dino U-Net (vit_micro with the hub settings, decoder widths 16…128) built on the
/// CPU, copied to the GPU: eval-mode logits agree, and a training-mode backward on the GPU
/// (deformable attention through the CUDA kernels in both directions) reaches the adapter.
fn dino_unet_check(device: &Device, rows: &mut Vec<Row>) -> Result<(), Error> {
    let kwargs = serde_json::json!({
        "n_stages": 4, "features_per_stage": [16, 32, 64, 128],
        "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3], [3, 3], [3, 3], [3, 3]],
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2], "conv_bias": true,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": true},
        "dropout_op": null, "dropout_op_kwargs": null,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}
    });
    let cfg = DinoUNetConfig::from_arch_kwargs(Config::vit_micro().with_hub_settings(), &kwargs, 1, 4)?;
    let cpu_vars = VarMap::new();
    let cpu = DinoUNet::new(&cfg, VarBuilder::from_varmap(&cpu_vars, DType::F32, &Device::Cpu))?;
    let gpu_vars = VarMap::new();
    let gpu = DinoUNet::new(&cfg, VarBuilder::from_varmap(&gpu_vars, DType::F32, device))?;
    {
        let cpu_data = cpu_vars.data().lock().map_err(|_| "varmap lock")?;
        for (name, var) in gpu_vars.data().lock().map_err(|_| "varmap lock")?.iter() {
            var.set(&cpu_data[name].as_tensor().to_device(device)?)?;
        }
    }
    let input = Tensor::randn(0f32, 1.0, (2, 1, 96, 96), &Device::Cpu)?;
    let expected = cpu.forward(&input)?;
    let ours = gpu.forward(&input.to_device(device)?)?;
    let err = rel_err(&ours, &tensor_to_array(&expected))?;
    rows.push(Row {
        check: "Dino U-Net logits (vit_micro, 96²), GPU vs CPU".into(),
        value: format!("{err:.2e}"),
        limit: "1e-4".into(),
        ok: err <= 1e-4,
    });
    gpu.reseed(7);
    let loss = gpu.forward_t(&input.to_device(device)?, true)?.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    // The value projection learns through the kernel's value gradient, the sampling offsets
    // through its location gradient.
    let data = gpu_vars.data().lock().map_err(|_| "varmap lock")?;
    for projection in ["value_proj", "sampling_offsets"] {
        let name = format!("encoder.dinov3_adapter.interactions.0.extractor.attn.{projection}.weight");
        let norm = match data.get(&name).and_then(|var| grads.get(var.as_tensor())) {
            Some(g) => g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            None => f64::NAN,
        };
        rows.push(Row {
            check: format!("Dino U-Net backward on the GPU, |∂loss/∂{projection}|²"),
            value: format!("{norm:.2e}"),
            limit: "> 0".into(),
            ok: norm.is_finite() && norm > 0.0,
        });
    }
    Ok(())
}

/// Forward + backward at the Dino U-Net's size: queries of the 1/8, 1/16, 1/32 grids of a
/// 512² image attending to the 1/16 ViT map, 16 heads × 24 channels, 4 points.
fn timing(device: &Device, rows: &mut Vec<Row>) -> Result<(), Error> {
    let (n, heads, channels, points) = (1, 16, 24, 4);
    let shapes = [(32usize, 32usize)];
    let queries = 64 * 64 + 32 * 32 + 16 * 16;
    let value = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, 32 * 32, heads, channels), device)?)?;
    let locations = Var::from_tensor(&Tensor::rand(0f32, 1.0, (n, queries, heads, 1, points, 2), device)?)?;
    let logits = Tensor::randn(0f32, 1.0, (n, queries, heads, points), device)?;
    let weights =
        Var::from_tensor(&candle_nn::ops::softmax_last_dim(&logits)?.reshape((n, queries, heads, 1, points))?)?;
    let upstream = Tensor::randn(0f32, 1.0, (n, queries, heads * channels), device)?;
    let step = || -> Result<(), Error> {
        let out = ms_deform_attn(&value, &shapes, &[0], &locations, &weights)?;
        let grads = (&out * &upstream)?.sum_all()?.backward()?;
        let _ = grads.get(value.as_tensor()).ok_or("no value gradient")?;
        device.synchronize()?;
        Ok(())
    };
    for _ in 0..3 {
        step()?;
    }
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            step().map(|()| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!("msda_fwd_bwd_ms={median:.3}");
    rows.push(Row {
        check: format!("msda f32 fwd+bwd, Lq {queries}, 16×24, 4 points (median of 20)"),
        value: format!("{median:.3} ms"),
        limit: "-".into(),
        ok: true,
    });
    Ok(())
}

fn main() -> ExitCode {
    let reference = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "reference".into()));
    let mut rows = Vec::new();
    let result = (|| -> Result<(), Error> {
        let device = Device::new_cuda(0)?;
        core_checks(&reference, DType::F64, [1e-10; 4], &device, &mut rows)?;
        core_checks(&reference, DType::F32, [1e-5, 1e-5, 1e-4, 1e-5], &device, &mut rows)?;
        // bf16 storage (8-bit mantissa) with f32 accumulation: the inputs' rounding dominates.
        core_checks(&reference, DType::BF16, [2e-2, 2e-2, 1e-1, 2e-2], &device, &mut rows)?;
        primus_check(&reference, &device, &mut rows)?;
        dino_unet_check(&device, &mut rows)?;
        timing(&device, &mut rows)
    })();
    if let Err(e) = &result {
        rows.push(Row {
            check: "run".into(),
            value: format!("error: {e}"),
            limit: "-".into(),
            ok: false,
        });
    }
    println!("\n{:<62} {:>14} {:>8}  ok", "check", "value", "limit");
    for row in &rows {
        println!(
            "{:<62} {:>14} {:>8}  {}",
            row.check,
            row.value,
            row.limit,
            if row.ok { "yes" } else { "NO" }
        );
    }
    if rows.iter().all(|r| r.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
