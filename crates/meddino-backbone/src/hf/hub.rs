//! `hf:ORG/NAME[@REVISION]`: models in the Hugging Face hub's local cache, downloaded into it
//! when missing (feature `hub`).
//!
//! The cache is the one `huggingface_hub` and transformers share: `$HF_HUB_CACHE`, else
//! `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a model lives in
//! `models--ORG--NAME/snapshots/COMMIT/`, and `refs/REVISION` holds the commit a branch or
//! tag named. `HF_HUB_OFFLINE=1` forbids downloads, as it does for the Python tools;
//! downloads use `HF_TOKEN` (or the token file `huggingface-cli login` writes) and
//! `HF_ENDPOINT`, as they do.

use std::path::{Path, PathBuf};

use super::{CONFIG, WEIGHTS, WEIGHTS_INDEX};
use crate::error::{Error, Result};

/// The scheme that names a hub model where a checkpoint path is expected.
pub const SCHEME: &str = "hf:";

/// A model on the hub, `ORG/NAME` at a revision (a branch, tag or commit; `main` by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    /// `ORG/NAME`.
    pub repo: String,
    /// Branch, tag or commit hash.
    pub revision: String,
}

impl HubModel {
    /// Parses `hf:ORG/NAME[@REVISION]`; `None` when `spec` does not start with `hf:`.
    ///
    /// # Errors
    ///
    /// When the part after `hf:` is not `ORG/NAME` with an optional non-empty `@REVISION`.
    pub fn parse(spec: &str) -> Option<Result<Self>> {
        let rest = spec.strip_prefix(SCHEME)?;
        let (repo, revision) = rest.split_once('@').unwrap_or((rest, "main"));
        let valid_part = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        // Revisions name a branch, a tag, a commit or a pull request (`refs/pr/N`).
        let revision_ok = !revision.is_empty() && (!revision.contains(['/', '\\']) || revision.starts_with("refs/pr/"));
        let valid =
            matches!(repo.split_once('/'), Some((org, name)) if valid_part(org) && valid_part(name)) && revision_ok;
        Some(if valid {
            Ok(Self {
                repo: repo.to_string(),
                revision: revision.to_string(),
            })
        } else {
            Err(Error::Checkpoint {
                path: spec.into(),
                message: "a hub model is named hf:ORG/NAME or hf:ORG/NAME@REVISION".into(),
            })
        })
    }

    /// `models--ORG--NAME`, the model's folder in the cache.
    fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }
}

impl std::fmt::Display for HubModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}{}@{}", self.repo, self.revision)
    }
}

/// The local hub cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    root: PathBuf,
    offline: bool,
}

