//! The input cases of a prediction folder (as nnUNetv2_predict's `-i`), and where each case's
//! images come from: channel files `{case}_{XXXX}{ending}`, or — with the `dicom` feature —
//! a sub-folder holding one DICOM series, the case named after the folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{read_images, Volume};
use crate::error::{Error, Result};

/// Where one case's images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaseSource {
    /// Channel files (NIfTI), in channel order.
    Files(Vec<PathBuf>),
    /// A folder holding one DICOM series: one channel.
    #[cfg(feature = "dicom")]
    DicomSeries(PathBuf),
}

impl CaseSource {
    /// How many channels the case has.
    pub fn channels(&self) -> usize {
        match self {
            Self::Files(files) => files.len(),
            #[cfg(feature = "dicom")]
            Self::DicomSeries(_) => 1,
        }
    }

    /// The files (or the series folder) the case is read from.
    pub fn paths(&self) -> &[PathBuf] {
        match self {
            Self::Files(files) => files,
            #[cfg(feature = "dicom")]
            Self::DicomSeries(folder) => std::slice::from_ref(folder),
        }
    }

    /// Reads the case as one volume, (C, Z, Y, X) with its spacing and geometry.
    ///
    /// # Errors
    ///
    /// Whatever the NIfTI or DICOM reader refuses (naming the file).
    pub fn read(&self) -> Result<Volume> {
        match self {
            Self::Files(files) => read_images(files),
            #[cfg(feature = "dicom")]
            Self::DicomSeries(folder) => {
                use super::ImageReader;
                super::dicom::DicomIo::default().read_images(std::slice::from_ref(folder))
            }
        }
    }
}

/// The cases in `input`: files `{case}_{XXXX}{ending}` grouped by case (other files are
/// ignored), and — with the `dicom` feature — each sub-folder that directly holds DICOM files
/// as one case named after the folder. Every case must have `channels` channels.
///
/// # Errors
///
/// [`Error::InvalidCase`] listing every problem: a file ending in `ending` without the
/// `_XXXX` channel suffix, a case with the wrong number of channels, a name used by both a
/// file case and a series folder, or no case at all; [`Error::Io`] when `input` cannot be
/// listed.
pub fn input_cases(input: &Path, ending: &str, channels: usize) -> Result<BTreeMap<String, CaseSource>> {
    let io_error = |source| Error::Io {
        path: input.to_path_buf(),
        source,
    };
    let mut files: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let mut folders: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(input).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_dir() {
            if is_series_folder(&path) {
                let _ = folders.insert(name, path);
            }
            continue;
        }
        let Some(stem) = name.strip_suffix(ending) else {
            continue;
        };
        match stem
            .rsplit_once('_')
            .filter(|(_, c)| c.len() == 4 && c.bytes().all(|b| b.is_ascii_digit()))
        {
            Some((case, _)) => files.entry(case.to_string()).or_default().push(path),
            None => problems.push(format!(
                "{name}: not named {{case}}_{{XXXX}}{ending} (XXXX the channel)"
            )),
        }
    }
    let mut cases = BTreeMap::new();
    for (case, mut paths) in files {
        paths.sort();
        if folders.contains_key(&case) {
            problems.push(format!("case {case} is both channel files and a DICOM series folder"));
        }
        let _ = cases.insert(case, CaseSource::Files(paths));
    }
    #[cfg(feature = "dicom")]
    for (case, folder) in folders {
        let _ = cases.entry(case).or_insert(CaseSource::DicomSeries(folder));
    }
    for (case, source) in &cases {
        if source.channels() != channels {
            let what = match source {
                CaseSource::Files(_) => "channel file(s)",
                #[cfg(feature = "dicom")]
                CaseSource::DicomSeries(_) => "channel (a DICOM series folder)",
            };
            problems.push(format!(
                "case {case} has {} {what} in {}, the model takes {channels} ({})",
                source.channels(),
                input.display(),
                source
                    .paths()
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if cases.is_empty() && problems.is_empty() {
        let series = if cfg!(feature = "dicom") {
            " and no sub-folders of DICOM series"
        } else {
            ""
        };
        problems.push(format!("no input files ending in {ending:?}{series}"));
    }
    if problems.is_empty() {
        Ok(cases)
    } else {
        Err(Error::InvalidCase {
            path: input.to_path_buf(),
            problems,
        })
    }
}

/// Whether `folder` is a case of its own: a DICOM series folder (never without `dicom`).
fn is_series_folder(folder: &Path) -> bool {
    #[cfg(feature = "dicom")]
    {
        super::dicom::is_dicom_series_folder(folder)
    }
    #[cfg(not(feature = "dicom"))]
    {
        let _ = folder;
        false
    }
}
