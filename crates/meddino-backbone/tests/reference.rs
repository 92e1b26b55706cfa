//! Conformance with the DINOv3 code vendored in MedDINOv3 (see `shared/reference/README.md`,
//! `models/`): every backbone config of `manifest.json`, loaded through every weights format
//! present, on every input of its io file — `forward_features`, every block's patches / cls /
//! storage tokens, the unnormed last block, and the RoPE tables. Names, configs and shapes
//! come from the files.
//!
//! Configs with f32 RoPE are held to the README's 1e-4 at the maximum. Configs with bf16 RoPE
//! (MedDINOv3's: the reference rounds the tables and every q and k to bf16) are judged by
//! `bf16_emulation_is_what_matches` against the same weights with f32 RoPE, by
//! [`BF16_ROPE_CRITERION`] (median error, margin over the f32-RoPE variant, ratio of the
//! maxima), which holds for any seed and input size; `--nocapture` prints the table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use meddino_backbone::candle::{Device, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer, IntermediateOptions, LayerSelection, RopeDtype};
use meddino_testutil::ndarray::ArrayD;
use meddino_testutil::{
    reference_or_skip, tensor_error_profile, tensor_to_array, ReferenceDir, TensorFile, BF16_ROPE_CRITERION,
};

/// Float32 forward outputs agree to about 1e-4 relative (README).
const TOLERANCE: f64 = 1e-4;
/// RoPE tables in float32 are computed with correctly rounded sin/cos here and torch's
/// vectorised ones there: at most an ulp or so apart.
const ROPE_FP32_TOLERANCE: f64 = 1e-6;

/// Worst relative error per output name, over everything compared.
#[derive(Default)]
struct Worst(BTreeMap<String, f64>);

impl Worst {
    fn check(&mut self, label: &str, output: &str, ours: &Tensor, expected: &ArrayD<f64>, tolerance: f64) {
        let report = rel_err(label, ours, expected);
        assert!(
            report <= tolerance,
            "{label}: rel err {report:.3e} exceeds {tolerance:.0e}"
        );
        let entry = self.0.entry(output.to_string()).or_insert(0.0);
        *entry = entry.max(report);
    }
}

fn rel_err(label: &str, ours: &Tensor, expected: &ArrayD<f64>) -> f64 {
    let ours = tensor_to_array(ours);
    let report = meddino_testutil::compare(ours.view(), expected.view()).unwrap_or_else(|e| panic!("{label}: {e}"));
    if report.rel_err() > TOLERANCE {
        eprintln!("{label}: {report}");
    }
    report.rel_err()
}

fn weight_files(reference: &ReferenceDir, config: &str) -> Vec<PathBuf> {
    [".weights.safetensors", ".pth", ".teacher.pth"]
        .iter()
        .map(|suffix| reference.path().join("models").join(format!("{config}{suffix}")))
        .filter(|p| p.is_file())
        .collect()
}

fn input(io: &TensorFile, key: &str) -> Tensor {
    let array = io.get(&format!("{key}.input")).mapv(|v| v as f32);
    let shape = array.shape().to_vec();
    Tensor::from_vec(array.into_raw_vec_and_offset().0, shape, &Device::Cpu).expect("input tensor")
}

