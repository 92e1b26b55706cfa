//! Test helpers: a scratch folder per test and a runner for the built `meddino` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch folder, removed when dropped.
#[derive(Debug)]
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    /// A fresh, empty folder named after the test.
    pub fn new(test_name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("meddino-test-{}-{test_name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        Self { path }
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts `meddino` with `args` and `env` inside this folder, its output discarded, for
    /// a test to kill.
    pub fn spawn_meddino(&self, args: &[impl AsRef<std::ffi::OsStr>], env: &[(&str, &str)]) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_meddino"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(&self.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start meddino")
    }

    /// Runs `meddino` with `args` inside this folder.
    pub fn meddino(&self, args: &[&str]) -> TestOutput {
        self.meddino_env(args, &[])
    }

    /// Runs `meddino` with `args` and the environment variables `env` inside this folder.
    pub fn meddino_env(&self, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> TestOutput {
        let output = Command::new(env!("CARGO_BIN_EXE_meddino"))
            .args(args)
            .current_dir(&self.path)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("cannot run meddino {args:?}: {e}"));
        TestOutput {
            args: args.iter().map(|a| a.to_string()).collect(),
            output,
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a `meddino` run produced, with assertions that print everything on failure.
#[derive(Debug)]
pub struct TestOutput {
    args: Vec<String>,
    output: Output,
}

impl TestOutput {
    /// Standard output as text.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    /// Standard error as text.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts the exit status, showing both streams when it differs.
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.output.status.code(),
            Some(expected),
            "meddino {:?} exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args,
            self.output.status,
            self.stdout(),
            self.stderr()
        );
        self
    }
}

/// The name of the data set (`DatasetXXX_Name`) in the reference raw folder
/// (`<reference>/nnunet/raw`), whatever the reference data set is called.
pub fn reference_dataset(reference: &meddino_testutil::ReferenceDir) -> String {
    std::fs::read_dir(reference.file("nnunet/raw"))
        .expect("the reference raw folder")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("Dataset"))
        .expect("a DatasetXXX_Name folder in the reference raw folder")
}
