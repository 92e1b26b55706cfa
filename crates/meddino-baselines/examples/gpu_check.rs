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

/// The reference file's `name` stored as `storage`, then computed in `compute` on `device`.
fn tensor(file: &TensorFile, name: &str, storage: DType, compute: DType, device: &Device) -> Result<Tensor, Error> {
    let array = file.get(name);
    let values: Vec<f64> = array.iter().copied().collect();
    Ok(Tensor::from_vec(values, array.shape(), &Device::Cpu)?
        .to_dtype(storage)?
        .to_dtype(compute)?
        .to_device(device)?)
}

/// What `core_checks` compares: the op's output and its gradients for value, sampling
/// locations and attention weights, with the reference file's key of each.
const RESULTS: [(&str, &str); 4] = [
    ("output", "output"),
    ("grad value", "grad_value"),
    ("grad locations", "grad_sampling_locations"),
    ("grad weights", "grad_attention_weights"),
];

/// The op's output and three gradients on the reference case, its inputs stored as
/// `storage` and computed in `compute`.
fn op_results(
    data: &TensorFile,
    storage: DType,
    compute: DType,
    device: &Device,
) -> Result<[Option<Tensor>; 4], Error> {
    let shapes: Vec<(usize, usize)> = data
        .get("spatial_shapes")
        .outer_iter()
        .map(|r| (r[0] as usize, r[1] as usize))
        .collect();
    let starts: Vec<usize> = data.get("level_start_index").iter().map(|&v| v as usize).collect();
    let load = |name: &str| tensor(data, name, storage, compute, device);
    let var = |name: &str| -> Result<Var, Error> { Ok(Var::from_tensor(&load(name)?)?) };
    let (value, locations, weights) = (var("value")?, var("sampling_locations")?, var("attention_weights")?);
    let out = ms_deform_attn(&value, &shapes, &starts, &locations, &weights)?;
    let grads = (&out * &load("grad_output")?)?.sum_all()?.backward()?;
    let grad = |v: &Var| grads.get(v.as_tensor()).cloned();
    Ok([Some(out.clone()), grad(&value), grad(&locations), grad(&weights)])
}

/// Forward and the three gradients of the reference case at `dtype` on `device`, against
/// the f64 reference. For bf16 the reference is the f64 op on the same bf16-rounded inputs:
/// what the kernel adds to the inputs' rounding (its f32 accumulation, the bf16 results) is
/// what is checked, since the rounding of the inputs alone moves a location gradient (a
/// difference of neighbouring values) by far more than the kernel's own error.
fn core_checks(
    reference: &Path,
    dtype: DType,
    limits: [f64; 4],
    device: &Device,
    rows: &mut Vec<Row>,
) -> Result<(), Error> {
    let data = TensorFile::read_safetensors(&reference.join("models/ms_deform_attn_core.safetensors"));
    let ours = op_results(&data, dtype, dtype, device)?;
    let rounded = if dtype == DType::BF16 {
        Some(op_results(&data, DType::BF16, DType::F64, device)?)
    } else {
        None
    };
    for (index, ((what, key), limit)) in RESULTS.into_iter().zip(limits).enumerate() {
        let expected = match rounded.as_ref().map(|r| r[index].as_ref()) {
            None => data.get(key).clone(),
            Some(Some(t)) => tensor_to_array(&t.to_device(&Device::Cpu)?),
            Some(None) => return Err(format!("the f64 op gave no {what}").into()),
        };
        let err = match &ours[index] {
            Some(t) => rel_err(t, &expected)?,
            None => f64::INFINITY,
        };
        let against = if rounded.is_some() {
            "f64 on bf16-rounded inputs"
        } else {
            "f64 reference"
        };
        rows.push(Row {
            check: format!("msda {dtype:?} {what} vs {against}"),
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
    let input = tensor(&io, "input", DType::F32, DType::F32, &Device::Cpu)?;
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
        // bf16 storage with f32 accumulation, against the same inputs rounded: one bf16 ulp of
        // the largest value is at most 2⁻⁷ of it (a result rounded the other way).
        core_checks(&reference, DType::BF16, [8e-3; 4], &device, &mut rows)?;
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