impl HubCache {
    /// The cache at `root` (the folder holding `models--*`), downloads allowed.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            offline: false,
        }
    }

    /// Forbids (or allows) downloads, as `HF_HUB_OFFLINE` does.
    pub fn with_offline(self, offline: bool) -> Self {
        Self { offline, ..self }
    }

    /// The cache the Python tools use: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub` (`$XDG_CACHE_HOME/huggingface/hub` when that is set);
    /// offline when `HF_HUB_OFFLINE` is set to anything but `0`/`false`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = var("HF_HUB_CACHE")
            .or_else(|| var("HF_HOME").map(|home| home.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|cache| cache.join("huggingface/hub")))
            .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            !matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "" | "0" | "false" | "no" | "off"
            )
        });
        Self::new(root).with_offline(offline)
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The model's snapshot folder when the cache holds a complete one (config and every
    /// weights file) for the revision; `None` otherwise.
    pub fn snapshot(&self, model: &HubModel) -> Option<PathBuf> {
        let repo = self.root.join(model.folder_name());
        let commit = if is_commit_hash(&model.revision) {
            model.revision.clone()
        } else {
            std::fs::read_to_string(repo.join("refs").join(&model.revision))
                .ok()?
                .trim()
                .to_string()
        };
        let snapshot = repo.join("snapshots").join(commit);
        is_complete(&snapshot).then_some(snapshot)
    }

    /// The model's snapshot folder: from the cache, or downloaded into it when the build has
    /// the `hub` feature and the cache is not offline.
    ///
    /// # Errors
    ///
    /// When the cache lacks the model and it cannot be downloaded; the error names the
    /// model, the cache folder and why the download did not happen or failed.
    pub fn resolve(&self, model: &HubModel) -> Result<PathBuf> {
        if let Some(snapshot) = self.snapshot(model) {
            return Ok(snapshot);
        }
        let why = if self.offline {
            "downloads are off (HF_HUB_OFFLINE)".to_string()
        } else {
            match self.download(model) {
                Ok(snapshot) => return Ok(snapshot),
                Err(why) => why,
            }
        };
        Err(Error::Checkpoint {
            path: model.to_string().into(),
            message: format!(
                "not in the Hugging Face cache at {} (no complete snapshot with {CONFIG} and {WEIGHTS} \
                 or {WEIGHTS_INDEX}), and {why}",
                self.root.display()
            ),
        })
    }

    /// Downloads the model's config and weights into the cache, with progress bars.
    #[cfg(feature = "hub")]
    fn download(&self, model: &HubModel) -> std::result::Result<PathBuf, String> {
        use hf_hub::api::sync::ApiBuilder;
        use hf_hub::{Cache, Repo, RepoType};

        let mut builder = ApiBuilder::from_cache(Cache::new(self.root.clone()))
            .with_progress(true)
            .with_token(token());
        if let Some(endpoint) = std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()) {
            builder = builder.with_endpoint(endpoint);
        }
        let api = builder.build().map_err(|e| format!("the hub client failed: {e}"))?;
        let repo = api.repo(Repo::with_revision(
            model.repo.clone(),
            RepoType::Model,
            model.revision.clone(),
        ));
        let failed = |file: &str, e: hf_hub::api::sync::ApiError| format!("downloading {file} failed: {e}");
        let config = repo.get(CONFIG).map_err(|e| failed(CONFIG, e))?;
        if let Err(single) = repo.get(WEIGHTS) {
            let index = repo
                .get(WEIGHTS_INDEX)
                .map_err(|e| format!("{}; {}", failed(WEIGHTS, single), failed(WEIGHTS_INDEX, e)))?;
            for shard in super::shard_names(&index).map_err(|e| e.to_string())? {
                let _ = repo.get(&shard).map_err(|e| failed(&shard, e))?;
            }
        }
        config
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| format!("the hub client returned {} without a folder", config.display()))
    }

    #[cfg(not(feature = "hub"))]
    fn download(&self, _: &HubModel) -> std::result::Result<PathBuf, String> {
        Err("this build cannot download (meddino-backbone's `hub` feature is off)".into())
    }
}

/// The access token the Python tools would use (the DINOv3 models are gated): `$HF_TOKEN`,
/// else the file `$HF_TOKEN_PATH`, else `token` in `$HF_HOME` (default
/// `~/.cache/huggingface`).
#[cfg(feature = "hub")]
fn token() -> Option<String> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.trim().is_empty()) {
        return Some(token.trim().to_string());
    }
    let file = var("HF_TOKEN_PATH")
        .or_else(|| var("HF_HOME").map(|home| home.join("token")))
        .or_else(|| var("HOME").map(|home| home.join(".cache/huggingface/token")))?;
    let token = std::fs::read_to_string(file).ok()?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

/// Whether a model folder holds the config and all weights files.
pub(crate) fn is_complete(folder: &Path) -> bool {
    folder.join(CONFIG).is_file() && super::weights_files(folder).is_ok_and(|files| files.iter().all(|f| f.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_revision() {
        let parse = |s: &str| HubModel::parse(s).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(parse("model.pth"), None);
        assert_eq!(
            parse("hf:facebook/dinov3-vits16-pretrain-lvd1689m"),
            Some(Ok(HubModel {
                repo: "facebook/dinov3-vits16-pretrain-lvd1689m".into(),
                revision: "main".into()
            }))
        );
        assert_eq!(
            parse("hf:org/name@v1.0").and_then(Result::ok).map(|m| m.revision),
            Some("v1.0".into())
        );
        for bad in ["hf:", "hf:name", "hf:org/name@", "hf:a/b/c", "hf:org/na me"] {
            assert!(matches!(parse(bad), Some(Err(_))), "{bad}");
        }
    }
}
