//! Training readiness: a loss on the logits reaches every parameter of the network, encoder
//! included, and the deformable-attention module is differentiable end to end.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use meddino_decoder::backbone::Config;
use meddino_decoder::{Interaction, MSDeformAttn, Primus, SegmentationNetwork};
use meddino_testutil::assert_gradients_reach;

fn tiny() -> Config {
    Config {
        embed_dim: 32,
        depth: 3,
        num_heads: 2,
        n_storage_tokens: 2,
        layerscale_init: Some(1e-5),
        ..Config::default()
    }
}

#[test]
fn primus_multiscale_gradients_reach_every_parameter() {
    for interaction in [Interaction::LastBlock, Interaction::Blocks(vec![0, 2])] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let network = match &interaction {
            Interaction::LastBlock => Primus::new(&tiny(), 3, vb),
            Interaction::Blocks(indices) => Primus::multiscale(&tiny(), 3, indices, vb),
        }
        .expect("build");
        let xs = Tensor::randn(0f32, 1.0, (2, 1, 32, 48), &Device::Cpu).expect("input");
        let logits = network.forward_t(&xs, true).expect("forward");
        assert_eq!(logits.dims(), &[2, 3, 32, 48]);
        let loss = logits.sqr().and_then(|l| l.mean_all()).expect("loss");
        let grads = loss.backward().expect("backward");
        // The mask token only learns in masked SSL (`cls + 0 · mask_token`).
        let _ = assert_gradients_reach(varmap.data().lock().expect("varmap").iter(), &grads, |name| {
            name == "dino_encoder.mask_token"
        });
    }
}

#[test]
fn deformable_attention_module_is_differentiable() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let module = MSDeformAttn::new(16, 2, 2, 2, 1.0, vb).expect("build");
    // Fresh offsets and weights are zero-initialised as in the reference; perturb them so
    // every path carries signal.
    for (name, var) in varmap.data().lock().expect("varmap").iter() {
        let noise = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).expect("noise");
        var.set(&(var.as_tensor() + noise).expect("add"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let shapes = [(4, 6), (2, 3)];
    let starts = meddino_decoder::level_start_index(&shapes);
    let query = Tensor::randn(0f32, 1.0, (2, 5, 16), &Device::Cpu).expect("query");
    let reference = Tensor::rand(0.1f32, 0.9, (2, 5, 2, 2), &Device::Cpu).expect("reference");
    let input = Tensor::randn(0f32, 1.0, (2, 30, 16), &Device::Cpu).expect("input");
    let out = module
        .forward(&query, &reference, &input, &shapes, &starts)
        .expect("forward");
    let grads = out
        .sqr()
        .and_then(|o| o.sum_all())
        .and_then(|l| l.backward())
        .expect("backward");
    let _ = assert_gradients_reach(varmap.data().lock().expect("varmap").iter(), &grads, |_| false);
}
