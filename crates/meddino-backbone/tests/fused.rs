//! The fused CPU inference kernels against candle's composite ops: the same weights, once
//! as variables (which track gradients, so the model runs the composite ops) and once as
//! plain tensors (as a checkpoint loads, so it runs the fused kernels).

use std::collections::HashMap;

use candle_nn::{VarBuilder, VarMap};
use meddino_backbone::candle::{DType, Device, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer, IntermediateOptions, LayerSelection, RopeDtype};

/// Largest |a − b| over the largest |b|.
fn relative_difference(a: &Tensor, b: &Tensor) -> f32 {
    let diff: f32 = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar())
        .expect("difference");
    let scale: f32 = b
        .abs()
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar())
        .expect("scale");
    diff / scale.max(f32::MIN_POSITIVE)
}

/// The model with variables (composite ops) and the same weights as plain tensors (fused).
fn composite_and_fused(cfg: &Config) -> (DinoVisionTransformer, DinoVisionTransformer) {
    let varmap = VarMap::new();
    let composite =
        DinoVisionTransformer::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("build");
    // LayerScale starts at 1e-5 and biases at 0, which would hide the branches; give every
    // parameter a random value instead.
    let weights: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(name, var)| {
            let value = var.as_tensor().randn_like(0.0, 0.2).expect("random");
            var.set(&value).expect("set");
            (name.clone(), value)
        })
        .collect();
    let fused =
        DinoVisionTransformer::new(cfg, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu)).expect("build");
    (composite, fused)
}

fn check(cfg: &Config, batch: usize, (height, width): (usize, usize), tolerance: f32) {
    let (composite, fused) = composite_and_fused(cfg);
    let xs = Tensor::randn(0f32, 1.0, (batch, cfg.in_chans, height, width), &Device::Cpu).expect("input");
    let (a, b) = (
        composite.forward_features(&xs).expect("composite"),
        fused.forward_features(&xs).expect("fused"),
    );
    for (name, a, b) in [
        ("x_prenorm", &a.x_prenorm, &b.x_prenorm),
        ("x_norm_patchtokens", &a.x_norm_patchtokens, &b.x_norm_patchtokens),
        ("x_norm_clstoken", &a.x_norm_clstoken, &b.x_norm_clstoken),
    ] {
        let err = relative_difference(b, a);
        assert!(
            err < tolerance,
            "{name}: fused differs from composite by {err:e} (relative)"
        );
    }
    let layers = LayerSelection::Last(2);
    let options = IntermediateOptions::new().with_reshape(true);
    let a = composite
        .intermediate_layers(&xs, &layers, &options)
        .expect("composite");
    let b = fused.intermediate_layers(&xs, &layers, &options).expect("fused");
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let err = relative_difference(&b.patches, &a.patches);
        assert!(err < tolerance, "layer {i}: fused differs from composite by {err:e}");
    }
}

fn small(rope: RopeDtype) -> Config {
    Config {
        embed_dim: 64,
        depth: 3,
        num_heads: 4,
        qkv_bias: true,
        mask_k_bias: true,
        n_storage_tokens: 4,
        layerscale_init: Some(1e-5),
        pos_embed_rope_dtype: rope,
        ..Config::default()
    }
}

#[test]
fn fused_kernels_match_the_composite_ops_with_f32_rope() {
    check(&small(RopeDtype::Fp32), 2, (64, 48), 1e-5);
}

#[test]
fn fused_kernels_match_the_composite_ops_with_bf16_rope() {
    // RoPE rounds q and k to bf16 after every operation on both paths; what remains are
    // f32 summation orders, magnified where a bf16 rounding flips.
    check(&small(RopeDtype::Bf16), 1, (48, 64), 1e-3);
}

#[test]
fn fused_kernels_match_without_layer_scale_storage_tokens_or_biases() {
    let cfg = Config {
        qkv_bias: false,
        mask_k_bias: false,
        n_storage_tokens: 0,
        layerscale_init: None,
        ..small(RopeDtype::Fp32)
    };
    check(&cfg, 1, (32, 32), 1e-5);
}

#[test]
fn a_single_trainable_tensor_keeps_the_composite_path_and_its_gradient() {
    // Every block parameter that is a variable must reach the gradient: with the others
    // plain, the fused kernels (which have no backward) must stay out of its way.
    let cfg = small(RopeDtype::Fp32);
    let varmap = VarMap::new();
    DinoVisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("build");
    let data = varmap.data().lock().expect("varmap");
    let names = [
        "blocks.0.attn.proj.weight",
        "blocks.0.attn.proj.bias",
        "blocks.0.attn.qkv.bias",
        "blocks.0.mlp.fc1.bias",
        "blocks.0.mlp.fc2.bias",
        "blocks.0.ls1.gamma",
        "blocks.0.norm1.bias",
    ];
    for trainable in names {
        let weights: HashMap<String, Tensor> = data
            .iter()
            .map(|(name, var)| {
                let tensor = if name == trainable {
                    var.as_tensor().clone()
                } else {
                    var.as_tensor().detach()
                };
                (name.clone(), tensor)
            })
            .collect();
        let model = DinoVisionTransformer::new(&cfg, VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu))
            .expect("build");
        let xs = Tensor::randn(0f32, 1.0, (1, cfg.in_chans, 32, 32), &Device::Cpu).expect("input");
        let grads = model
            .forward_features(&xs)
            .and_then(|f| f.x_prenorm.sqr()?.sum_all()?.backward().map_err(Into::into))
            .expect("backward");
        assert!(
            grads.get(data[trainable].as_tensor()).is_some(),
            "{trainable}: no gradient"
        );
    }
}
