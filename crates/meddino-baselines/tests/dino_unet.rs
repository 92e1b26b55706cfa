//! The Dino U-Net baseline at a tiny size (vit_micro, decoder widths 8…64): shapes at the
//! data set's 80×80 and at 64×64, the frozen ViT, gradients into the adapter, training
//! steps, seeded drop path, and PyTorch's state-dict names.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, SGD};
use meddino_baselines::dino_unet::{AdapterConfig, DinoUNet, DinoUNetConfig, BACKBONE_PREFIX};
use meddino_baselines::unet::ConvOps;
use meddino_decoder::backbone::Config;
use meddino_decoder::{Error, SegmentationNetwork};
use meddino_testutil::gradient_norm_sq;

fn tiny_config() -> DinoUNetConfig {
    DinoUNetConfig {
        backbone: Config::vit_micro(),
        adapter: AdapterConfig {
            interaction_indexes: AdapterConfig::quarter_blocks(Config::vit_micro().depth).expect("quarters"),
            conv_inplane: 8,
            ..AdapterConfig::default()
        },
        rank: 16,
        features_per_stage: vec![8, 16, 32, 64],
        n_conv_per_stage_decoder: 1,
        ops: ConvOps::default(),
        num_classes: 3,
        input_channels: 1,
    }
}

fn build(varmap: &VarMap) -> DinoUNet {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    DinoUNet::new(&tiny_config(), vb).expect("tiny Dino U-Net")
}

fn image(b: usize, side: usize, seed: f32) -> Tensor {
    // Deterministic content: smooth stripes plus a bright square.
    let mut values = Vec::with_capacity(b * side * side);
    for n in 0..b {
        for y in 0..side {
            for x in 0..side {
                let stripe = ((x as f32 * 0.3 + y as f32 * 0.1 + seed + n as f32).sin()) * 0.5;
                let square = if (side / 4..side / 2).contains(&y) && (side / 4..side / 2).contains(&x) {
                    1.5
                } else {
                    0.0
                };
                values.push(stripe + square);
            }
        }
    }
    Tensor::from_vec(values, (b, 1, side, side), &Device::Cpu).expect("image")
}

/// Labels: 1 inside the bright square, 2 on the right half, 0 elsewhere.
fn labels(b: usize, side: usize) -> Tensor {
    let mut values = Vec::with_capacity(b * side * side);
    for _ in 0..b {
        for y in 0..side {
            for x in 0..side {
                let inside = (side / 4..side / 2).contains(&y) && (side / 4..side / 2).contains(&x);
                values.push(if inside {
                    1u32
                } else if x >= side / 2 {
                    2
                } else {
                    0
                });
            }
        }
    }
    Tensor::from_vec(values, b * side * side, &Device::Cpu).expect("labels")
}

fn cross_entropy(logits: &Tensor, target: &Tensor) -> Tensor {
    let (b, c, h, w) = logits.dims4().expect("logits");
    let flat = logits
        .permute((0, 2, 3, 1))
        .and_then(|t| t.reshape((b * h * w, c)))
        .expect("flat");
    candle_nn::loss::cross_entropy(&flat, target).expect("cross entropy")
}

fn snapshot(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("varmap");
    let mut all: Vec<(String, Tensor)> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().copy().expect("copy")))
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar())
        .expect("difference")
}

#[test]
fn dino_unet_logits_have_the_input_size_at_64_and_80() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    assert_eq!(network.input_multiple(), 16);
    for side in [64, 80] {
        for train in [false, true] {
            let logits = network.forward_t(&image(2, side, 0.0), train).expect("forward");
            assert_eq!(logits.dims(), [2, 3, side, side], "side {side}, train {train}");
        }
    }
    let logits = network
        .forward(&Tensor::zeros((1, 1, 48, 80), DType::F32, &Device::Cpu).expect("zeros"))
        .expect("forward");
    assert_eq!(logits.dims(), [1, 3, 48, 80]);
}

