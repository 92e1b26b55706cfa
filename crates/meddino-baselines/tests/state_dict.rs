//! State-dict conformance of the baselines (`shared/reference/README.md`, `baselines/`): a
//! network built here holds exactly the names and shapes PyTorch's does, counting the second
//! names PyTorch gives some tensors (`state_dict_aliases`). Configurations, channel and class
//! counts come from the reference files, never from this file.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use meddino_baselines::segformer::{SegFormer, SegFormerConfig};
use meddino_baselines::unet::{PlainConvUNet, PlainConvUNetConfig};
use meddino_decoder::backbone::StateDict;
use meddino_decoder::SegmentationNetwork;
use meddino_testutil::{reference_or_skip, ReferenceDir};
use serde_json::Value;

/// Every state-dict name of a built network with its shape: the variables of `varmap`, plus
/// each `(alias, name)` of `aliases` with the shape of `name`.
///
/// # Panics
///
/// When an alias names a variable that does not exist, or is itself a variable.
fn state_dict_shapes(varmap: &VarMap, aliases: &[(String, String)]) -> BTreeMap<String, Vec<usize>> {
    let data = varmap.data().lock().expect("varmap lock");
    let mut shapes: BTreeMap<String, Vec<usize>> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();
    for (alias, name) in aliases {
        let var = data
            .get(name)
            .unwrap_or_else(|| panic!("alias {alias} names {name}, which is not a variable"));
        let previous = shapes.insert(alias.clone(), var.dims().to_vec());
        assert!(
            previous.is_none(),
            "alias {alias} (of {name}) is also a variable or listed twice"
        );
    }
    shapes
}

/// The `state_dict_shapes` entry of network `key` in `baselines/state_dicts.json`.
fn reference_shapes(reference: &ReferenceDir, key: &str) -> BTreeMap<String, Vec<usize>> {
    let file = reference.json("baselines/state_dicts.json");
    let entries = file["networks"][key]["state_dict_shapes"]
        .as_object()
        .unwrap_or_else(|| panic!("state_dicts.json: networks.{key}.state_dict_shapes is not an object"));
    let shapes: BTreeMap<String, Vec<usize>> = entries
        .iter()
        .map(|(name, shape)| {
            let shape = serde_json::from_value(shape.clone())
                .unwrap_or_else(|e| panic!("state_dicts.json: {key}: shape of {name}: {e}"));
            (name.clone(), shape)
        })
        .collect();
    if let Some(count) = file["networks"][key]["n_state_entries"].as_u64() {
        assert_eq!(shapes.len() as u64, count, "state_dicts.json: {key}: n_state_entries");
    }
    shapes
}

/// Asserts that `ours` and `expected` hold the same names with the same shapes, listing
/// every missing, unexpected and mis-shaped name on failure.
fn assert_same_state_dict(label: &str, ours: &BTreeMap<String, Vec<usize>>, expected: &BTreeMap<String, Vec<usize>>) {
    let our_names: BTreeSet<&String> = ours.keys().collect();
    let expected_names: BTreeSet<&String> = expected.keys().collect();
    let missing: Vec<&&String> = expected_names.difference(&our_names).collect();
    let unexpected: Vec<&&String> = our_names.difference(&expected_names).collect();
    let misshaped: Vec<String> = ours
        .iter()
        .filter_map(|(name, shape)| {
            let reference = expected.get(name)?;
            (reference != shape).then(|| format!("{name}: ours {shape:?}, reference {reference:?}"))
        })
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && misshaped.is_empty(),
        "{label}: state dict differs from the reference ({} ours, {} reference)\nmissing ({}): {missing:#?}\n\
         unexpected ({}): {unexpected:#?}\nmis-shaped ({}): {misshaped:#?}",
        ours.len(),
        expected.len(),
        missing.len(),
        unexpected.len(),
        misshaped.len(),
    );
}

/// The number of entries of an object-valued key of dataset.json.
fn count(dataset: &Value, key: &str) -> usize {
    dataset[key]
        .as_object()
        .unwrap_or_else(|| panic!("dataset.json: {key} is not an object"))
        .len()
}

/// The reference plans and the input channel and class counts of the raw data set they
/// were planned for.
fn phantom_plans(reference: &ReferenceDir) -> (Value, usize, usize) {
    let plans = reference.json("nnunet/expected/nnUNetPlans.json");
    let dataset_name = plans["dataset_name"].as_str().expect("nnUNetPlans.json: dataset_name");
    let dataset = reference.json(format!("nnunet/raw/{dataset_name}/dataset.json"));
    let (channels, classes) = (count(&dataset, "channel_names"), count(&dataset, "labels"));
    (plans, channels, classes)
}

