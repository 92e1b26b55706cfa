//! Converts a backbone checkpoint in any supported layout (MedDINOv3 `teacher` training
//! checkpoint, DINOv3 hub `.pth`, nnU-Net `checkpoint_final.pth`, safetensors) into a flat
//! safetensors state dict with the reference key names.
//!
//! ```text
//! cargo run --release -p meddino-backbone --example convert -- IN OUT.safetensors [--arch PRESET | --config FILE] [--backbone-only]
//! ```
//!
//! With `--arch`/`--config` the backbone is first loaded strictly, so a file that does not
//! fit the architecture is refused (naming every bad key) before anything is written.
//! `--backbone-only` keeps only the encoder of a segmentation network (`dino_encoder.*`,
//! prefix removed).

use std::path::PathBuf;

use meddino_backbone::candle::Device;
use meddino_backbone::{Config, DinoVisionTransformer, StateDict};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let values: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !matches!(args[i - 1].as_str(), "--arch" | "--config")))
        .map(|(_, a)| a)
        .collect();
    let [input, output] = values[..] else {
        return Err("usage: convert IN OUT.safetensors [--arch PRESET | --config FILE] [--backbone-only]".into());
    };
    let state = StateDict::read(&PathBuf::from(input))?;
    let config = match (flag("--arch"), flag("--config")) {
        (Some(arch), _) => Some(Config::preset(&arch)?),
        (None, Some(file)) => Some(serde_json::from_str::<Config>(&std::fs::read_to_string(&file)?)?),
        (None, None) => None,
    };
    if let Some(cfg) = &config {
        let _ = DinoVisionTransformer::from_state_dict(cfg, &state, &Device::Cpu)?;
    }
    let state = if args.iter().any(|a| a == "--backbone-only") {
        state.backbone()
    } else {
        state
    };
    state.save_safetensors(&PathBuf::from(output))?;
    println!(
        "{input} ({:?}, {} tensors) -> {output}",
        state.format(),
        state.tensors().len()
    );
    Ok(())
}
