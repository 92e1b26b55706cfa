//! Conformance with MedDINOv3's Primus heads and DINOv3's deformable attention (see
//! `shared/reference/README.md`, `models/`): decoder logits through every weights format
//! present, the core op and its three gradients in f64, and the `MSDeformAttn` module.
//! Configs, shapes and names come from `manifest.json` and the tensor files.
//!
//! Logits of decoders on bf16-RoPE backbones are judged by [`BF16_ROPE_CRITERION`] against
//! the same weights with f32 RoPE (see `meddino-testutil`'s `compare`): a max-error
//! tolerance cannot both pass the emulation and fail its absence for every seed and input
//! size. `--nocapture` prints the table.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use meddino_decoder::backbone::{Config, RopeDtype, StateDict};
use meddino_decoder::{level_start_index, ms_deform_attn, Interaction, MSDeformAttn, Primus, SegmentationNetwork};
use meddino_testutil::ndarray::ArrayD;
use meddino_testutil::{assert_tensor_close, reference_or_skip, tensor_error_profile, TensorFile, BF16_ROPE_CRITERION};

/// Float32 forward outputs agree to about 1e-4 relative (README).
const TOLERANCE: f64 = 1e-4;
/// Float64 deformable attention agrees to 1e-10 (README).
const F64_TOLERANCE: f64 = 1e-10;

fn tensor(file: &TensorFile, name: &str, dtype: DType) -> Tensor {
    let array = file.get(name);
    let shape = array.shape().to_vec();
    let values: Vec<f64> = array.iter().copied().collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("tensor")
}

/// `[L, 2]` (H, W) pairs and `[L]` starts, read from integer tensors.
fn levels(shapes: &ArrayD<f64>) -> (Vec<(usize, usize)>, Vec<usize>) {
    let shapes: Vec<(usize, usize)> = shapes
        .outer_iter()
        .map(|row| (row[0] as usize, row[1] as usize))
        .collect();
    let starts = level_start_index(&shapes);
    (shapes, starts)
}

#[test]
fn primus_heads_match_the_reference() {
    let reference = reference_or_skip!();
    let manifest = reference.json("models/manifest.json");
    let Some(decoders) = manifest["decoders"].as_object() else {
        eprintln!("skipping: manifest.json lists no decoders");
        return;
    };
    let mut checked = 0;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (name, entry) in decoders {
        let backbone = entry["backbone"].as_str().expect("decoders.*.backbone");
        let cfg: Config = serde_json::from_value(manifest["backbones"][backbone]["config"].clone()).expect("config");
        let num_classes = entry["num_classes"].as_u64().expect("num_classes") as usize;
        let interaction = match entry.get("interaction_indices") {
            Some(indices) => Interaction::Blocks(serde_json::from_value(indices.clone()).expect("indices")),
            None => Interaction::LastBlock,
        };
        let bf16_rope = cfg.pos_embed_rope_dtype != RopeDtype::Fp32;
        let io = reference.safetensors(format!("models/{name}.io.safetensors"));
        let xs = tensor(&io, "input", DType::F32);
        let files: Vec<PathBuf> = [".weights.safetensors", ".checkpoint_final.pth"]
            .iter()
            .map(|suffix| reference.path().join("models").join(format!("{name}{suffix}")))
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty(), "{name}: no weights");
        // The same weights without the bf16 rounding: the baseline bf16-RoPE logits must beat.
        let plain = bf16_rope.then(|| {
            let plain_cfg = Config {
                pos_embed_rope_dtype: RopeDtype::Fp32,
                ..cfg.clone()
            };
            let network = Primus::load(&plain_cfg, num_classes, &interaction, &files[0], &Device::Cpu)
                .unwrap_or_else(|e| panic!("{}: {e}", files[0].display()));
            network.forward(&xs).expect("forward (f32 rope)")
        });
        for file in &files {
            let network = Primus::load(&cfg, num_classes, &interaction, file, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let logits = network.forward(&xs).expect("forward");
            let label = format!(
                "{name} ({}) input {:?} logits",
                file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default(),
                xs.dims()
            );
            match &plain {
                None => {
                    let _ = assert_tensor_close(&label, &logits, io.get("logits"), TOLERANCE);
                }
                Some(plain) => {
                    let case = BF16_ROPE_CRITERION.case(
                        &tensor_error_profile(&label, &logits, io.get("logits")),
                        &tensor_error_profile(&label, plain, io.get("logits")),
                    );
                    if let Err(why) = BF16_ROPE_CRITERION.judge(&case) {
                        failures.push(format!("{label}: {why}"));
                    }
                    rows.push((label, case));
                }
            }
            checked += 1;
        }
    }
    if !rows.is_empty() {
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(4);
        eprintln!("{}", BF16_ROPE_CRITERION.header(width));
        for (label, case) in &rows {
            eprintln!("{}", BF16_ROPE_CRITERION.row(label, width, case));
        }
    }
    assert!(
        failures.is_empty(),
        "{} decoder outputs fail the bf16-RoPE criterion:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{checked} decoder weight files checked");
}