#[test]
fn segformer_b2_state_dict_matches_reference() {
    let reference = reference_or_skip!();
    let (_, channels, classes) = phantom_plans(&reference);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // Only the variables are built: no forward pass of B2 here.
    let network = SegFormer::new(&SegFormerConfig::mit_b2(classes), channels, vb)
        .unwrap_or_else(|e| panic!("build SegFormer MiT-B2: {e}"));
    assert_eq!((network.num_classes(), network.input_channels()), (classes, channels));
    let ours = state_dict_shapes(&varmap, &network.state_dict_aliases());
    let expected = reference_shapes(&reference, "segformer_b2_448_c4");
    assert_same_state_dict("segformer_b2_448_c4", &ours, &expected);
    let untrained: Vec<&String> = ours.keys().filter(|name| !network.is_trainable(name)).collect();
    assert!(
        untrained
            .iter()
            .all(|name| name.starts_with("decoder.linear_fuse.bn.running") || name.ends_with("num_batches_tracked")),
        "only batch-norm statistics are untrained: {untrained:?}"
    );
}

#[test]
fn plain_conv_unet_state_dict_matches_reference() {
    let reference = reference_or_skip!();
    let (plans, channels, classes) = phantom_plans(&reference);
    let arch_kwargs = &plans["configurations"]["2d"]["architecture"]["arch_kwargs"];
    let cfg = PlainConvUNetConfig::from_arch_kwargs(arch_kwargs, channels, classes)
        .unwrap_or_else(|e| panic!("2d arch_kwargs: {e}"));
    let varmap = VarMap::new();
    let network = PlainConvUNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))
        .unwrap_or_else(|e| panic!("build PlainConvUNet: {e}"));
    let ours = state_dict_shapes(&varmap, &network.state_dict_aliases());
    let expected = reference_shapes(&reference, "plainconvunet_phantom2d_c4");
    assert_same_state_dict("plainconvunet_phantom2d_c4", &ours, &expected);

    // The full-size network runs: one deep-supervision output per decoder stage, each
    // `1 / cumprod(strides)` of the input, highest resolution first.
    let side = network.input_multiple();
    let xs = Tensor::zeros((1, channels, side, side), DType::F32, &Device::Cpu).expect("input");
    let outputs = network.forward_deep_supervision(&xs).expect("forward");
    let mut scale = 1;
    let expected_shapes: Vec<Vec<usize>> = cfg.strides[..cfg.n_stages - 1]
        .iter()
        .map(|stride| {
            scale *= stride;
            vec![1, classes, side / scale, side / scale]
        })
        .collect();
    let shapes: Vec<Vec<usize>> = outputs.iter().map(|o| o.dims().to_vec()).collect();
    assert_eq!(shapes, expected_shapes);
}

#[test]
fn plain_conv_unet_state_dict_with_pytorch_aliases_loads_strictly() {
    let reference = reference_or_skip!();
    let (plans, channels, classes) = phantom_plans(&reference);
    let arch_kwargs = &plans["configurations"]["2d"]["architecture"]["arch_kwargs"];
    let cfg = PlainConvUNetConfig::from_arch_kwargs(arch_kwargs, channels, classes).expect("config");
    let varmap = VarMap::new();
    let network =
        PlainConvUNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).expect("network");
    // What nnU-Net's `checkpoint_final.pth` holds: every tensor under each of its names.
    let mut tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    for (alias, name) in network.state_dict_aliases() {
        let tensor = tensors[&name].clone();
        let _ = tensors.insert(alias, tensor);
    }
    let load = |tensors: &HashMap<String, Tensor>| {
        StateDict::from_tensors("checkpoint_final.pth", tensors.clone()).load_strict_aliased(
            "nnUNetTrainer",
            DType::F32,
            &Device::Cpu,
            |vb| PlainConvUNet::new(&cfg, vb),
            |net| net.state_dict_aliases(),
        )
    };
    let loaded = load(&tensors).expect("a PyTorch state dict with its aliases loads");
    let xs = Tensor::randn(0f32, 1.0, (1, channels, 32, 32), &Device::Cpu).expect("input");
    let difference = (loaded.forward(&xs).expect("loaded") - network.forward(&xs).expect("built"))
        .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
        .expect("compare");
    assert_eq!(difference, 0.0, "the loaded network is the saved one");

    // A mis-shaped alias and a name the network does not have are both reported.
    let mut broken = tensors.clone();
    let _ = broken.insert(
        "decoder.encoder.stages.0.0.convs.0.all_modules.1.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).expect("zeros"),
    );
    let _ = broken.insert(
        "decoder.extra.weight".into(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).expect("zeros"),
    );
    let message = load(&broken).expect_err("refused").to_string();
    assert!(
        message.contains("decoder.encoder.stages.0.0.convs.0.all_modules.1.weight is [3]")
            && message.contains("unexpected: decoder.extra.weight"),
        "{message}"
    );
}
