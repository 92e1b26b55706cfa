//! Hugging Face transformers' DINOv3 layout: models that transformers itself wrote
//! (`scripts/hf/make_fixtures.py`, committed under `tests/data/hf`) load through
//! `StateDict::read`, with their `config.json`, and give transformers' outputs; `hf:` names
//! resolve from a hub cache laid out as `huggingface_hub` lays it out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meddino_backbone::candle::{Device, Tensor};
use meddino_backbone::hf::{HubCache, HubModel};
use meddino_backbone::{CheckpointFormat, Config, DinoVisionTransformer, RopeDtype, StateDict};
use meddino_testutil::assert_tensor_close;
use meddino_testutil::compare::tensor_to_array;

/// transformers computes in float32; this covers its and our different summation orders.
const TOLERANCE: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf")
}

/// The case folders `cases.json` lists.
fn cases() -> Vec<(String, PathBuf)> {
    let manifest = fixtures().join("cases.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("cases.json");
    let cases: Vec<(String, PathBuf)> = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let name = c.as_str().expect("case name").to_string();
            let folder = fixtures().join(&name);
            (name, folder)
        })
        .collect();
    assert!(!cases.is_empty(), "{} lists no cases", manifest.display());
    cases
}

fn io(folder: &Path) -> HashMap<String, Tensor> {
    meddino_backbone::candle::safetensors::load(folder.join("io.safetensors"), &Device::Cpu).expect("io.safetensors")
}

/// `last_hidden_state` as transformers builds it: every token after the final norm.
fn last_hidden_state(model: &DinoVisionTransformer, pixels: &Tensor) -> (Tensor, Tensor) {
    let features = model.forward_features(pixels).expect("forward");
    let cls = features.x_norm_clstoken.unsqueeze(1).expect("cls");
    let tokens = Tensor::cat(&[&cls, &features.x_storage_tokens, &features.x_norm_patchtokens], 1).expect("cat");
    (tokens, features.x_norm_clstoken)
}

#[test]
fn transformers_models_give_transformers_outputs() {
    for (name, folder) in cases() {
        // The folder, its weights file and its config name the same model.
        for path in [folder.clone(), folder.join("model.safetensors")] {
            let state = StateDict::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(state.format(), CheckpointFormat::HuggingFace, "{name}");
            let cfg = Config::infer(&state).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                cfg.pos_embed_rope_dtype,
                RopeDtype::Fp32,
                "{name}: transformers' RoPE precision"
            );
            let model = DinoVisionTransformer::from_state_dict(&cfg, &state, &Device::Cpu)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let io = io(&folder);
            let (tokens, pooled) = last_hidden_state(&model, &io["pixel_values"]);
            let _ = assert_tensor_close(
                &format!("{name} last_hidden_state"),
                &tokens,
                &tensor_to_array(&io["last_hidden_state"]),
                TOLERANCE,
            );
            let _ = assert_tensor_close(
                &format!("{name} pooler_output"),
                &pooled,
                &tensor_to_array(&io["pooler_output"]),
                TOLERANCE,
            );
        }
    }
}

#[test]
fn shards_load_like_one_file() {
    let (name, folder) = cases().swap_remove(0);
    let whole =
        meddino_backbone::candle::safetensors::load(folder.join("model.safetensors"), &Device::Cpu).expect("weights");
    let dir = scratch(&format!("shards-{name}"));
    std::fs::copy(folder.join("config.json"), dir.join("config.json")).expect("config");
    // Two shards, split by name, and the index transformers writes beside them.
    let mut names: Vec<&String> = whole.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let shard: HashMap<String, Tensor> = part.iter().map(|n| ((*n).clone(), whole[*n].clone())).collect();
        meddino_backbone::candle::safetensors::save(&shard, dir.join(file)).expect("shard");
        for n in part {
            let _ = weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).expect("index");
    let sharded = StateDict::read(&dir).expect("sharded folder");
    let single = StateDict::read(&folder).expect("single file");
    assert_eq!(sharded.declared_config(), single.declared_config());
    let mut keys: Vec<&String> = sharded.tensors().keys().collect();
    keys.sort();
    let mut expected: Vec<&String> = single.tensors().keys().collect();
    expected.sort();
    assert_eq!(keys, expected);
    // A missing shard is named.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).expect("remove");
    let error = StateDict::read(&dir).expect_err("missing shard").to_string();
    assert!(error.contains("model-00002-of-00002.safetensors"), "{error}");
}

#[test]
fn layouts_without_their_config_or_with_a_foreign_one_are_refused() {
    let (_, folder) = cases().swap_remove(0);
    let dir = scratch("no-config");
    std::fs::copy(folder.join("model.safetensors"), dir.join("model.safetensors")).expect("weights");
    let error = StateDict::read(&dir.join("model.safetensors"))
        .expect_err("no config")
        .to_string();
    assert!(error.contains("config.json"), "{error}");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "vit", "hidden_size": 32}"#).expect("config");
    let error = StateDict::read(&dir).expect_err("foreign config").to_string();
    assert!(error.contains("\"vit\"") && error.contains("config.json"), "{error}");
    // A config that contradicts the weights: the strict load names the tensors.
    let config = std::fs::read_to_string(folder.join("config.json")).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&config).expect("json");
    json["num_hidden_layers"] = serde_json::json!(1);
    std::fs::write(dir.join("config.json"), json.to_string()).expect("config");
    let state = StateDict::read(&dir).expect("reads");
    let cfg = Config::infer(&state).expect("declared");
    let error = DinoVisionTransformer::from_state_dict(&cfg, &state, &Device::Cpu)
        .expect_err("one block too few")
        .to_string();
    assert!(error.contains("unexpected: blocks.1."), "{error}");
}

#[test]
fn hub_names_resolve_from_the_cache() {
    let (_, folder) = cases().swap_remove(0);
    let cache = scratch("hub-cache");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join("models--facebook--dinov3-tiny");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs/main"), commit).expect("ref");
    std::fs::write(repo.join("refs/v1"), format!("{commit}\n")).expect("tag");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(folder.join(file), snapshot.join(file)).expect("copy");
    }
    let hub = HubCache::new(&cache).with_offline(true);
    for spec in [
        "hf:facebook/dinov3-tiny",
        "hf:facebook/dinov3-tiny@v1",
        &format!("hf:facebook/dinov3-tiny@{commit}"),
    ] {
        let model = HubModel::parse(spec).expect("hf:").expect("valid");
        assert_eq!(hub.resolve(&model).expect(spec), snapshot, "{spec}");
    }
    // Missing: the error names the model and the cache, and says why nothing was downloaded.
    for spec in ["hf:facebook/dinov3-other", "hf:facebook/dinov3-tiny@v2"] {
        let model = HubModel::parse(spec).expect("hf:").expect("valid");
        let error = hub.resolve(&model).expect_err(spec).to_string();
        assert!(
            error.contains(&model.repo)
                && error.contains(&cache.display().to_string())
                && error.contains("HF_HUB_OFFLINE"),
            "{error}"
        );
    }
    // An incomplete snapshot (weights not yet downloaded) is not used.
    std::fs::remove_file(snapshot.join("model.safetensors")).expect("remove");
    assert_eq!(
        hub.snapshot(&HubModel::parse("hf:facebook/dinov3-tiny").expect("hf:").expect("valid")),
        None
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meddino-backbone-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}