#[test]
fn dino_unet_refuses_sizes_and_channels_it_cannot_take() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    for dims in [vec![1, 1, 72, 80], vec![1, 2, 64, 64], vec![1, 64, 64]] {
        let xs = Tensor::zeros(dims.as_slice(), DType::F32, &Device::Cpu).expect("zeros");
        match network.forward(&xs) {
            Err(Error::Input(message)) => assert!(message.contains(&format!("{dims:?}")), "{message}"),
            other => panic!("{dims:?}: expected an input error, got {other:?}"),
        }
    }
}

#[test]
fn dino_unet_state_dict_names_match_pytorch() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    let names: Vec<String> = varmap.data().lock().expect("varmap").keys().cloned().collect();
    // Module paths of dinoUNetTrainer.py / dinov3_adapter.py.
    for name in [
        "encoder.dinov3_adapter.backbone.blocks.0.attn.qkv.weight",
        "encoder.dinov3_adapter.backbone.patch_embed.proj.weight",
        "encoder.dinov3_adapter.level_embed",
        "encoder.dinov3_adapter.spm.stem.0.weight",
        "encoder.dinov3_adapter.spm.stem.1.running_var",
        "encoder.dinov3_adapter.spm.stem.7.weight",
        "encoder.dinov3_adapter.spm.conv4.1.num_batches_tracked",
        "encoder.dinov3_adapter.spm.fc4.bias",
        "encoder.dinov3_adapter.interactions.0.extractor.query_norm.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.attn.sampling_offsets.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.ffn.dwconv.dwconv.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.ffn.fc2.bias",
        "encoder.dinov3_adapter.interactions.0.extractor.ffn_norm.bias",
        "encoder.dinov3_adapter.interactions.3.extra_extractors.1.attn.value_proj.weight",
        "encoder.dinov3_adapter.up.weight",
        "encoder.dinov3_adapter.norm4.running_mean",
        "encoder.fapm.shared_basis.weight",
        "encoder.fapm.specific_bases.3.bias",
        "encoder.fapm.film_generators.0.weight",
        "encoder.fapm.refinement_blocks.0.0.weight",
        "encoder.fapm.refinement_blocks.0.1.weight",
        "encoder.fapm.refinement_blocks.0.3.depthwise.weight",
        "encoder.fapm.refinement_blocks.0.3.pointwise.weight",
        "encoder.fapm.refinement_blocks.0.3.bn.weight",
        "encoder.fapm.refinement_blocks.0.4.weight",
        "encoder.fapm.refinement_blocks.0.5.fc.0.weight",
        "encoder.fapm.refinement_blocks.0.5.fc.2.bias",
        "encoder.fapm.shortcut_projections.0.weight",
        "encoder.ups.0.up2.weight",
        "encoder.ups.3.up2.bias",
        "decoder.transpconvs.0.weight",
        "decoder.stages.2.convs.0.conv.weight",
        "decoder.seg_layers.2.weight",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing");
    }
    // Only interactions.3 has extra extractors; rank 16 = width 16 at 1/2 has no shortcut.
    for absent in [
        "encoder.dinov3_adapter.interactions.2.extra_extractors.0.attn.value_proj.weight",
        "encoder.fapm.shortcut_projections.1.weight",
    ] {
        assert!(!names.iter().any(|n| n == absent), "{absent} should not exist");
    }
    // Trainable: not the ViT, not running statistics.
    assert!(!network.is_trainable("encoder.dinov3_adapter.backbone.blocks.0.attn.qkv.weight"));
    assert!(!network.is_trainable("encoder.dinov3_adapter.spm.stem.1.running_mean"));
    assert!(network.is_trainable("encoder.dinov3_adapter.spm.stem.1.weight"));
    assert!(network.is_trainable("decoder.transpconvs.0.weight"));
    // The ViT's computed buffers, under its prefix.
    let buffers = network.buffers().expect("buffers");
    assert!(buffers
        .iter()
        .any(|(n, _)| n == "encoder.dinov3_adapter.backbone.rope_embed.periods"));
    // PyTorch's second names: decoder.encoder.* for every encoder tensor (buffers included),
    // all_modules for the decoder's conv blocks.
    let aliases = network.state_dict_aliases();
    let encoder_names: Vec<&String> = names.iter().filter(|n| n.starts_with("encoder.")).collect();
    for name in &encoder_names {
        let alias = format!("decoder.{name}");
        assert!(
            aliases.iter().any(|(a, n)| *a == alias && n == *name),
            "no alias for {name}"
        );
    }
    for (name, _) in &buffers {
        assert!(aliases
            .iter()
            .any(|(a, n)| *a == format!("decoder.{name}") && n == name));
    }
    assert!(aliases
        .iter()
        .any(|(a, n)| a == "decoder.stages.0.convs.0.all_modules.0.weight"
            && n == "decoder.stages.0.convs.0.conv.weight"));
    assert!(aliases
        .iter()
        .all(|(_, n)| names.contains(n) || buffers.iter().any(|(b, _)| b == n)));
}

