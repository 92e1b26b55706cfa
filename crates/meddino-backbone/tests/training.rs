//! Training readiness: gradients reach every parameter, and stochastic depth follows the
//! reference's batch-subset semantics.

use candle_nn::{VarBuilder, VarMap};
use meddino_backbone::candle::{DType, Device, Tensor};
use meddino_backbone::{Config, DinoVisionTransformer, FfnLayer, IntermediateOptions, LayerSelection, NormLayer};

/// A tiny model exercising every optional parameter: qkv bias with its mask, storage
/// tokens, LayerScale, untied norms.
fn tiny(ffn_layer: FfnLayer, norm_layer: NormLayer) -> Config {
    Config {
        embed_dim: 32,
        depth: 2,
        num_heads: 2,
        qkv_bias: true,
        mask_k_bias: true,
        n_storage_tokens: 2,
        layerscale_init: Some(1e-5),
        untie_cls_and_patch_norms: true,
        ffn_layer,
        norm_layer,
        ..Config::default()
    }
}

fn build(cfg: &Config) -> (VarMap, DinoVisionTransformer) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DinoVisionTransformer::new(cfg, vb).expect("build from a VarMap");
    (varmap, model)
}

#[test]
fn every_parameter_gets_a_finite_non_zero_gradient() {
    for (ffn, norm) in [
        (FfnLayer::Mlp, NormLayer::LayerNorm),
        (FfnLayer::SwiGlu, NormLayer::RmsNorm),
    ] {
        let cfg = tiny(ffn, norm);
        let (varmap, model) = build(&cfg);
        let xs = Tensor::randn(0f32, 1.0, (2, 3, 32, 48), &Device::Cpu).expect("input");
        let features = model.forward_features(&xs).expect("forward");
        let loss = [
            &features.x_norm_clstoken,
            &features.x_storage_tokens,
            &features.x_norm_patchtokens,
        ]
        .iter()
        .map(|t| t.sqr().and_then(|t| t.mean_all()))
        .reduce(|a, b| a? + b?)
        .expect("three terms")
        .expect("loss");
        let grads = loss.backward().expect("backward");
        let data = varmap.data().lock().expect("varmap");
        assert!(
            data.len() > 20,
            "the model registered its parameters ({} found)",
            data.len()
        );
        // `cls_token + 0 · mask_token` keeps the mask token in the graph with a zero gradient,
        // exactly as in the reference; it only learns during masked SSL.
        let _ = meddino_testutil::assert_gradients_reach(data.iter(), &grads, |name| name == "mask_token");
    }
}

#[test]
fn drop_path_updates_a_subset_in_training_only() {
    let cfg = Config {
        drop_path_rate: 0.5,
        ..tiny(FfnLayer::Mlp, NormLayer::LayerNorm)
    };
    let (_, model) = build(&cfg);
    // Distinct samples, so each sample's output is its own.
    let xs = Tensor::randn(0f32, 1.0, (4, 3, 16, 16), &Device::Cpu).expect("input");
    let options = IntermediateOptions::new().with_norm(false);
    let eval = |options: &IntermediateOptions| {
        model
            .intermediate_layers(&xs, &LayerSelection::Indices(vec![0]), options)
            .expect("forward")[0]
            .patches
            .clone()
    };
    let a = eval(&options);
    let b = eval(&options);
    assert_eq!(
        a.to_vec3::<f32>().expect("a"),
        b.to_vec3::<f32>().expect("b"),
        "eval mode is deterministic"
    );
    // Training: with B = 4 and rate 0.5 each branch updates 2 samples, so after block 0 at
    // least one sample missed at least one branch and differs from eval.
    let train = eval(&options.with_train(true));
    let diff: Vec<f32> = (train - &a)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_from(1))
        .and_then(|d| d.max_keepdim(1))
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.to_vec1())
        .expect("diff");
    assert!(diff.iter().any(|&d| d > 0.0), "training mode changed nothing: {diff:?}");
}