/// Every compared output of `model` on `xs`, by name as in the io file: the
/// `forward_features` dict, each block's normed patches / cls / storage tokens, and the
/// unnormed last block.
fn outputs(model: &DinoVisionTransformer, xs: &Tensor, label: &str) -> Vec<(String, Tensor)> {
    let features = model
        .forward_features(xs)
        .unwrap_or_else(|e| panic!("{label}: forward: {e}"));
    let mut out = vec![
        ("x_norm_clstoken".to_string(), features.x_norm_clstoken),
        ("x_storage_tokens".to_string(), features.x_storage_tokens),
        ("x_norm_patchtokens".to_string(), features.x_norm_patchtokens),
        ("x_prenorm".to_string(), features.x_prenorm),
    ];
    let all = LayerSelection::Indices((0..model.n_blocks()).collect());
    let layers = model
        .intermediate_layers(xs, &all, &IntermediateOptions::new().with_reshape(true))
        .unwrap_or_else(|e| panic!("{label}: intermediate layers: {e}"));
    for (i, layer) in layers.into_iter().enumerate() {
        out.push((format!("layer{i}.patches"), layer.patches));
        out.push((format!("layer{i}.cls"), layer.cls));
        out.push((format!("layer{i}.extra"), layer.storage));
    }
    let unnormed = model
        .intermediate_layers(
            xs,
            &LayerSelection::Last(1),
            &IntermediateOptions::new().with_norm(false),
        )
        .unwrap_or_else(|e| panic!("{label}: last block: {e}"));
    let last = unnormed.into_iter().next().expect("one block").patches;
    out.push(("last_block_unnormed".to_string(), last));
    out
}

/// `layer3.cls` → `layer*.cls`, so the worst-error summary groups the blocks.
fn output_group(output: &str) -> String {
    match output.strip_prefix("layer").and_then(|rest| rest.split_once('.')) {
        Some((_, part)) => format!("layer*.{part}"),
        None => output.to_string(),
    }
}

/// f32-RoPE configs: every output to [`TOLERANCE`]. Every config: the RoPE tables (exact in
/// reduced precision, [`ROPE_FP32_TOLERANCE`] in f32). The outputs of bf16-RoPE configs are
/// judged by `bf16_emulation_is_what_matches`.
fn check_model(model: &DinoVisionTransformer, name: &str, io: &TensorFile, inputs: &[String], worst: &mut Worst) {
    let exact_rope = model.config().pos_embed_rope_dtype != RopeDtype::Fp32;
    let precision = if exact_rope { "bf16 rope" } else { "f32 rope" };
    for key in inputs {
        let label = |output: &str| format!("{name} input {key}: {output}");
        let xs = input(io, key);
        if !exact_rope {
            for (output, ours) in outputs(model, &xs, &label("")) {
                let expected = io.get(&format!("{key}.{output}"));
                worst.check(
                    &label(&output),
                    &format!("{} ({precision})", output_group(&output)),
                    &ours,
                    expected,
                    TOLERANCE,
                );
            }
        }
        let (_, _, h, w) = xs.dims4().expect("4-D input");
        let p = model.patch_size();
        let tables = model
            .rope_embed()
            .tables(h / p, w / p, &Device::Cpu)
            .expect("rope tables");
        let rope_tolerance = if exact_rope { 0.0 } else { ROPE_FP32_TOLERANCE };
        for (output, ours) in [("rope_sin", &tables.sin), ("rope_cos", &tables.cos)] {
            worst.check(
                &label(output),
                &format!("{output} ({precision})"),
                ours,
                io.get(&format!("{key}.{output}")),
                rope_tolerance,
            );
        }
    }
}

