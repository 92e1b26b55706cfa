//! Uses `meddino-backbone` the way a downstream crate does: loads a checkpoint through the
//! public loader and prints the patch features of one image.
//!
//! ```text
//! cargo run --manifest-path examples/downstream/Cargo.toml [CHECKPOINT]
//! ```
//!
//! With a checkpoint (MedDINOv3 `.pth`, DINOv3 hub `.pth`, nnU-Net checkpoint, safetensors,
//! a Hugging Face transformers folder or `hf:ORG/NAME`) the config is the one it declares or
//! the preset its shapes fit. Without one, a tiny randomly
//! initialised ViT (ViT-S's layout at a fraction of its size) is written as safetensors to a
//! temporary folder and loaded back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use meddino_backbone::candle::{DType, Device, Tensor};
use meddino_backbone::candle_nn::{VarBuilder, VarMap};
use meddino_backbone::{Config, DinoVisionTransformer, StateDict};

/// A ViT-S/16-like configuration, shrunk: 64 channels, 2 blocks, 4 heads.
fn tiny_config() -> Config {
    Config {
        embed_dim: 64,
        depth: 2,
        num_heads: 4,
        ..Config::vit_small()
    }
}

/// Writes a randomly initialised `cfg` model as safetensors at `path`.
fn write_random_checkpoint(cfg: &Config, path: &Path) -> meddino_backbone::Result<()> {
    let varmap = VarMap::new();
    let model = DinoVisionTransformer::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    StateDict::from_varmap(path, &varmap, model.buffers()?).save_safetensors(path)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let (cfg, path, _folder) = match std::env::args_os().nth(1) {
        Some(path) => {
            let path = PathBuf::from(path);
            let cfg = Config::infer(&StateDict::read(&path)?.backbone())?;
            (cfg, path, None)
        }
        None => {
            let folder = std::env::temp_dir().join(format!("meddino-downstream-{}", std::process::id()));
            std::fs::create_dir_all(&folder)?;
            let cfg = tiny_config();
            let path = folder.join("tiny_vit.safetensors");
            write_random_checkpoint(&cfg, &path)?;
            println!("wrote a random tiny ViT to {}", path.display());
            (cfg, path, Some(TempFolder(folder)))
        }
    };
    let model = DinoVisionTransformer::load(&cfg, &path, &device)?;
    let side = 4 * cfg.patch_size;
    let image = Tensor::randn(0f32, 1.0, (1, cfg.in_chans, side, side), &device)?;
    let features = model.forward_features(&image)?;
    let patches = &features.x_norm_patchtokens;
    let first: Vec<f32> = patches.get(0)?.get(0)?.narrow(0, 0, 4)?.to_vec1()?;
    println!("loaded {} (embed_dim {}, depth {})", path.display(), cfg.embed_dim, cfg.depth);
    println!("patch features {:?}; first token starts {first:?}", patches.dims());
    Ok(())
}

/// Removes the temporary folder when dropped.
struct TempFolder(PathBuf);

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