#[test]
fn dino_unet_gradients_reach_the_adapter_but_not_the_vit() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    network.reseed(3);
    let logits = network.forward_t(&image(2, 64, 0.0), true).expect("forward");
    let loss = cross_entropy(&logits, &labels(2, 64));
    let grads = loss.backward().expect("backward");
    let data = varmap.data().lock().expect("varmap");
    let norm = |name: &str| -> Option<f64> {
        let var = data.get(name).unwrap_or_else(|| panic!("{name} missing"));
        gradient_norm_sq(&grads, var.as_tensor())
    };
    for (name, _) in data.iter().filter(|(n, _)| n.starts_with(BACKBONE_PREFIX)) {
        assert!(norm(name).is_none(), "the frozen ViT got a gradient for {name}");
    }
    for name in [
        "encoder.dinov3_adapter.spm.stem.0.weight",
        "encoder.dinov3_adapter.level_embed",
        "encoder.dinov3_adapter.interactions.0.extractor.attn.sampling_offsets.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.attn.attention_weights.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.attn.value_proj.weight",
        "encoder.dinov3_adapter.interactions.0.extractor.attn.output_proj.weight",
        "encoder.dinov3_adapter.interactions.3.extra_extractors.1.attn.value_proj.weight",
        "encoder.dinov3_adapter.interactions.2.extractor.feat_norm.weight",
        "encoder.dinov3_adapter.interactions.1.extractor.ffn.dwconv.dwconv.weight",
        "encoder.fapm.shared_basis.weight",
        "encoder.ups.0.up2.weight",
        "decoder.transpconvs.0.weight",
        "decoder.seg_layers.2.weight",
    ] {
        let g = norm(name).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(g.is_finite() && g > 0.0, "gradient of {name} is {g}");
    }
}

#[test]
fn dino_unet_training_lowers_the_loss_and_leaves_the_vit_unchanged() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    let before = snapshot(&varmap);
    let trainable: Vec<Var> = {
        let data = varmap.data().lock().expect("varmap");
        data.iter()
            .filter(|(name, _)| network.is_trainable(name))
            .map(|(_, var)| var.clone())
            .collect()
    };
    let mut optimizer = SGD::new(trainable, 0.05).expect("sgd");
    let (xs, target) = (image(2, 80, 0.5), labels(2, 80));
    let mut losses = Vec::new();
    for step in 0..6 {
        network.reseed(step);
        let loss = cross_entropy(&network.forward_t(&xs, true).expect("forward"), &target);
        losses.push(loss.to_scalar::<f32>().expect("loss"));
        optimizer.backward_step(&loss).expect("step");
    }
    let last = cross_entropy(&network.forward_t(&xs, false).expect("eval"), &target)
        .to_scalar::<f32>()
        .expect("loss");
    let train_last = cross_entropy(
        &{
            network.reseed(0);
            network.forward_t(&xs, true).expect("forward")
        },
        &target,
    )
    .to_scalar::<f32>()
    .expect("loss");
    assert!(
        train_last < losses[0],
        "training-mode loss did not fall: {losses:?} then {train_last} (eval {last})"
    );
    let after = snapshot(&varmap);
    let (mut changed, mut frozen) = (0, 0);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let diff = max_abs_diff(a, b);
        if name.starts_with(BACKBONE_PREFIX) {
            assert_eq!(diff, 0.0, "the frozen ViT's {name} changed");
            frozen += 1;
        } else if name.ends_with("running_mean") || name.ends_with("num_batches_tracked") {
            assert!(diff > 0.0, "running statistic {name} was not updated");
        } else if name.contains("spm.stem.0.weight")
            || name.contains("attn.value_proj.weight")
            || name.starts_with("encoder.fapm.shared_basis.")
            || name.starts_with("decoder.seg_layers.2.")
        {
            assert!(diff > 0.0, "{name} did not train");
            changed += 1;
        }
    }
    assert!(frozen > 0 && changed > 0);
}

