//! The baselines' trainers end to end: two short epochs on the reference phantoms, the
//! final validation, a strict reload of the final checkpoint by `meddino predict`.

use meddino::backbone::candle::Device;
use meddino::train::checkpoint::TrainingCheckpoint;
use meddino::train::trainer::CHECKPOINT_FINAL;
use meddino_testutil::reference_or_skip;

use crate::train::{fold_folder, predict_args, preprocessed_phantom, train_args, write_random_backbone};
use crate::util::Dir;

/// Trains `trainer` for two epochs of two iterations (batch 2) with `extra` arguments, checks
/// the run's outputs and predicts the first training image with the final checkpoint.
fn trains_and_predicts(
    reference: &meddino_testutil::ReferenceDir,
    label: &str,
    trainer: &str,
    extra: &[String],
) -> TrainingCheckpoint {
    let dir = Dir::new(label);
    let (name, configuration) = preprocessed_phantom(&dir, reference);
    let mut args = train_args(&dir, &name, &configuration, "results");
    // Only the Dino U-Net has a ViT to resize; it passes `--backbone` in `extra`.
    let backbone = args.iter().position(|a| a == "--backbone").expect("--backbone");
    let _ = args.drain(backbone..backbone + 2);
    args.extend(["-tr", trainer, "--epochs", "2", "--iters", "2", "--batch-size", "2"].map(String::from));
    args.extend(extra.iter().cloned());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = dir.meddino(&argv);
    let stderr = run.assert_code(0).stderr();
    assert!(stderr.contains("Epoch 1") && stderr.contains("Pseudo dice"), "{stderr}");
    assert!(
        run.stdout().contains("classwise"),
        "validation summary: {}",
        run.stdout()
    );

    let fold = fold_folder(&dir.path().join("results"), &name, trainer, &configuration);
    for file in [CHECKPOINT_FINAL, "validation/summary.json", "progress.png"] {
        assert!(fold.join(file).is_file(), "{file} written");
    }
    // One image is enough to show the checkpoint reloads strictly and predicts.
    let raw_images = reference.file(format!("nnunet/raw/{name}/imagesTr"));
    let first = std::fs::read_dir(&raw_images)
        .expect("imagesTr")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .min()
        .expect("an image");
    let input = dir.path().join("input");
    std::fs::create_dir_all(&input).expect("input folder");
    std::fs::copy(&first, input.join(first.file_name().expect("name"))).expect("copy");
    let mut args = predict_args(&input, "predicted", &name, &configuration, trainer);
    args.push("--disable-tta".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = dir.meddino(&argv).assert_code(0).stderr();
    assert!(stderr.contains("predicted with 1 fold"), "{stderr}");
    let predicted = std::fs::read_dir(dir.path().join("predicted"))
        .expect("predictions")
        .count();
    assert_eq!(predicted, 1, "one label map");

    let checkpoint = TrainingCheckpoint::load(&fold.join(CHECKPOINT_FINAL), &Device::Cpu).expect("final");
    assert_eq!(checkpoint.meta.optimizer_steps, 4);
    assert_eq!(checkpoint.meta.trainer_name, trainer);
    checkpoint
}

#[test]
fn segformer_trainer_trains_and_predicts_the_phantoms() {
    let reference = reference_or_skip!();
    let checkpoint = trains_and_predicts(&reference, "baseline-segformer", "segformerTrainer", &[]);
    // Batch-norm running statistics moved with training and are kept.
    let tracked = checkpoint.network["decoder.linear_fuse.bn.num_batches_tracked"]
        .to_scalar::<f32>()
        .expect("scalar");
    assert_eq!(tracked, 4.0, "two epochs of two training steps");
}

#[test]
fn nnunet_trainer_trains_with_deep_supervision_and_predicts_the_phantoms() {
    let reference = reference_or_skip!();
    let checkpoint = trains_and_predicts(&reference, "baseline-nnunet", "nnUNetTrainer", &[]);
    // Each tensor once: PyTorch's second names (`all_modules`, `decoder.encoder`) are not
    // written, and the nnU-Net state-dict names are.
    assert!(checkpoint
        .network
        .contains_key("encoder.stages.0.0.convs.0.conv.weight"));
    assert!(checkpoint.network.contains_key("decoder.seg_layers.0.weight"));
    assert!(!checkpoint
        .network
        .keys()
        .any(|k| k.contains("all_modules") || k.starts_with("decoder.encoder.")));
}

#[test]
fn dino_unet_trainer_trains_the_adapter_around_a_frozen_vit_and_predicts_the_phantoms() {
    let reference = reference_or_skip!();
    let trainer = "dinoUNetTrainer";
    let scratch = Dir::new("baseline-dino-unet-weights");
    let weights = scratch.path().join("vit_micro_hub.safetensors");
    write_random_backbone(trainer, "vit_micro", &weights);
    let extra = [
        "--backbone",
        "vit_micro",
        "--pretrained",
        weights.to_str().expect("utf-8"),
    ]
    .map(String::from);
    let checkpoint = trains_and_predicts(&reference, "baseline-dino-unet", trainer, &extra);
    // The ViT is frozen: its weights in the final checkpoint are the pretrained ones.
    let pretrained = meddino::backbone::StateDict::read(&weights).expect("weights");
    let mut compared = 0;
    for (name, tensor) in pretrained.tensors() {
        let Some(trained) = checkpoint
            .network
            .get(&format!("encoder.dinov3_adapter.backbone.{name}"))
        else {
            continue;
        };
        let difference = (trained - tensor)
            .and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>())
            .expect("compare");
        assert_eq!(difference, 0.0, "{name} changed");
        compared += 1;
    }
    assert!(compared > 10, "the ViT's weights are in the checkpoint ({compared})");
}
