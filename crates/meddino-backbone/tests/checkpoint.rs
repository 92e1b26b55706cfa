//! Strict loading: a state dict round-trips, and every kind of bad checkpoint is refused
//! with an error naming the key or the file.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_nn::{VarBuilder, VarMap};
use meddino_backbone::candle::{DType, Device, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer, StateDict};

fn tiny() -> Config {
    Config {
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        qkv_bias: true,
        mask_k_bias: true,
        n_storage_tokens: 4,
        layerscale_init: Some(1e-5),
        ..Config::default()
    }
}

/// A randomly initialised model and its full state dict (parameters and buffers).
fn model_and_state() -> (DinoVisionTransformer, HashMap<String, Tensor>) {
    let varmap = VarMap::new();
    let model =
        DinoVisionTransformer::new(&tiny(), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("build");
    let state = StateDict::from_varmap("memory", &varmap, model.buffers().expect("buffers"))
        .tensors()
        .clone();
    (model, state)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meddino-backbone-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

fn load_error(state: HashMap<String, Tensor>) -> String {
    let state = StateDict::from_tensors("edited.safetensors", state);
    DinoVisionTransformer::from_state_dict(&tiny(), &state, &Device::Cpu)
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn state_dict_round_trips_through_safetensors() {
    let (_, state) = model_and_state();
    let path = scratch("round-trip").join("tiny.safetensors");
    // Both models hold plain tensors (not the variables), so both run the same kernels.
    let state: HashMap<String, Tensor> = state.into_iter().map(|(k, v)| (k, v.detach())).collect();
    let state = StateDict::from_tensors("memory", state);
    state.save_safetensors(&path).expect("save");
    let model = DinoVisionTransformer::from_state_dict(&tiny(), &state, &Device::Cpu).expect("in memory");
    let loaded = DinoVisionTransformer::load(&tiny(), &path, &Device::Cpu).expect("strict load");
    let xs = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).expect("input");
    let a = model.forward_features(&xs).expect("a").x_prenorm;
    let b = loaded.forward_features(&xs).expect("b").x_prenorm;
    let diff: f32 = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar())
        .expect("diff");
    assert_eq!(diff, 0.0);
}

#[test]
fn missing_mis_shaped_and_unexpected_tensors_are_all_named() {
    let (_, mut state) = model_and_state();
    let _ = state.remove("blocks.1.ls2.gamma");
    let _ = state.remove("rope_embed.periods");
    let _ = state.insert(
        "norm.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).expect("t"),
    );
    let _ = state.insert(
        "head.weight".into(),
        Tensor::zeros((2, 2), DType::F32, &Device::Cpu).expect("t"),
    );
    let error = load_error(state);
    for expected in [
        "edited.safetensors",
        "missing: blocks.1.ls2.gamma [32]",
        "missing: rope_embed.periods [4]",
        "wrong shape: norm.weight is [3], expected [32]",
        "unexpected: head.weight [2, 2]",
    ] {
        assert!(error.contains(expected), "{expected:?} not in:\n{error}");
    }
}

#[test]
fn another_architecture_is_refused() {
    let (_, state) = model_and_state();
    let wider = Config {
        embed_dim: 64,
        num_heads: 4,
        ..tiny()
    };
    let error = DinoVisionTransformer::from_state_dict(
        &wider,
        &StateDict::from_tensors("tiny.safetensors", state),
        &Device::Cpu,
    )
    .expect_err("different width");
    let text = error.to_string();
    assert!(
        text.contains("wrong shape: blocks.0.attn.proj.weight is [32, 32], expected [64, 64]"),
        "{text}"
    );
    assert!(text.contains("... and 12 more"), "long lists are cut short: {text}");
    let meddino_backbone::Error::StateDict { problems, .. } = error else {
        panic!("not a state-dict error: {text}")
    };
    assert_eq!(problems.len(), 37);
    assert!(
        problems
            .iter()
            .any(|p| p == "wrong shape: cls_token is [1, 1, 32], expected [1, 1, 64]"),
        "{problems:?}"
    );
}

#[test]
fn files_that_are_not_checkpoints_are_named() {
    let dir = scratch("garbage");
    for name in ["garbage.pth", "garbage.safetensors", "missing.pth"] {
        let path = dir.join(name);
        if name != "missing.pth" {
            std::fs::write(&path, b"this is not a checkpoint").expect("write");
        }
        let error = StateDict::read(&path).expect_err("not a checkpoint").to_string();
        assert!(error.contains(name), "{error}");
    }
}

#[test]
fn reference_checkpoint_formats_load_the_same_weights() {
    let reference = meddino_testutil::reference_or_skip!();
    let models = reference.path().join("models");
    let teacher = models.join("meddino_tiny.teacher.pth");
    let flat = models.join("meddino_tiny.weights.safetensors");
    if !teacher.is_file() || !flat.is_file() {
        eprintln!("skipping: meddino_tiny teacher and safetensors weights not both present");
        return;
    }
    let teacher = StateDict::read(&teacher).expect("teacher checkpoint");
    assert_eq!(teacher.format(), meddino_backbone::CheckpointFormat::Teacher);
    assert!(!teacher
        .tensors()
        .keys()
        .any(|k| k.contains("dino_head") || k.contains("ibot") || k.contains("backbone.")));
    let flat = StateDict::read(&flat).expect("safetensors");
    let mut a: Vec<&String> = teacher.tensors().keys().collect();
    let mut b: Vec<&String> = flat.tensors().keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "the teacher checkpoint holds exactly the flat state dict's keys");
}

#[test]
fn presets_are_inferred_only_when_unambiguous() {
    // A real-sized preset built lazily would be slow; the structure comes from shapes alone,
    // so zero tensors of the right shapes stand in for weights.
    for name in ["meddinov3_vitb16", "vits16plus", "vit_small"] {
        let cfg = Config::preset(name).expect("preset");
        let state = StateDict::from_tensors(format!("{name}.safetensors"), zero_state(&cfg));
        assert_eq!(Config::infer(&state).expect("unambiguous"), cfg, "{name}");
    }
    let (_, tiny_state) = model_and_state();
    let error = Config::infer(&StateDict::from_tensors("tiny.safetensors", tiny_state))
        .expect_err("no preset")
        .to_string();
    assert!(
        error.contains("tiny.safetensors") && error.contains("no preset"),
        "{error}"
    );
}

/// Zero tensors of every shape a config's model asks for (recorded through a VarMap).
fn zero_state(cfg: &Config) -> HashMap<String, Tensor> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DinoVisionTransformer::new(cfg, vb).expect("build");
    let state = StateDict::from_varmap("memory", &varmap, model.buffers().expect("buffers"))
        .tensors()
        .clone();
    state
}
