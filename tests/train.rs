use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meddino::backbone::candle::{DType, Device};
use meddino::backbone::{DinoVisionTransformer, StateDict};
use meddino::train::checkpoint::TrainingCheckpoint;
use meddino::train::trainer::{CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST};
use meddino::train::TrainerRegistry;
use meddino_testutil::reference_or_skip;

use crate::util::{reference_dataset, Dir};

/// The reference raw data set planned and preprocessed into `dir/preprocessed`; returns its
/// name and a 2-D configuration whose patch the ViTs take (`2d`, or a derived `2d_N` when the
/// planned patch is not a multiple of 16).
pub(crate) fn preprocessed_phantom(dir: &Dir, reference: &meddino_testutil::ReferenceDir) -> (String, String) {
    let raw = reference.file("nnunet/raw");
    let name = reference_dataset(reference);
    let plans = reference.json("nnunet/expected/nnUNetPlans.json");
    let patch: Vec<u64> = serde_json::from_value(plans["configurations"]["2d"]["patch_size"].clone()).expect("patch");
    let configuration = if patch.iter().all(|p| p % 16 == 0) {
        "2d".to_string()
    } else {
        format!("2d_{}", patch.iter().max().map_or(64, |p| p.div_ceil(16) * 16))
    };
    let preprocessed = dir.path().join("preprocessed");
    let _ = dir
        .meddino(&[
            "plan-and-preprocess",
            "-d",
            &name,
            "-c",
            &configuration,
            "--raw",
            raw.to_str().expect("utf-8"),
            "--preprocessed",
            preprocessed.to_str().expect("utf-8"),
        ])
        .assert_code(0);
    (name, configuration)
}

