//! The loaders against the real reference folder: every JSON, safetensors and npz file in
//! it parses, and every tensor in it is readable. Names and shapes come from the files.

use std::path::{Path, PathBuf};

use meddino_testutil::{assert_close, reference_or_skip};

/// Every file under `dir` (relative to `root`), depth first, sorted.
fn walk(root: &Path, dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.join(dir).display()))
        .map(|entry| dir.join(entry.expect("directory entry").file_name()))
        .collect();
    entries.sort();
    for entry in entries {
        if root.join(&entry).is_dir() {
            walk(root, &entry, found);
        } else {
            found.push(entry);
        }
    }
}

#[test]
fn every_reference_file_loads() {
    let reference = reference_or_skip!();
    let mut files = Vec::new();
    walk(reference.path(), Path::new(""), &mut files);
    let mut counts = [0usize; 3];
    for file in &files {
        let name = file.to_string_lossy();
        if name.ends_with(".json") {
            let _ = reference.json(file);
            counts[0] += 1;
        } else if name.ends_with(".safetensors") || name.ends_with(".npz") {
            let tensors = if name.ends_with(".npz") {
                reference.npz(file)
            } else {
                reference.safetensors(file)
            };
            assert!(!tensors.is_empty(), "{name} holds no tensor");
            for tensor in tensors.names() {
                let values = tensors.get(tensor);
                // A tensor compares equal to itself: exercises the comparison on real shapes.
                assert_eq!(assert_close(tensor, values, values, 0.0).rel_err(), 0.0);
            }
            counts[if name.ends_with(".npz") { 2 } else { 1 }] += 1;
        }
    }
    eprintln!(
        "loaded {} json, {} safetensors and {} npz files",
        counts[0], counts[1], counts[2]
    );
    assert!(
        counts.iter().sum::<usize>() > 0,
        "no loadable file in {}",
        reference.path().display()
    );
}

#[test]
fn manifest_inputs_match_the_io_files() {
    let reference = reference_or_skip!();
    if !reference.path().join("models/manifest.json").exists() {
        eprintln!("skipping: no models/manifest.json in {}", reference.path().display());
        return;
    }
    let manifest = reference.json("models/manifest.json");
    let backbones = manifest["backbones"]
        .as_object()
        .expect("manifest.json: `backbones` is an object");
    for (config, entry) in backbones {
        let io = reference.safetensors(format!("models/{config}.io.safetensors"));
        let inputs = entry["inputs"]
            .as_object()
            .expect("manifest.json: `inputs` is an object");
        for (key, shape) in inputs {
            let shape: Vec<usize> = serde_json::from_value(shape.clone()).expect("input shape is a list of sizes");
            assert_eq!(
                io.get(&format!("{key}.input")).shape(),
                shape.as_slice(),
                "{config}.{key}.input"
            );
        }
    }
}
