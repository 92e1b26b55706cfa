//! Where the reference data is, and whether a reference test may run.
//!
//! Rules (the same for every crate's tests):
//!
//! - `MEDDINO_REFERENCE_DIR` set: that folder must exist and hold at least one of the known
//!   areas ([`KNOWN_AREAS`]); otherwise the test panics, since someone asked for a check that
//!   cannot happen.
//! - unset: `<workspace root>/../shared/reference` is used when it exists; when it does not,
//!   the test is skipped with a printed reason, so a fresh clone elsewhere still passes.
//!
//! The default is resolved from the workspace root, not the current folder, because cargo
//! runs each crate's tests in that crate's own folder.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::load::{read_json, TensorFile};

/// The environment variable that names the reference folder.
pub const REFERENCE_DIR_ENV: &str = "MEDDINO_REFERENCE_DIR";

/// The sub-folders a reference folder may hold (see `shared/reference/README.md`); a folder
/// with none of them is not a reference folder.
pub const KNOWN_AREAS: [&str; 5] = ["models", "metrics", "nnunet", "nifti", "baselines"];

/// The workspace root: the folder holding the top-level `Cargo.toml`.
pub fn workspace_root() -> PathBuf {
    // This crate lives in `<root>/crates/meddino-testutil`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `shared/reference` in the folder that holds the checkout.
pub fn default_reference_dir() -> PathBuf {
    workspace_root().join("../shared/reference")
}

/// The outcome of looking for the reference folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Reference tests run against this folder.
    Found(PathBuf),
    /// Reference tests are skipped, for this reason.
    Skip(String),
    /// Reference tests must fail, for this reason.
    Invalid(String),
}

/// Decides where the reference data is, given the value of [`REFERENCE_DIR_ENV`] (if set)
/// and the default folder. Pure, so the rules can be tested without touching the
/// process environment.
pub fn resolve_reference_dir(env_value: Option<OsString>, default: &Path) -> Resolution {
    match env_value {
        Some(value) if !value.is_empty() => {
            let dir = PathBuf::from(value);
            match check_layout(&dir) {
                Ok(()) => Resolution::Found(dir),
                Err(why) => Resolution::Invalid(format!("{REFERENCE_DIR_ENV}={}: {why}", dir.display())),
            }
        }
        _ if default.is_dir() => match check_layout(default) {
            Ok(()) => Resolution::Found(default.to_path_buf()),
            Err(why) => Resolution::Invalid(format!("default reference folder {}: {why}", default.display())),
        },
        _ => Resolution::Skip(format!(
            "reference data not found: {REFERENCE_DIR_ENV} is unset and {} does not exist",
            default.display()
        )),
    }
}

fn check_layout(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        return Err("folder does not exist".into());
    }
    if !dir.is_dir() {
        return Err("not a folder".into());
    }
    if KNOWN_AREAS.iter().any(|area| dir.join(area).is_dir()) {
        Ok(())
    } else {
        Err(format!(
            "malformed: holds none of the sub-folders {}",
            KNOWN_AREAS.join(", ")
        ))
    }
}

/// The reference folder for this test run: `Some` when tests should run, `None` (with the
/// reason printed to stderr) when they should be skipped.
///
/// # Panics
///
/// When `MEDDINO_REFERENCE_DIR` names a missing or malformed folder, or the default folder
/// exists but is malformed.
pub fn reference_dir() -> Option<ReferenceDir> {
    match resolve_reference_dir(std::env::var_os(REFERENCE_DIR_ENV), &default_reference_dir()) {
        Resolution::Found(root) => Some(ReferenceDir { root }),
        Resolution::Skip(reason) => {
            eprintln!("skipping reference test: {reason}");
            None
        }
        Resolution::Invalid(reason) => panic!("reference data unusable: {reason}"),
    }
}

/// A reference folder known to exist; its accessors panic with the path on missing or
/// unreadable files.
#[derive(Debug, Clone)]
pub struct ReferenceDir {
    root: PathBuf,
}

