//! SegFormer MiT-B2's variables against the state dict of MedDINOv3's `segformerTrainer`
//! network (`baselines/state_dicts.json`, `networks.segformer_b2_448_c4`; see
//! `shared/reference/README.md`): the same names with the same shapes, buffers included.
//! The class and channel counts come from the raw phantom data set the reference network was
//! built for. Only the variables are built: no forward pass of B2 here.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use meddino_decoder::baselines::segformer::{SegFormer, SegFormerConfig};
use meddino_decoder::SegmentationNetwork;
use meddino_testutil::reference_or_skip;

const NETWORK: &str = "segformer_b2_448_c4";

#[test]
fn segformer_b2_state_dict_matches_reference() {
    let reference = reference_or_skip!();
    let dataset = reference.json("nnunet/raw/Dataset001_Phantom/dataset.json");
    let num_classes = dataset["labels"].as_object().expect("dataset.json: labels").len();
    let input_channels = dataset["channel_names"]
        .as_object()
        .expect("dataset.json: channel_names")
        .len();

    let state_dicts = reference.json("baselines/state_dicts.json");
    let entry = &state_dicts["networks"][NETWORK];
    let expected: BTreeMap<String, Vec<usize>> = entry["state_dict_shapes"]
        .as_object()
        .unwrap_or_else(|| panic!("state_dicts.json: networks.{NETWORK}.state_dict_shapes"))
        .iter()
        .map(|(name, shape)| {
            let shape = shape
                .as_array()
                .unwrap_or_else(|| panic!("{name}: shape is not a list"))
                .iter()
                .map(|d| d.as_u64().unwrap_or_else(|| panic!("{name}: bad dimension {d}")) as usize)
                .collect();
            (name.clone(), shape)
        })
        .collect();
    if let Some(n) = entry["n_state_entries"].as_u64() {
        assert_eq!(expected.len() as u64, n, "state_dicts.json disagrees with itself");
    }

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let network =
        SegFormer::new(&SegFormerConfig::mit_b2(num_classes), input_channels, vb).expect("build segformer mit-b2");
    assert_eq!(network.num_classes(), num_classes);
    assert_eq!(network.input_channels(), input_channels);

    let ours: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .expect("varmap")
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();

    let missing: Vec<&String> = expected.keys().filter(|k| !ours.contains_key(*k)).collect();
    let unexpected: Vec<&String> = ours.keys().filter(|k| !expected.contains_key(*k)).collect();
    let misshaped: Vec<String> = expected
        .iter()
        .filter_map(|(name, shape)| {
            let got = ours.get(name)?;
            (got != shape).then(|| format!("{name}: expected {shape:?}, got {got:?}"))
        })
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty() && misshaped.is_empty(),
        "{NETWORK}: {} expected, {} built\nmissing: {missing:#?}\nunexpected: {unexpected:#?}\nmis-shaped: {misshaped:#?}",
        expected.len(),
        ours.len()
    );
    let buffers = ours.keys().filter(|name| !network.is_trainable(name)).count();
    assert_eq!(
        buffers, 3,
        "batch-norm running statistics are the only untrained variables"
    );
}