#[test]
fn dino_unet_reseeding_repeats_a_training_forward() {
    let varmap = VarMap::new();
    let network = build(&varmap);
    let xs = image(4, 64, 1.0);
    let run = |seed: u64| {
        network.reseed(seed);
        network.forward_t(&xs, true).expect("forward")
    };
    let first = run(11);
    let again = run(11);
    assert_eq!(max_abs_diff(&first, &again), 0.0, "same seed, different output");
    // Drop path (rate 0.3 on 6 extractors × 4 samples) makes other seeds differ.
    let differs = [12, 13, 14].iter().any(|&s| max_abs_diff(&first, &run(s)) > 0.0);
    assert!(differs, "drop path ignored the seed");
    // Eval mode has no randomness.
    let eval = network.forward(&xs).expect("eval");
    assert_eq!(max_abs_diff(&eval, &network.forward(&xs).expect("eval")), 0.0);
}

#[test]
fn dino_unet_config_from_plans_arch_kwargs() {
    let arch_kwargs = serde_json::json!({
        "n_stages": 6,
        "features_per_stage": [32, 64, 128, 256, 512, 512],
        "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3], [3, 3], [3, 3], [3, 3], [3, 3], [3, 3]],
        "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
        "n_conv_per_stage": [2, 2, 2, 2, 2, 2],
        "n_conv_per_stage_decoder": [2, 2, 2, 2, 2],
        "conv_bias": true,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": true},
        "dropout_op": null,
        "dropout_op_kwargs": null,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": true}
    });
    let cfg = DinoUNetConfig::from_arch_kwargs(Config::vitb16(), &arch_kwargs, 1, 14).expect("config");
    assert_eq!(cfg.features_per_stage, [32, 64, 128, 256]);
    assert_eq!(cfg.n_conv_per_stage_decoder, 2);
    assert_eq!(cfg.adapter.interaction_indexes, [2, 5, 8, 11]);
    assert_eq!(cfg.adapter, AdapterConfig::default());
    assert_eq!(cfg.rank, 256);
    assert_eq!(cfg.ops, ConvOps::default());
    let decoder = cfg.decoder();
    assert_eq!(decoder.encoder_channels, [32, 64, 128, 256]);
    assert_eq!(decoder.strides, [2, 2, 2, 2]);
    assert_eq!(decoder.n_conv_per_stage_decoder, [2, 2, 2]);
    let mut three = arch_kwargs.clone();
    three["n_stages"] = 3.into();
    three["features_per_stage"] = serde_json::json!([32, 64, 128]);
    for key in ["kernel_sizes", "strides", "n_conv_per_stage"] {
        three[key] = serde_json::json!(arch_kwargs[key].as_array().expect("list")[..3]);
    }
    three["n_conv_per_stage_decoder"] = serde_json::json!([2, 2]);
    assert!(DinoUNetConfig::from_arch_kwargs(Config::vitb16(), &three, 1, 14).is_err());
}