#[test]
fn every_backbone_matches_the_reference() {
    let reference = reference_or_skip!();
    let manifest = reference.json("models/manifest.json");
    let backbones = manifest["backbones"]
        .as_object()
        .expect("manifest.json: \"backbones\" is an object");
    let mut worst = Worst::default();
    let mut loaded = 0;
    for (name, entry) in backbones {
        let cfg: Config =
            serde_json::from_value(entry["config"].clone()).unwrap_or_else(|e| panic!("{name}: config: {e}"));
        let io = reference.safetensors(format!("models/{name}.io.safetensors"));
        let inputs: Vec<String> = entry["inputs"].as_object().expect("inputs").keys().cloned().collect();
        let files = weight_files(&reference, name);
        assert!(!files.is_empty(), "{name}: no weights file in models/");
        for file in files {
            let model = DinoVisionTransformer::load(&cfg, &file, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            let label = format!(
                "{name} ({})",
                file.file_name().map(|f| f.to_string_lossy()).unwrap_or_default()
            );
            check_model(&model, &label, &io, &inputs, &mut worst);
            loaded += 1;
        }
    }
    for (output, err) in &worst.0 {
        eprintln!("worst relative error {output:<22} {err:.3e}");
    }
    eprintln!("{loaded} weight files checked");
}

#[test]
fn segmentation_checkpoints_carry_a_loadable_backbone() {
    let reference = reference_or_skip!();
    let manifest = reference.json("models/manifest.json");
    let Some(decoders) = manifest["decoders"].as_object() else {
        eprintln!("skipping: manifest.json has no decoders");
        return;
    };
    for (decoder, entry) in decoders {
        let backbone = entry["backbone"].as_str().expect("decoder backbone name");
        let cfg: Config = serde_json::from_value(manifest["backbones"][backbone]["config"].clone()).expect("config");
        for suffix in [".weights.safetensors", ".checkpoint_final.pth"] {
            let path = reference.path().join("models").join(format!("{decoder}{suffix}"));
            if !path.is_file() {
                continue;
            }
            let model = DinoVisionTransformer::load(&cfg, &path, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
            let xs = Tensor::zeros(
                (1, cfg.in_chans, 32, 48),
                meddino_backbone::candle::DType::F32,
                &Device::Cpu,
            )
            .expect("x");
            let features = model.forward_features(&xs).expect("forward");
            assert_eq!(features.x_norm_patchtokens.dims(), &[1, 6, cfg.embed_dim]);
        }
    }
}

/// Every output of every bf16-RoPE config, through every weights file, on every input:
/// [`BF16_ROPE_CRITERION`] against the same weights with f32 RoPE, so the test tells the
/// emulation from its absence (or a wrong one) whatever the seed and input size.
#[test]
fn bf16_emulation_is_what_matches() {
    let reference = reference_or_skip!();
    let manifest = reference.json("models/manifest.json");
    let backbones = manifest["backbones"].as_object().expect("backbones");
    let criterion = BF16_ROPE_CRITERION;
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (name, entry) in backbones {
        let cfg: Config =
            serde_json::from_value(entry["config"].clone()).unwrap_or_else(|e| panic!("{name}: config: {e}"));
        if cfg.pos_embed_rope_dtype == RopeDtype::Fp32 {
            continue;
        }
        let files = weight_files(&reference, name);
        assert!(!files.is_empty(), "{name}: no weights file in models/");
        let plain_cfg = Config {
            pos_embed_rope_dtype: RopeDtype::Fp32,
            ..cfg.clone()
        };
        let plain = DinoVisionTransformer::load(&plain_cfg, &files[0], &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
        let emulated: Vec<(String, DinoVisionTransformer)> = files
            .iter()
            .map(|file| {
                let model = DinoVisionTransformer::load(&cfg, file, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
                (
                    file.file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    model,
                )
            })
            .collect();
        let io = reference.safetensors(format!("models/{name}.io.safetensors"));
        for key in entry["inputs"].as_object().expect("inputs").keys() {
            let xs = input(&io, key);
            let dims = xs.dims().to_vec();
            let plain_out = outputs(&plain, &xs, &format!("{name} input {key} (f32 rope)"));
            for (file, model) in &emulated {
                let label = format!("{name} ({file}) input {key} {dims:?}");
                for ((output, ours), (_, theirs)) in outputs(model, &xs, &label).iter().zip(&plain_out) {
                    let expected = io.get(&format!("{key}.{output}"));
                    let case_label = format!("{label} {output}");
                    let case = criterion.case(
                        &tensor_error_profile(&case_label, ours, expected),
                        &tensor_error_profile(&case_label, theirs, expected),
                    );
                    if let Err(why) = criterion.judge(&case) {
                        failures.push(format!("{case_label}: {why}"));
                    }
                    rows.push((case_label, case));
                }
            }
        }
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(4);
    eprintln!("{}", criterion.header(width));
    for (label, case) in &rows {
        eprintln!("{}", criterion.row(label, width, case));
    }
    eprintln!("{} bf16-RoPE outputs judged", rows.len());
    assert!(
        failures.is_empty(),
        "{} outputs fail the bf16-RoPE criterion:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
