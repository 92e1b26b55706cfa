//! End-to-end training of a tiny Primus_Multiscale on a synthetic data set (discs and
//! squares in noise): the loss falls and the validation pseudo Dice rises.

mod common;

use meddino_train::trainer::Silent;
use meddino_train::{TrainOptions, Trainer, TrainerRegistry};

#[test]
fn a_tiny_primus_multiscale_learns_the_shapes() {
    let root = common::scratch("learns");
    let preprocessed = common::shapes_dataset(&root, 5, 4, 64, 64, 4);
    // The MedDINOv3 trainer exactly as registered (AdamW 3e-4 / ViT 3e-5, linear decay),
    // on a 4-block, 64-wide ViT with random "pretrained" weights.
    let spec = TrainerRegistry::builtin()
        .get("meddinov3_base_primus_multiscale_Trainer")
        .expect("trainer")
        .clone();
    let cfg = spec.backbone.expect("a ViT").config(Some("vit_micro")).expect("preset");
    let weights = root.join("micro.safetensors");
    common::random_backbone_weights(&cfg, &weights);
    let mut options = TrainOptions::new(preprocessed, root.join("results"), "2d", "0", spec);
    options.backbone = Some("vit_micro".into());
    options.pretrained = Some(weights);
    options.epochs = 10;
    options.iterations = 25;
    options.val_iterations = 4;
    let mut trainer = Trainer::new(options, &Silent).expect("setup");
    trainer.fit().expect("training");

    let logs = trainer.logs();
    let (first_loss, last_loss) = (logs.train_losses[0], logs.train_losses[9]);
    let (first_dice, last_dice) = (logs.mean_fg_dice[0], logs.mean_fg_dice[9]);
    // The shapes cover about 13 % of each slice: an untrained network scores ~0.1 pseudo
    // Dice (it predicts shapes everywhere or nowhere). The shapes differ from the
    // background in intensity, so 250 steps reach ~0.85; 0.6 leaves room for the noise
    // of 4 validation batches while failing for any network that does not segment.
    assert!(last_loss < first_loss - 0.5, "loss falls: {:?}", logs.train_losses);
    assert!(
        last_dice > 0.6 && last_dice > first_dice + 0.3,
        "pseudo Dice rises: {:?}",
        logs.mean_fg_dice
    );
    assert!(logs.ema_fg_dice[9] > logs.ema_fg_dice[0], "EMA follows");
    let lrs = &logs.lrs;
    assert!(
        (lrs[0] - 3e-4).abs() < 1e-12 && (lrs[5] - 1.5e-4).abs() < 1e-12,
        "linear decay: {lrs:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