impl ReferenceDir {
    /// Opens `root` as a reference folder, checking its layout.
    ///
    /// # Panics
    ///
    /// When the folder is missing or holds none of the known areas.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        if let Err(why) = check_layout(&root) {
            panic!("reference folder {}: {why}", root.display());
        }
        Self { root }
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The path of `relative`, which must exist.
    pub fn file(&self, relative: impl AsRef<Path>) -> PathBuf {
        let path = self.root.join(relative);
        assert!(path.exists(), "reference file missing: {}", path.display());
        path
    }

    /// The files directly in the folder `relative` whose names end in `suffix`, sorted by
    /// name, as paths relative to the reference root.
    pub fn list(&self, relative: impl AsRef<Path>, suffix: &str) -> Vec<PathBuf> {
        let dir = self.file(relative.as_ref());
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list reference folder {}: {e}", dir.display()));
        let mut names: Vec<PathBuf> = entries
            .map(|entry| entry.unwrap_or_else(|e| panic!("cannot list reference folder {}: {e}", dir.display())))
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(suffix))
            .map(|name| relative.as_ref().join(name))
            .collect();
        names.sort();
        names
    }

    /// Parses a JSON file.
    pub fn json(&self, relative: impl AsRef<Path>) -> serde_json::Value {
        read_json(&self.file(relative))
    }

    /// Reads every tensor of a safetensors file.
    pub fn safetensors(&self, relative: impl AsRef<Path>) -> TensorFile {
        TensorFile::read_safetensors(&self.file(relative))
    }

    /// Reads every array of a `.npz` file.
    pub fn npz(&self, relative: impl AsRef<Path>) -> TensorFile {
        TensorFile::read_npz(&self.file(relative))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("meddino-testutil-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch folder");
        dir
    }

    #[test]
    fn unset_variable_and_missing_default_skips() {
        let missing = scratch("skip").join("nowhere");
        let resolution = resolve_reference_dir(None, &missing);
        assert!(
            matches!(resolution, Resolution::Skip(ref why) if why.contains("nowhere")),
            "{resolution:?}"
        );
    }

    #[test]
    fn empty_variable_counts_as_unset() {
        let missing = scratch("empty").join("nowhere");
        assert!(matches!(
            resolve_reference_dir(Some("".into()), &missing),
            Resolution::Skip(_)
        ));
    }

    #[test]
    fn set_variable_naming_missing_folder_is_invalid() {
        let missing = scratch("invalid").join("nowhere");
        let resolution = resolve_reference_dir(Some(missing.clone().into()), &missing);
        assert!(
            matches!(resolution, Resolution::Invalid(ref why) if why.contains(REFERENCE_DIR_ENV) && why.contains("does not exist")),
            "{resolution:?}"
        );
    }

    #[test]
    fn folder_without_known_areas_is_malformed() {
        let dir = scratch("malformed");
        std::fs::create_dir_all(dir.join("something_else")).expect("create");
        let resolution = resolve_reference_dir(Some(dir.clone().into()), Path::new("/nonexistent"));
        assert!(
            matches!(resolution, Resolution::Invalid(ref why) if why.contains("malformed")),
            "{resolution:?}"
        );
        // The default folder is held to the same rule.
        let resolution = resolve_reference_dir(None, &dir);
        assert!(matches!(resolution, Resolution::Invalid(_)), "{resolution:?}");
    }

    #[test]
    fn variable_wins_over_default() {
        let chosen = scratch("chosen");
        std::fs::create_dir_all(chosen.join("metrics")).expect("create");
        let default = scratch("default");
        std::fs::create_dir_all(default.join("models")).expect("create");
        assert_eq!(
            resolve_reference_dir(Some(chosen.clone().into()), &default),
            Resolution::Found(chosen)
        );
        assert_eq!(resolve_reference_dir(None, &default), Resolution::Found(default));
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).expect("read root Cargo.toml");
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    #[should_panic(expected = "reference file missing")]
    fn missing_file_panics_with_its_path() {
        let dir = scratch("missing-file");
        std::fs::create_dir_all(dir.join("models")).expect("create");
        let _ = ReferenceDir::new(&dir).file("models/manifest.json");
    }
}
