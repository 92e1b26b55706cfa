//! The command-line surface: help, version, and subcommands that are not built yet.

use crate::util::Dir;

/// Every subcommand the design calls for (DESIGN.md, issue 2).
const SUBCOMMANDS: [&str; 6] = [
    "plan-and-preprocess",
    "train",
    "predict",
    "evaluate",
    "features",
    "demo",
];

/// Subcommands whose implementation has not landed; remove one here when it does.
const NOT_IMPLEMENTED: [&str; 2] = ["predict", "demo"];

#[test]
fn help_lists_every_subcommand_and_marks_the_unbuilt_ones() {
    let dir = Dir::new("help");
    let out = dir.meddino(&["--help"]);
    let help = out.assert_code(0).stdout();
    for name in SUBCOMMANDS {
        let line = help
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("`meddino --help` does not list {name}:\n{help}"));
        if NOT_IMPLEMENTED.contains(&name) {
            assert!(
                line.contains("[not implemented yet]"),
                "{name} is not marked as unbuilt: {line}"
            );
        }
    }
}

#[test]
fn unbuilt_subcommands_exit_non_zero_saying_so() {
    let dir = Dir::new("unbuilt");
    for name in NOT_IMPLEMENTED {
        let out = dir.meddino(&[name, "--some-flag", "value"]);
        let stderr = out.assert_code(1).stderr();
        assert!(
            stderr.contains(&format!("`meddino {name}` is not implemented yet")),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn subcommand_help_shows_the_planned_usage() {
    let dir = Dir::new("subhelp");
    let out = dir.meddino(&["predict", "--help"]);
    let help = out.assert_code(0).stdout();
    assert!(help.contains("Planned usage: meddino predict -i IN_DIR"), "{help}");
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
