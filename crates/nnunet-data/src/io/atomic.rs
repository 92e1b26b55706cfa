//! Writing files so that readers never see half of one: write to a temporary name in the
//! same folder, flush to disk, then rename over the target.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `path` atomically: `write` fills a temporary file beside it, which is synced and
/// renamed to `path` only when `write` succeeds; on any failure the temporary file is
/// removed and `path` is left as it was.
///
/// # Errors
///
/// When the folder is missing or not writable (or is not a folder), or `write` fails; the
/// error names `path`.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let io_error = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = temporary_name(path);
    let result = (|| {
        let mut out = BufWriter::new(File::create(&temporary)?);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result.map_err(io_error)
}

/// `.<name>.<pid>.tmp` beside `path`: hidden, and unique per process.
/// Removes the temporary files an interrupted writer (a killed process) left in `folder`:
/// hidden `*.tmp` files of other processes. Returns how many were removed; a folder that
/// does not exist has none.
///
/// # Errors
///
/// When the folder cannot be listed or a file cannot be removed (named).
pub fn remove_stale_temporaries(folder: &Path) -> Result<usize> {
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(Error::Io {
                path: folder.to_path_buf(),
                source,
            })
        }
    };
    let ours = format!(".{}.tmp", std::process::id());
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") && !name.ends_with(&ours) {
            std::fs::remove_file(entry.path()).map_err(|source| Error::Io {
                path: entry.path(),
                source,
            })?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nnunet-data-atomic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    }

    #[test]
    fn writes_and_replaces() {
        let dir = scratch("replace");
        let path = dir.join("out.txt");
        write_atomic(&path, |w: &mut dyn Write| w.write_all(b"one")).expect("write");
        write_atomic(&path, |w: &mut dyn Write| w.write_all(b"two")).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two");
        assert_eq!(
            std::fs::read_dir(&dir).expect("list").count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = scratch("fail");
        let path = dir.join("out.txt");
        std::fs::write(&path, "old").expect("seed");
        let err = write_atomic(&path, |w: &mut dyn Write| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("disk full"))
        })
        .expect_err("must fail");
        assert!(err.to_string().contains("out.txt"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "old");
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 1);
    }

    #[test]
    fn parent_that_is_a_file_is_an_error_naming_the_path() {
        let dir = scratch("parent-file");
        let blocker = dir.join("blocker");
        std::fs::write(&blocker, "x").expect("seed");
        let path = blocker.join("out.txt");
        let err = write_atomic(&path, |w: &mut dyn Write| w.write_all(b"x")).expect_err("must fail");
        assert!(err.to_string().contains("blocker/out.txt"), "{err}");
    }

    #[test]
    fn stale_temporaries_of_other_processes_are_removed() {
        let dir = scratch("stale");
        std::fs::write(dir.join(".case.npy.99999999.tmp"), b"half").expect("stale");
        std::fs::write(dir.join("case.npy"), b"done").expect("done");
        let ours = temporary_name(&dir.join("other.npy"));
        std::fs::write(&ours, b"in progress").expect("ours");
        assert_eq!(remove_stale_temporaries(&dir).expect("clean"), 1);
        assert!(dir.join("case.npy").is_file() && ours.is_file());
        assert_eq!(remove_stale_temporaries(&dir.join("missing")).expect("no folder"), 0);
    }
}
