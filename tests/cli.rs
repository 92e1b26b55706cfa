//! The command-line surface: help, version, nnU-Net-style flags.

use crate::util::Dir;

/// Every subcommand the design calls for (DESIGN.md, issue 2).
const SUBCOMMANDS: [&str; 7] = [
    "plan-and-preprocess",
    "train",
    "predict",
    "evaluate",
    "features",
    "demo",
    "convert",
];

#[test]
fn help_lists_every_subcommand() {
    let dir = Dir::new("help");
    let out = dir.meddino(&["--help"]);
    let help = out.assert_code(0).stdout();
    assert!(!help.contains("not implemented"), "{help}");
    for name in SUBCOMMANDS {
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with(&format!("{name} "))),
            "`meddino --help` does not list {name}:\n{help}"
        );
    }
}

#[test]
fn train_and_predict_take_nnunets_dash_tr() {
    let dir = Dir::new("dash-tr");
    for command in ["train", "predict"] {
        let out = dir.meddino(&[command, "--help"]);
        assert!(
            out.assert_code(0).stdout().contains("-tr"),
            "{command} --help mentions -tr"
        );
    }
    // `-tr X` parses (the run then fails on the missing data set, not on the flag).
    let out = dir.meddino(&[
        "train",
        "1",
        "2d",
        "0",
        "-tr",
        "noSuchTrainer",
        "--preprocessed",
        ".",
        "--results",
        ".",
    ]);
    let stderr = out.assert_code(1).stderr();
    assert!(stderr.contains("unknown trainer \"noSuchTrainer\""), "{stderr}");
}

#[test]
fn version_is_the_package_version() {
    let dir = Dir::new("version");
    let out = dir.meddino(&["--version"]);
    assert_eq!(
        out.assert_code(0).stdout().trim(),
        format!("meddino {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let dir = Dir::new("unknown");
    let out = dir.meddino(&["frobnicate"]);
    assert!(out.assert_code(2).stderr().contains("frobnicate"));
}
