//! `meddino features`: both PNGs from a checkpoint and a slice, and clear refusals.

use candle_nn::{VarBuilder, VarMap};
use meddino::backbone::candle::{DType, Device};
use meddino::backbone::{Config, DinoVisionTransformer, StateDict};

use crate::util::Dir;

/// Writes a tiny random backbone (`tiny.safetensors`, `tiny.json`) and a 40×56 HU slice
/// (`slice.npy`) into `dir`.
fn setup(dir: &Dir) {
    let cfg = Config {
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        n_storage_tokens: 4,
        layerscale_init: Some(1e-5),
        ..Config::default()
    };
    let varmap = VarMap::new();
    let model =
        DinoVisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("build");
    StateDict::from_varmap("tiny", &varmap, model.buffers().expect("buffers"))
        .save_safetensors(&dir.path().join("tiny.safetensors"))
        .expect("save");
    std::fs::write(dir.path().join("tiny.json"), serde_json::to_string(&cfg).expect("json")).expect("config");
    let slice = ndarray::Array2::from_shape_fn((40, 56), |(y, x)| ((x * 37 + y * 11) % 2000) as f32 - 1000.0);
    ndarray_npy::write_npy(dir.path().join("slice.npy"), &slice).expect("npy");
}

#[test]
fn writes_pca_and_similarity_maps() {
    let dir = Dir::new("features");
    setup(&dir);
    let args = [
        "features",
        "--checkpoint",
        "tiny.safetensors",
        "--config",
        "tiny.json",
        "--image",
        "slice.npy",
        "--size",
        "64",
    ];
    dir.meddino(&[&args[..], &["--point", "10,20", "--out", "out"]].concat())
        .assert_code(0);
    for (name, size) in [("pca.png", (128, 64)), ("similarity.png", (128, 64))] {
        let image = image::open(dir.path().join("out").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((image.width(), image.height()), size, "{name}");
    }
    // Without --point only the PCA map is written.
    dir.meddino(&[&args[..], &["--out", "pca-only"]].concat())
        .assert_code(0);
    assert!(dir.path().join("pca-only/pca.png").is_file());
    assert!(!dir.path().join("pca-only/similarity.png").exists());
}

#[test]
fn refuses_what_it_cannot_do() {
    let dir = Dir::new("features-errors");
    setup(&dir);
    let base = [
        "features",
        "--checkpoint",
        "tiny.safetensors",
        "--image",
        "slice.npy",
        "--out",
        "out",
    ];
    let run = |extra: &[&str]| dir.meddino(&[&base[..], extra].concat());
    // No preset has this architecture: the user is told to give it.
    assert!(run(&[]).assert_code(1).stderr().contains("pass --arch or --config"));
    let with_config = ["--config", "tiny.json"];
    assert!(run(&[&with_config[..], &["--size", "50"]].concat())
        .assert_code(1)
        .stderr()
        .contains("multiple of the patch size 16"));
    assert!(run(&[&with_config[..], &["--point", "56,0"]].concat())
        .assert_code(1)
        .stderr()
        .contains("outside the 56×40 image"));
    assert!(run(&["--arch", "vit_small"])
        .assert_code(1)
        .stderr()
        .contains("tiny.safetensors"));
    assert!(run(&["--arch", "vit_enormous"])
        .assert_code(1)
        .stderr()
        .contains("unknown preset"));
    assert!(run(&[&with_config[..], &["--point", "3"]].concat())
        .assert_code(2)
        .stderr()
        .contains("X,Y"));
    assert!(!dir.path().join("out").exists(), "nothing written on failure");
}

/// `hf:ORG/NAME` from a Hugging Face cache laid out as `huggingface_hub` lays it out, holding a
/// small model that transformers wrote (the backbone crate's fixture), offline.
#[test]
fn reads_hub_models_from_the_cache() {
    let dir = Dir::new("features-hub");
    setup(&dir);
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/meddino-backbone/tests/data/hf/mlp_registers");
    let commit = "5f3c0a1b2d4e6f8091a2b3c4d5e6f708192a3b4c";
    let repo = dir.path().join("hub/models--facebook--dinov3-vits16-pretrain-lvd1689m");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).expect("snapshot");
    std::fs::create_dir_all(repo.join("refs")).expect("refs");
    std::fs::write(repo.join("refs/main"), commit).expect("ref");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), snapshot.join(file)).expect("copy");
    }
    let cache = dir.path().join("hub");
    let env = [("HF_HUB_CACHE", cache.as_os_str()), ("HF_HUB_OFFLINE", "1".as_ref())];
    let run = |model: &str| {
        dir.meddino_env(
            &[
                "features",
                "--checkpoint",
                model,
                "--image",
                "slice.npy",
                "--size",
                "64",
                "--out",
                "out",
            ],
            &env,
        )
    };
    run("hf:facebook/dinov3-vits16-pretrain-lvd1689m").assert_code(0);
    let image = image::open(dir.path().join("out/pca.png")).expect("pca.png");
    assert_eq!((image.width(), image.height()), (128, 64));
    // Not cached and offline: the model and the cache are named.
    let missing = run("hf:facebook/dinov3-vitb16-pretrain-lvd1689m");
    let stderr = missing.assert_code(1).stderr();
    assert!(
        stderr.contains("facebook/dinov3-vitb16-pretrain-lvd1689m") && stderr.contains(&cache.display().to_string()),
        "{stderr}"
    );
}