#[test]
fn core_op_and_its_gradients_match_in_f64() {
    let reference = reference_or_skip!();
    let data = reference.safetensors("models/ms_deform_attn_core.safetensors");
    let (shapes, starts) = levels(data.get("spatial_shapes"));
    let stored_starts: Vec<usize> = data.get("level_start_index").iter().map(|&v| v as usize).collect();
    assert_eq!(starts, stored_starts, "level_start_index is the running sum of H·W");
    let var = |name: &str| Var::from_tensor(&tensor(&data, name, DType::F64)).expect("var");
    let (value, locations, weights) = (var("value"), var("sampling_locations"), var("attention_weights"));
    let out = ms_deform_attn(&value, &shapes, &starts, &locations, &weights).expect("forward");
    let _ = assert_tensor_close("output", &out, data.get("output"), F64_TOLERANCE);
    let upstream = tensor(&data, "grad_output", DType::F64);
    let grads = (out * upstream)
        .and_then(|t| t.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    for (var, name) in [
        (&value, "grad_value"),
        (&locations, "grad_sampling_locations"),
        (&weights, "grad_attention_weights"),
    ] {
        let grad = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no {name}"));
        let _ = assert_tensor_close(name, grad, data.get(name), F64_TOLERANCE);
    }
}

#[test]
fn core_op_in_f32_agrees_with_the_f64_reference() {
    let reference = reference_or_skip!();
    let data = reference.safetensors("models/ms_deform_attn_core.safetensors");
    let (shapes, starts) = levels(data.get("spatial_shapes"));
    let f32_tensor = |name: &str| tensor(&data, name, DType::F32);
    let out = ms_deform_attn(
        &f32_tensor("value"),
        &shapes,
        &starts,
        &f32_tensor("sampling_locations"),
        &f32_tensor("attention_weights"),
    )
    .expect("forward");
    let _ = assert_tensor_close("f32 output", &out, data.get("output"), 1e-5);
}

#[test]
fn deformable_attention_module_matches() {
    let reference = reference_or_skip!();
    let manifest = reference.json("models/manifest.json");
    let config = &manifest["deform"]["module"];
    let get = |key: &str| config[key].as_f64().unwrap_or_else(|| panic!("deform.module.{key}"));
    let io = reference.safetensors("models/ms_deform_attn_module.io.safetensors");
    let state = StateDict::read(&reference.file("models/ms_deform_attn_module.weights.safetensors")).expect("weights");
    let module = state
        .load_strict("MSDeformAttn", DType::F32, &Device::Cpu, |vb| {
            MSDeformAttn::new(
                get("d_model") as usize,
                get("n_levels") as usize,
                get("n_heads") as usize,
                get("n_points") as usize,
                get("ratio"),
                vb,
            )
        })
        .expect("strict load");
    let (shapes, starts) = levels(io.get("spatial_shapes"));
    let out = module
        .forward(
            &tensor(&io, "query", DType::F32),
            &tensor(&io, "reference_points", DType::F32),
            &tensor(&io, "input_flatten", DType::F32),
            &shapes,
            &starts,
        )
        .expect("forward");
    let _ = assert_tensor_close("MSDeformAttn output", &out, io.get("output"), TOLERANCE);
}
