//! Seconds per training step (forward + backward) of each baseline network on the CPU, at
//! the reference phantoms' 2-D patch (80×80, batch 2): `cargo run -p meddino-baselines
//! --example baseline_step` (the workspace's dev profile optimises).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use meddino_baselines::dino_unet::{DinoUNet, DinoUNetConfig};
use meddino_baselines::segformer::{SegFormer, SegFormerConfig};
use meddino_baselines::unet::{PlainConvUNet, PlainConvUNetConfig};
use meddino_decoder::backbone::Config;
use meddino_decoder::SegmentationNetwork;

/// nnU-Net's 2-D architecture for the phantoms (5 stages, 32…512 features).
fn plain_conv_unet_kwargs() -> serde_json::Value {
    serde_json::json!({
        "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 512],
        "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2], "conv_bias": true,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d", "norm_op_kwargs": {"eps": 1e-5, "affine": true},
        "dropout_op": null, "dropout_op_kwargs": null,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": true}
    })
}

/// Trained parameters of the network whose variables are in `varmap`.
fn trained_parameters(varmap: &VarMap, network: &dyn SegmentationNetwork) -> usize {
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    data.iter()
        .filter(|(name, _)| network.is_trainable(name))
        .map(|(_, var)| var.elem_count())
        .sum()
}

fn time_steps(
    label: &str,
    (varmap, network): (&VarMap, &dyn SegmentationNetwork),
    steps: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let xs = Tensor::randn(0f32, 1.0, (2, 1, 80, 80), &Device::Cpu)?;
    let step = || -> Result<(), Box<dyn std::error::Error>> {
        let loss = network.forward_t(&xs, true)?.sqr()?.mean_all()?;
        let _ = loss.backward()?;
        Ok(())
    };
    step()?;
    let started = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    println!(
        "{label:<16} {:>12} {:>10.3}",
        trained_parameters(varmap, network),
        started.elapsed().as_secs_f64() / steps as f64
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    println!("{:<16} {:>12} {:>10}", "network", "trained", "s/step");
    let kwargs = plain_conv_unet_kwargs();
    let varmap = VarMap::new();
    let unet = PlainConvUNet::new(
        &PlainConvUNetConfig::from_arch_kwargs(&kwargs, 1, 4)?,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    time_steps("PlainConvUNet", (&varmap, &unet), 3)?;
    let varmap = VarMap::new();
    let segformer = SegFormer::new(
        &SegFormerConfig::mit_b2(4),
        1,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    time_steps("SegFormer-B2", (&varmap, &segformer), 3)?;
    let varmap = VarMap::new();
    let dino_unet = DinoUNet::new(
        &DinoUNetConfig::from_arch_kwargs(Config::vit_micro().with_hub_settings(), &kwargs, 1, 4)?,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    time_steps("DinoUNet/micro", (&varmap, &dino_unet), 3)?;
    Ok(())
}