pub(crate) fn train_args<'a>(dir: &'a Dir, name: &'a str, configuration: &'a str, results: &'a str) -> Vec<String> {
    let preprocessed = dir.path().join("preprocessed");
    [
        "train",
        name,
        configuration,
        "0",
        "--preprocessed",
        preprocessed.to_str().expect("utf-8"),
        "--results",
        results,
        "--backbone",
        "vit_micro",
        "--val-iters",
        "2",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `meddino predict` of the images in `input` into `output` with fold 0 of `trainer`, trained
/// into `results` (relative to the test folder).
pub(crate) fn predict_args(input: &Path, output: &str, name: &str, configuration: &str, trainer: &str) -> Vec<String> {
    let input = input.to_str().expect("utf-8");
    [
        "predict",
        "-i",
        input,
        "-o",
        output,
        "-d",
        name,
        "-c",
        configuration,
        "-f",
        "0",
        "-tr",
        trainer,
        "--results",
        "results",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub(crate) fn fold_folder(results: &Path, name: &str, trainer: &str, configuration: &str) -> PathBuf {
    results
        .join(name)
        .join(format!("{trainer}__nnUNetPlans__{configuration}"))
        .join("fold_0")
}

#[test]
fn trains_two_short_epochs_on_the_reference_phantoms() {
    let reference = reference_or_skip!();
    let dir = Dir::new("train-phantom");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let trainer = "dinov3_base_primus_Trainer_scratch";
    let mut args = train_args(&dir, &name, &configuration, "results");
    args.extend(["-tr", trainer, "--epochs", "2", "--iters", "3"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dir.meddino(&args);
    let stderr = run.assert_code(0).stderr();
    assert!(stderr.contains("Epoch 1") && stderr.contains("Pseudo dice"), "{stderr}");
    assert!(
        run.stdout().contains("classwise"),
        "the validation summary is printed: {}",
        run.stdout()
    );

    let fold = fold_folder(&dir.path().join("results"), &name, trainer, &configuration);
    for file in [
        CHECKPOINT_FINAL,
        CHECKPOINT_BEST,
        "progress.png",
        "debug.json",
        "validation/segmentation_metrics.csv",
        "validation/summary.json",
    ] {
        assert!(fold.join(file).is_file(), "{file} written");
    }
    assert!(!fold.join(CHECKPOINT_LATEST).exists(), "latest is removed at the end");
    for file in ["plans.json", "dataset.json", "dataset_fingerprint.json"] {
        assert!(
            fold.parent().expect("trainer folder").join(file).is_file(),
            "{file} copied"
        );
    }
    let log = std::fs::read_dir(&fold)
        .expect("fold")
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("training_log_"))
        .expect("a training log");
    let log = std::fs::read_to_string(log.path()).expect("log");
    assert!(
        log.contains("Epoch 0") && log.contains("Epoch 1") && log.contains("train_loss"),
        "{log}"
    );
    let progress = image::open(fold.join("progress.png")).expect("a PNG");
    assert!(progress.width() > 500 && progress.height() > 500);

    // The validation predictions have exactly their reference's geometry.
    let splits: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("preprocessed").join(&name).join("splits_final.json"))
            .expect("splits"),
    )
    .expect("json");
    let ending = reference.json(format!("nnunet/raw/{name}/dataset.json"))["file_ending"]
        .as_str()
        .unwrap_or(".nii.gz")
        .to_string();
    for case in splits[0]["val"].as_array().expect("val cases") {
        let file = format!("{}{ending}", case.as_str().expect("id"));
        let ours = meddino::data::io::read_image(&fold.join("validation").join(&file)).expect("prediction");
        let truth = meddino::data::io::read_image(&reference.file(format!("nnunet/raw/{name}/labelsTr/{file}")))
            .expect("label");
        assert_eq!(ours.data.shape(), truth.data.shape(), "{file}");
        assert_eq!(ours.geometry, truth.geometry, "{file}");
    }

    // `meddino predict` with the trained fold: every input gets a label map with exactly its
    // geometry; a second run skips finished cases.
    let raw_images = reference.file(format!("nnunet/raw/{name}/imagesTr"));
    let predict = |extra: &[&str]| {
        let mut args = predict_args(&raw_images, "predicted", &name, &configuration, trainer);
        args.extend(
            std::iter::once("--disable-tta")
                .chain(extra.iter().copied())
                .map(String::from),
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        dir.meddino(&argv)
    };
    let stderr = predict(&[]).assert_code(0).stderr();
    assert!(stderr.contains("predicted with 1 fold"), "{stderr}");
    let inputs: Vec<String> = std::fs::read_dir(&raw_images)
        .expect("imagesTr")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    assert!(!inputs.is_empty());
    for input in &inputs {
        let case = input.strip_suffix(&format!("_0000{ending}")).expect("channel 0 file");
        let ours = meddino::data::io::read_image(&dir.path().join("predicted").join(format!("{case}{ending}")))
            .expect("prediction");
        let image = meddino::data::io::read_image(&raw_images.join(input)).expect("image");
        assert_eq!(ours.data.shape(), image.data.shape(), "{case}");
        assert_eq!(ours.geometry, image.geometry, "{case}");
    }
    assert!(predict(&[]).assert_code(0).stderr().contains("already done"));

    // Probabilities: softmax over the classes, one volume per class, as nnU-Net's npz.
    let _ = predict(&["--save-probabilities", "--overwrite"]).assert_code(0);
    let case = inputs[0]
        .strip_suffix(&format!("_0000{ending}"))
        .expect("channel 0 file");
    let mut npz = ndarray_npy::NpzReader::new(
        std::fs::File::open(dir.path().join("predicted").join(format!("{case}.npz"))).expect("npz"),
    )
    .expect("an npz archive");
    let probabilities: meddino::data::ndarray::Array4<f32> = npz.by_name("probabilities").expect("probabilities");
    let image = meddino::data::io::read_image(&raw_images.join(&inputs[0])).expect("image");
    assert_eq!(&probabilities.shape()[1..], image.data.shape());
    for sum in probabilities.sum_axis(meddino::data::ndarray::Axis(0)).iter() {
        assert!((sum - 1.0).abs() < 1e-4, "probabilities sum to 1, got {sum}");
    }

    // Inputs that do not fit the plans are refused, naming the file.
    let odd = dir.path().join("odd");
    std::fs::create_dir_all(&odd).expect("odd");
    std::fs::copy(raw_images.join(&inputs[0]), odd.join(format!("x_0000{ending}"))).expect("copy");
    std::fs::copy(raw_images.join(&inputs[0]), odd.join(format!("x_0001{ending}"))).expect("copy");
    let args = predict_args(&odd, "out2", &name, &configuration, trainer);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains("case x has 2 channel file(s)") && stderr.contains("takes 1"),
        "{stderr}"
    );

    let checkpoint = TrainingCheckpoint::load(&fold.join(CHECKPOINT_FINAL), &Device::Cpu).expect("final");
    assert_eq!(checkpoint.meta.current_epoch, 2);
    assert_eq!(checkpoint.meta.optimizer_steps, 6);
    assert_eq!(checkpoint.meta.trainer_name, trainer);
    assert_eq!(checkpoint.meta.logs["train_losses"].as_array().map(Vec::len), Some(2));
    assert!(
        checkpoint.meta.init["plans"]["configurations"].is_object(),
        "plans kept to rebuild the network"
    );
    assert!(
        checkpoint.network.contains_key("dino_encoder.rope_embed.periods"),
        "buffers kept"
    );
}

#[test]
fn trainers_that_fine_tune_demand_weights_and_scratch_ones_refuse_them() {
    let reference = reference_or_skip!();
    let dir = Dir::new("train-weights");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let mut args = train_args(&dir, &name, &configuration, "results");
    args.extend(["-tr", "meddinov3_base_primus_multiscale_Trainer"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(stderr.contains("--pretrained"), "{stderr}");

    // Weights of another size are refused, naming a tensor and both shapes.
    let weights = dir.path().join("small.safetensors");
    write_random_backbone("meddinov3_base_primus_multiscale_Trainer", "vit_tiny", &weights);
    let mut mismatched = args.clone();
    mismatched.extend(["--pretrained", weights.to_str().expect("utf-8")].map(String::from));
    let argv: Vec<&str> = mismatched.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains("small.safetensors")
            && stderr.contains("wrong shape: blocks.0.attn.proj.bias is [192], expected [64]"),
        "{stderr}"
    );

    let mut scratch = train_args(&dir, &name, &configuration, "results");
    scratch.extend(["-tr", "dinov3_base_primus_Trainer_scratch", "--pretrained", "x.pth"].map(String::from));
    let argv: Vec<&str> = scratch.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(stderr.contains("from scratch"), "{stderr}");

    let mut unknown = train_args(&dir, &name, &configuration, "results");
    unknown.extend(["-tr", "noSuchTrainer"].map(String::from));
    let argv: Vec<&str> = unknown.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains("meddinov3_base_primus_multiscale_Trainer"),
        "lists the trainers: {stderr}"
    );
}

/// Random weights of `preset` built with `trainer`'s backbone arguments, as a `--pretrained`
/// safetensors file.
pub(crate) fn write_random_backbone(trainer: &str, preset: &str, path: &Path) {
    let registry = TrainerRegistry::builtin();
    let cfg = registry
        .get(trainer)
        .expect("trainer")
        .backbone
        .expect("a ViT")
        .config(Some(preset))
        .expect("config");
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = DinoVisionTransformer::new(&cfg, vb).expect("backbone");
    StateDict::from_varmap(path, &varmap, model.buffers().expect("buffers"))
        .save_safetensors(path)
        .expect("weights");
}

#[test]
fn a_killed_training_continues_to_the_same_result() {
    let reference = reference_or_skip!();
    let dir = Dir::new("train-kill");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let trainer = "meddinov3_base_primus_multiscale_Trainer";
    let weights = dir.path().join("micro.safetensors");
    write_random_backbone(trainer, "vit_micro", &weights);
    let run = |results: &str| -> Vec<String> {
        let mut args = train_args(&dir, &name, &configuration, results);
        args.extend(["-tr", trainer, "--epochs", "3", "--iters", "12", "--skip-validation"].map(String::from));
        args.extend(["--pretrained", weights.to_str().expect("utf-8")].map(String::from));
        args
    };

    // Uninterrupted.
    let args = run("straight");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let _ = dir.meddino(&argv).assert_code(0);

    // Killed once the first epoch's checkpoint exists (so in the second epoch), then continued.
    let args = run("killed");
    let fold = fold_folder(&dir.path().join("killed"), &name, trainer, &configuration);
    let mut child = dir.spawn_meddino(&args, &[]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let latest = fold.join(CHECKPOINT_LATEST);
    let saved_epoch = loop {
        assert!(Instant::now() < deadline, "no checkpoint within 5 minutes");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "training ended before it was killed"
        );
        if let Ok(checkpoint) = TrainingCheckpoint::load(&latest, &Device::Cpu) {
            break checkpoint;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(saved_epoch.meta.current_epoch, 1, "killed during the second epoch");
    assert!(!fold.join(CHECKPOINT_FINAL).exists());

    let mut resumed = args.clone();
    resumed.push("--continue".into());
    let argv: Vec<&str> = resumed.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(0).stderr();
    assert!(stderr.contains("continuing from"), "{stderr}");

    // Killed while the second epoch's checkpoint_latest is being written: the temporary file
    // is complete but not yet renamed (each write is held 2 s). The previous checkpoint is
    // intact, and --continue removes the leftover and redoes the epoch.
    let args = run("killed-writing");
    let fold = fold_folder(&dir.path().join("killed-writing"), &name, trainer, &configuration);
    let latest = fold.join(CHECKPOINT_LATEST);
    let mut child = dir.spawn_meddino(&args, &[("MEDDINO_CHECKPOINT_HOLD_MS", "2000")]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let temporary = loop {
        assert!(Instant::now() < deadline, "no second checkpoint write within 5 minutes");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "training ended before it was killed"
        );
        let writing = std::fs::read_dir(&fold).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path()).find(|p| {
                p.to_string_lossy().contains(".checkpoint_latest.safetensors.")
                    && p.extension().is_some_and(|x| x == "tmp")
            })
        });
        if let Some(path) = writing.filter(|_| latest.is_file()) {
            break path;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert!(temporary.exists(), "killed before the rename");
    let intact = TrainingCheckpoint::load(&latest, &Device::Cpu).expect("the previous checkpoint is whole");
    assert_eq!(intact.meta.current_epoch, 1, "the first epoch's checkpoint");
    let mut resumed = args.clone();
    resumed.push("--continue".into());
    let argv: Vec<&str> = resumed.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(0).stderr();
    assert!(
        stderr.contains("removed 1 temporary file(s)") && stderr.contains("continuing from"),
        "{stderr}"
    );
    assert!(!temporary.exists(), "the leftover is gone");

    let load = |results: &str| {
        let fold = fold_folder(&dir.path().join(results), &name, trainer, &configuration);
        TrainingCheckpoint::load(&fold.join(CHECKPOINT_FINAL), &Device::Cpu).expect("final checkpoint")
    };
    let straight = load("straight");
    assert_eq!(straight.meta.current_epoch, 3);
    for run in ["killed", "killed-writing"] {
        let resumed = load(run);
        assert_eq!(resumed.meta.optimizer_steps, straight.meta.optimizer_steps, "{run}");
        assert_eq!(
            resumed.meta.best_ema_pseudo_dice, straight.meta.best_ema_pseudo_dice,
            "{run}"
        );
        assert_eq!(
            resumed.meta.logs["train_losses"], straight.meta.logs["train_losses"],
            "{run}: the same losses, epoch by epoch"
        );
        for (label, ours, theirs) in [
            ("network", &resumed.network, &straight.network),
            ("optimizer", &resumed.optimizer, &straight.optimizer),
        ] {
            assert_eq!(ours.len(), theirs.len(), "{run}: {label} tensors");
            for (key, tensor) in theirs {
                let a: Vec<f32> = tensor.flatten_all().and_then(|t| t.to_vec1()).expect("values");
                let b: Vec<f32> = ours[key].flatten_all().and_then(|t| t.to_vec1()).expect("values");
                assert!(a == b, "{run}: {label} {key} differs after resuming");
            }
        }
    }
}

#[test]
fn the_demo_runs_end_to_end_within_a_tiny_budget() {
    // The real demo trains for 9 minutes; this runs every step once (one epoch, one
    // held-out case) to check the pipeline and the files it leaves.
    let dir = Dir::new("demo");
    let run = dir.meddino(&[
        "demo",
        "--out",
        "demo",
        "--minutes",
        "0.1",
        "--train-cases",
        "5",
        "--test-cases",
        "1",
    ]);
    let stdout = run.assert_code(0).stdout();
    for organ in ["liver", "kidney", "spleen"] {
        assert!(stdout.contains(organ), "the table names {organ}: {stdout}");
    }
    assert!(stdout.contains("class-wise mean Dice over 1 held-out"), "{stdout}");
    let out = dir.path().join("demo");
    for file in [
        "predictions/phantom_005.nii.gz",
        "segmentation_metrics.csv",
        "summary.json",
        "progress.png",
        "overlays.png",
        "nnUNet_raw/Dataset990_Phantom/dataset.json",
    ] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary")).expect("json");
    assert!(summary["classwise_average"]["dice"]["mean"].is_number(), "{summary}");
}

#[test]
fn two_seeded_runs_train_bit_identical_weights() {
    let reference = reference_or_skip!();
    let dir = Dir::new("train-determinism");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let trainer = "dinov3_base_primus_Trainer_scratch";
    let train = |results: &str, seed: &str| {
        let mut args = train_args(&dir, &name, &configuration, results);
        args.extend(["-tr", trainer, "--epochs", "1", "--iters", "4", "--skip-validation"].map(String::from));
        let at = args.iter().position(|a| a == "--seed").expect("train_args sets a seed");
        args[at + 1] = seed.to_string();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = dir.meddino(&argv).assert_code(0);
        let fold = fold_folder(&dir.path().join(results), &name, trainer, &configuration);
        TrainingCheckpoint::load(&fold.join(CHECKPOINT_FINAL), &Device::Cpu).expect("final")
    };
    let values = |checkpoint: &TrainingCheckpoint, key: &str| -> Vec<f32> {
        checkpoint.network[key]
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .expect("values")
    };
    let (a, b, other) = (train("a", "11"), train("b", "11"), train("c", "12"));
    assert_eq!(a.network.len(), b.network.len());
    for key in a.network.keys() {
        assert!(
            values(&a, key) == values(&b, key),
            "{key} differs between two runs with one seed"
        );
    }
    assert!(
        a.network.keys().any(|key| values(&a, key) != values(&other, key)),
        "another seed trains other weights"
    );
}

#[test]
fn training_inputs_that_do_not_fit_are_refused_naming_them() {
    let reference = reference_or_skip!();
    let dir = Dir::new("train-refusals");
    let (name, configuration) = preprocessed_phantom(&dir, &reference);
    let trainer = "dinov3_base_primus_Trainer_scratch";
    let preprocessed = dir.path().join("preprocessed").join(&name);
    let run = |extra: &[&str]| {
        let mut args = train_args(&dir, &name, &configuration, "results");
        args.extend(["-tr", trainer, "--epochs", "1", "--iters", "2", "--skip-validation"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        dir.meddino(&argv)
    };

    // A configuration the plans do not have.
    let mut args = train_args(&dir, &name, "3d_lowres_nope", "results");
    args.extend(["-tr", trainer].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(stderr.contains("no configuration \"3d_lowres_nope\""), "{stderr}");

    // A malformed splits_final.json.
    let splits = preprocessed.join("splits_final.json");
    let saved = std::fs::read(&splits).ok();
    std::fs::write(&splits, b"[{\"train\": 3}]").expect("write");
    let stderr = run(&[]).assert_code(1).stderr();
    assert!(stderr.contains("splits_final.json"), "{stderr}");
    match saved {
        Some(bytes) => std::fs::write(&splits, bytes).expect("restore"),
        None => std::fs::remove_file(&splits).expect("remove"),
    }

    // Malformed plans: not JSON, no `configurations`, a configuration without a patch size.
    let plans_path = preprocessed.join("nnUNetPlans.json");
    let plans = std::fs::read_to_string(&plans_path).expect("plans");
    let mut without_patch: serde_json::Value = serde_json::from_str(&plans).expect("json");
    let _ = without_patch["configurations"][&configuration]
        .as_object_mut()
        .expect("configuration")
        .remove("patch_size");
    for (contents, expected) in [
        ("{\"configurations\": ".to_string(), "nnUNetPlans.json"),
        ("{\"plans_name\": \"nnUNetPlans\"}".to_string(), "configurations"),
        (without_patch.to_string(), "patch_size"),
    ] {
        std::fs::write(&plans_path, &contents).expect("write plans");
        let stderr = run(&[]).assert_code(1).stderr();
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
    std::fs::write(&plans_path, &plans).expect("restore plans");

    // A run, then --continue with another backbone size: the checkpoint does not fit.
    let _ = run(&[]).assert_code(0);
    let fold = fold_folder(&dir.path().join("results"), &name, trainer, &configuration);
    std::fs::copy(fold.join(CHECKPOINT_FINAL), fold.join(CHECKPOINT_LATEST)).expect("copy");
    let mut args = train_args(&dir, &name, &configuration, "results");
    let at = args.iter().position(|a| a == "vit_micro").expect("preset");
    args[at] = "vit_tiny".into();
    args.extend(["-tr", trainer, "--epochs", "2", "--continue"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains("checkpoint_latest.safetensors") && stderr.contains("does not fit the network"),
        "{stderr}"
    );

    // Checkpoints whose tensors do not fit the network are refused by predict, each problem
    // named: one tensor missing, one unexpected, one of another shape.
    let final_path = fold.join(CHECKPOINT_FINAL);
    let pristine = std::fs::read(&final_path).expect("final");
    let mut checkpoint = TrainingCheckpoint::load(&final_path, &Device::Cpu).expect("final");
    let _ = checkpoint
        .network
        .remove("dino_encoder.cls_token")
        .expect("a cls token");
    let extra = checkpoint.network["dino_encoder.norm.weight"].clone();
    let _ = checkpoint.network.insert("dino_encoder.surplus".into(), extra);
    let norm = checkpoint.network["dino_encoder.norm.bias"].clone();
    let _ = checkpoint
        .network
        .insert("dino_encoder.norm.bias".into(), norm.narrow(0, 0, 8).expect("narrow"));
    checkpoint.save(&final_path).expect("save");
    let raw_images = reference.file(format!("nnunet/raw/{name}/imagesTr"));
    let args = predict_args(&raw_images, "out", &name, &configuration, trainer);
    let predict_argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&predict_argv).assert_code(1).stderr();
    for problem in [
        "missing: dino_encoder.cls_token",
        "unexpected: dino_encoder.surplus",
        "wrong shape: dino_encoder.norm.bias is [8], expected [64]",
    ] {
        assert!(stderr.contains(problem), "{problem:?} in {stderr}");
    }
    std::fs::write(&final_path, &pristine).expect("restore");

    // A truncated checkpoint is refused by predict, naming it.
    let bytes = std::fs::read(fold.join(CHECKPOINT_FINAL)).expect("final");
    std::fs::write(fold.join(CHECKPOINT_FINAL), &bytes[..bytes.len() / 2]).expect("truncate");
    let stderr = dir.meddino(&predict_argv).assert_code(1).stderr();
    assert!(stderr.contains("checkpoint_final.safetensors"), "{stderr}");
    assert!(
        !dir.path().join("out").read_dir().is_ok_and(|mut d| d.next().is_some()),
        "nothing written"
    );
    std::fs::write(fold.join(CHECKPOINT_FINAL), &pristine).expect("restore");

    // A checkpoint of another network in a trainer's folder.
    let results = dir.path().join("results").join(&name);
    let ours = results.join(format!("{trainer}__nnUNetPlans__{configuration}"));
    let other = results.join(format!("nnUNetTrainer__nnUNetPlans__{configuration}"));
    std::fs::create_dir_all(other.join("fold_0")).expect("mkdir");
    for file in ["plans.json", "dataset.json"] {
        std::fs::copy(ours.join(file), other.join(file)).expect("copy");
    }
    std::fs::copy(fold.join(CHECKPOINT_FINAL), other.join("fold_0").join(CHECKPOINT_FINAL)).expect("copy");
    let args = predict_args(&raw_images, "out", &name, &configuration, "nnUNetTrainer");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains(&format!("was written by {trainer}, not nnUNetTrainer")),
        "{stderr}"
    );

    // An output folder that cannot be created: its parent is a regular file.
    std::fs::write(dir.path().join("blocker"), "a file").expect("file");
    let args = predict_args(&raw_images, "blocker/out", &name, &configuration, trainer);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(stderr.contains("blocker/out"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("blocker")).expect("file"),
        "a file"
    );

    // An image with NaN voxels is refused, naming its case; nothing is written for it.
    let nan = dir.path().join("nan-input");
    std::fs::create_dir_all(&nan).expect("mkdir");
    let mut data = meddino::data::ndarray::Array3::<f32>::zeros((40, 40, 3));
    data[[5, 6, 1]] = f32::NAN;
    nifti::writer::WriterOptions::new(nan.join("poisoned_0000.nii.gz"))
        .write_nifti(&data)
        .expect("nifti");
    let args = predict_args(&nan, "nan-out", &name, &configuration, trainer);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(1).stderr();
    assert!(
        stderr.contains("case poisoned") && stderr.contains("1 NaN or infinite voxel"),
        "{stderr}"
    );
    assert!(!dir.path().join("nan-out/poisoned.nii.gz").exists());
}
