//! Models: names, the catalog, local dirs (writable and read-only), other tools' caches used in
//! place, and downloads (docs/models.md).
//!
//! Resolution order for a MODEL argument: an existing path → a model already on disk (models
//! dirs, read-only dirs, Hugging Face cache, Ollama store) → the catalog or `hf.co/ORG/REPO[:QUANT]`
//! (downloaded when missing) → an error listing close matches.

pub mod catalog;
pub mod fetch;
mod hub;
pub mod hub_range;
mod local;
mod local_names;
pub mod partial;
mod transfers;

pub use catalog::{Card, Known};
pub use hub::{sha256_file, PullProgress, Quiet, RemoteFile};
pub use hub_range::{HubFile, HubFileError, HubRange};
pub use local::{quant_from_name, LocalModel, Location};
pub use local_names::model_name;
pub use transfers::{
    Reported, Shown, Transfer, TransferHandle, TransferKind, TransferState, Transfers, KEEP_RUNNING_PER_NODE,
};

use hub::Hub;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("model {name:?} not found{hint}")]
    NotFound { name: String, hint: String },
    #[error("{name}: {reason}")]
    NotDownloadable { name: String, reason: String },
    /// A hub reference (ours or a coordinator's) that is not a plain single GGUF on the hub.
    #[error("{name}: {source}")]
    BadHubFile { name: String, source: HubFileError },
    #[error("offline (EXO_OFFLINE): {name} is not on this machine and cannot be downloaded")]
    Offline { name: String },
    #[error("not enough free space for {name}: it needs {} and {}", fmt(*needed), dirs_free(dirs))]
    NoSpace { name: String, needed: u64, dirs: Vec<(PathBuf, u64)> },
    #[error("the partial models of this node may take {} (EXO_PARTIAL_BUDGET_GB) but {name}'s window would take them to {}; raise the budget or give this node fewer layers", fmt(*budget), fmt(*needed))]
    OverBudget { name: String, needed: u64, budget: u64 },
    #[error("{what}: {reason}")]
    Hub { what: String, reason: String },
    #[error("download of {file} is corrupt ({reason}); the file was removed")]
    Corrupt { file: String, reason: String },
    #[error("{name} is in the {} ({}); exo only deletes from its writable models dirs", location.label(), path.display())]
    // `path`: relative to its models dir (see Store::relative)
    NotOurs { name: String, location: Location, path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn fmt(b: u64) -> String {
    crate::placement::units::fmt_bytes(b)
}

fn dirs_free(d: &[(PathBuf, u64)]) -> String {
    if d.is_empty() {
        return "no writable models dir is usable".into();
    }
    let v: Vec<String> = d.iter().map(|(p, f)| format!("{} has {} free", p.display(), fmt(*f))).collect();
    v.join(", ")
}

/// Where a name leads.
#[derive(Clone, Debug)]
pub enum Resolved {
    Local(LocalModel),
    /// Known but not on this machine: `exo pull` (or `exo run`) fetches it.
    Remote(RemoteModel),
}

#[derive(Clone, Debug)]
pub struct RemoteModel {
    pub name: String,
    pub repo: String,
    /// `None` for `hf.co/...` names until the repository is listed.
    pub files: Option<Vec<String>>,
    pub quant: Option<String>,
    pub size_hint: Option<u64>,
}

type FreeSpace = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

#[derive(Clone)]
pub struct Store {
    /// Writable, in order of preference.
    pub dirs: Vec<PathBuf>,
    /// Searched, never written.
    pub read_only: Vec<PathBuf>,
    pub hf_cache: Option<PathBuf>,
    pub ollama: Option<PathBuf>,
    pub offline: bool,
    pub endpoint: String,
    pub token: Option<String>,
    pub chunk_size: usize,
    /// Disk bytes partial models may take (EXO_PARTIAL_BUDGET_GB); least recently used go first.
    pub partial_budget: Option<u64>,
    /// Dirs besides the models dirs that a linked GGUF in a models dir may point into
    /// (EXO_LINK_TARGETS); a link pointing anywhere else is not a model.
    pub link_targets: Vec<PathBuf>,
    free_space: FreeSpace,
    /// Downloads and window fetches, running and recent (shared by every clone).
    pub transfers: Transfers,
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl Store {
    /// From the environment (docs/configuration.md).
    pub fn from_env() -> Store {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = env("HOME").map(PathBuf::from);
        let hf_home = env("HF_HOME").map(PathBuf::from).or_else(|| home.as_ref().map(|h| h.join(".cache/huggingface")));
        let hf_cache = env("HF_HUB_CACHE").map(PathBuf::from).or_else(|| hf_home.as_ref().map(|h| h.join("hub")));
        let token = env("HF_TOKEN").or_else(|| {
            let t = std::fs::read_to_string(hf_home.as_ref()?.join("token")).ok()?;
            Some(t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Store {
            dirs: crate::config::models_dirs(),
            read_only: crate::config::read_only_models_dirs(),
            hf_cache,
            ollama: env("OLLAMA_MODELS").map(PathBuf::from).or_else(|| home.map(|h| h.join(".ollama/models"))),
            offline: env("EXO_OFFLINE").is_some_and(|v| truthy(&v))
                || env("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            endpoint: env("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            token,
            chunk_size: 16 << 20,
            partial_budget: env("EXO_PARTIAL_BUDGET_GB")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|g| g.is_finite() && *g >= 0.0)
                .map(|g| (g * 1e9) as u64),
            link_targets: crate::config::link_targets(),
            free_space: Arc::new(|p: &Path| fs4::available_space(p)),
            transfers: Transfers::default(),
        }
    }

    /// Replaces how free space is measured (tests simulate a full disk with it).
    pub fn with_free_space(mut self, f: impl Fn(&Path) -> std::io::Result<u64> + Send + Sync + 'static) -> Store {
        self.free_space = Arc::new(f);
        self
    }

    fn hub(&self) -> Hub {
        Hub { endpoint: self.endpoint.clone(), token: self.token.clone(), chunk_size: self.chunk_size }
    }

    /// Where a linked GGUF may point: every dir models are read from, and `link_targets`
    /// (canonical paths; those that do not exist are left out).
    fn link_roots(&self) -> Vec<PathBuf> {
        let dirs = self.dirs.iter().chain(&self.read_only).chain(&self.hf_cache).chain(&self.ollama);
        dirs.chain(&self.link_targets).filter_map(|d| std::fs::canonicalize(d).ok()).collect()
    }

    /// Every model on this machine.
    pub fn local_models(&self) -> Vec<LocalModel> {
        let allowed = self.link_roots();
        let mut v = Vec::new();
        for d in &self.dirs {
            v.extend(local::scan_flat(d, Location::ModelsDir, &allowed));
            v.extend(local::scan_hub(&d.join("hf"), Location::ModelsDir, &allowed));
        }
        for d in &self.read_only {
            v.extend(local::scan_flat(d, Location::ReadOnlyDir, &allowed));
            v.extend(local::scan_hub(&d.join("hf"), Location::ReadOnlyDir, &allowed));
        }
        if let Some(c) = &self.hf_cache {
            v.extend(local::scan_hub(c, Location::HfCache, &allowed));
        }
        if let Some(o) = &self.ollama {
            v.extend(local::scan_ollama(o));
        }
        v
    }

    /// Partial models (windows of models) in the writable models dirs; never whole models.
    pub fn partials(&self) -> Vec<partial::Partial> {
        partial::scan(&self.dirs)
    }

    /// Where partial models are written: the first writable models dir.
    pub fn partial_dir(&self) -> Option<&Path> {
        self.dirs.first().map(PathBuf::as_path)
    }

    /// A partial model of `model` (`size` bytes whole) that holds layers `[begin, end)`.
    pub fn partial_window(&self, model: &str, size: u64, begin: u32, end: u32) -> Option<partial::Partial> {
        self.partials()
            .into_iter()
            .find(|p| p.sidecar.model == model && p.sidecar.size == size && p.has_window(begin, end))
    }

    /// What a window fetch into the models dirs may take: the free space as this store measures
    /// it, and the partial models' budget.
    pub fn room(&self) -> fetch::Room<'_> {
        fetch::Room { free: &*self.free_space, budget: self.partial_budget }
    }

    /// Applies the partial models' disk budget, keeping `keep` (the one just used).
    pub fn evict_partials(&self, keep: &Path) -> Vec<String> {
        match self.partial_budget {
            Some(b) => partial::evict(&self.dirs, b, keep),
            None => vec![],
        }
    }

    /// The single file of a hub model, described by the hub (size, SHA-256): what stages fetch
    /// their windows from. A split set cannot be fetched by window.
    pub async fn hub_file(&self, r: &RemoteModel) -> Result<HubFile, StoreError> {
        if self.offline {
            return Err(StoreError::Offline { name: r.name.clone() });
        }
        let hub = self.hub();
        let files = match &r.files {
            Some(f) => f.clone(),
            None => pick_files(&hub.list(&r.repo).await?, r.quant.as_deref()).ok_or_else(|| {
                StoreError::NotDownloadable { name: r.name.clone(), reason: format!("{} has no such GGUF", r.repo) }
            })?,
        };
        let [file] = files.as_slice() else {
            return Err(StoreError::NotDownloadable {
                name: r.name.clone(),
                reason: format!("a split set of {} files cannot be fetched by layer window; pull it", files.len()),
            });
        };
        let d = hub.describe(&r.repo, std::slice::from_ref(file)).await?.remove(0);
        let f = HubFile { repo: r.repo.clone(), file: d.path, size: d.size, sha256: d.sha256 };
        f.check().map_err(|source| StoreError::BadHubFile { name: r.name.clone(), source })?;
        Ok(f)
    }

    /// `f` on this node's hub (its own endpoint and token), checked to be the same file.
    pub async fn hub_range(&self, f: &HubFile) -> Result<HubRange, StoreError> {
        let name = format!("{}/{}", f.repo, f.file);
        if self.offline {
            return Err(StoreError::Offline { name });
        }
        f.check().map_err(|source| StoreError::BadHubFile { name: name.clone(), source })?;
        let hub = self.hub();
        let d = hub.describe(&f.repo, std::slice::from_ref(&f.file)).await?.remove(0);
        let differs = |what: String| StoreError::Hub { what: format!("{name} on {}", self.endpoint), reason: what };
        if d.size != f.size {
            return Err(differs(format!("the hub's file has {} bytes, expected {}", d.size, f.size)));
        }
        if let (Some(a), Some(b)) = (&d.sha256, &f.sha256) {
            if !a.eq_ignore_ascii_case(b) {
                return Err(differs(format!("the hub's file has sha256 {a}, expected {b}")));
            }
        }
        let f = HubFile { sha256: d.sha256.or_else(|| f.sha256.clone()), ..f.clone() };
        Ok(HubRange::new(hub.client()?, hub.url(&f.repo, &f.file), &f))
    }

    /// Resolves a MODEL argument without touching the network.
    /// A model by path (the CLI's) or by name.
    pub fn resolve(&self, name: &str) -> Result<Resolved, StoreError> {
        let p = Path::new(name);
        if p.is_file() {
            let paths = crate::gguf::split_paths(p)
                .filter(|s| s.len() > 1 && s[0] == p)
                .unwrap_or_else(|| vec![p.to_path_buf()]);
            return Ok(Resolved::Local(LocalModel {
                name: name.to_string(),
                size: paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum(),
                quant: quant_from_name(name),
                paths,
                location: Location::ModelsDir,
                repo: None,
            }));
        }
        self.resolve_name(name)
    }

    /// A model by name only: the models dirs, the caches, `hf.co/` names and the catalog; never
    /// a file path (names from the network go through here).
    pub fn resolve_name(&self, name: &str) -> Result<Resolved, StoreError> {
        let local = self.local_models();
        let bare = name.strip_suffix(":latest").unwrap_or(name);
        let wanted = [name.to_string(), bare.to_string(), format!("{bare}:latest")];
        if let Some(m) = local.iter().find(|m| wanted.contains(&m.name)) {
            return Ok(Resolved::Local(m.clone()));
        }
        if let Some(rest) = name.strip_prefix("hf.co/").or_else(|| name.strip_prefix("huggingface.co/")) {
            let (repo, quant) = match rest.split_once(':') {
                Some((r, q)) => (r.to_string(), Some(q.to_ascii_lowercase())),
                None => (rest.to_string(), None),
            };
            if repo.split('/').count() != 2 || repo.split('/').any(str::is_empty) {
                return Err(StoreError::NotFound {
                    name: name.into(),
                    hint: ": expected hf.co/ORG/REPO[:QUANT]".into(),
                });
            }
            // any quantization of that repository already here
            if let Some(m) =
                local.iter().find(|m| m.repo.as_deref() == Some(repo.as_str()) && (quant.is_none() || m.quant == quant))
            {
                return Ok(Resolved::Local(m.clone()));
            }
            return Ok(Resolved::Remote(RemoteModel { name: name.into(), repo, files: None, quant, size_hint: None }));
        }
        let (cname, quant) = match bare.split_once(':') {
            Some((c, q)) => (c, Some(q)),
            None => (bare, None),
        };
        if let Some(card) = catalog::find(cname) {
            let Some((q, qf)) = card.quant(quant) else {
                let qs: Vec<&str> = card.quant.keys().map(String::as_str).collect();
                return Err(StoreError::NotFound {
                    name: name.into(),
                    hint: format!(": {cname} comes in {}", qs.join(", ")),
                });
            };
            let files = qf.files.get().cloned();
            // the card's files already on disk under any models dir or read-only dir, flat
            if let Some(files) = &files {
                for d in self.dirs.iter().chain(&self.read_only) {
                    let paths: Vec<PathBuf> =
                        files.iter().map(|f| d.join(Path::new(f).file_name().unwrap_or_default())).collect();
                    if paths.iter().all(|p| p.is_file()) {
                        let location = if self.dirs.contains(d) { Location::ModelsDir } else { Location::ReadOnlyDir };
                        return Ok(Resolved::Local(LocalModel {
                            name: name.into(),
                            size: paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum(),
                            quant: Some(q.to_string()),
                            paths,
                            location,
                            repo: card.repo.get().cloned(),
                        }));
                    }
                }
            }
            let repo = card.repo.get().cloned().ok_or_else(|| StoreError::NotDownloadable {
                name: name.into(),
                reason: "the catalog does not know which repository holds its GGUFs".into(),
            })?;
            return Ok(Resolved::Remote(RemoteModel {
                name: name.into(),
                repo,
                files,
                quant: Some(q.to_string()),
                size_hint: qf.size_gb.get().map(|g| (g * 1e9) as u64),
            }));
        }
        Err(StoreError::NotFound { name: name.into(), hint: self.close_matches(bare, &local) })
    }

    fn close_matches(&self, name: &str, local: &[LocalModel]) -> String {
        let mut names: Vec<String> = local.iter().map(|m| m.name.clone()).collect();
        names.extend(catalog::cards().iter().map(|c| c.name.clone()));
        let mut scored: Vec<(usize, String)> = names
            .into_iter()
            .map(|n| (if n.contains(name) || name.contains(n.as_str()) { 0 } else { edit_distance(name, &n) }, n))
            .filter(|(d, _)| *d <= 3)
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        if scored.is_empty() {
            "; `exo list --all` shows what is available".into()
        } else {
            let v: Vec<String> = scored.into_iter().take(5).map(|(_, n)| n).collect();
            format!("; did you mean {}?", v.join(", "))
        }
    }

    /// Makes sure `name` is on this machine: returns it if already here, else downloads it.
    pub async fn pull(&self, name: &str, progress: Arc<dyn PullProgress>) -> Result<LocalModel, StoreError> {
        // directory scans are blocking work: off the async workers
        let (me, n) = (self.clone(), name.to_string());
        let resolved = tokio::task::spawn_blocking(move || me.resolve(&n))
            .await
            .map_err(|e| StoreError::Hub { what: format!("resolving {name}"), reason: e.to_string() })?;
        let r = match resolved? {
            Resolved::Local(m) => return Ok(m),
            Resolved::Remote(r) => r,
        };
        if self.offline {
            return Err(StoreError::Offline { name: name.into() });
        }
        let hub = self.hub();
        let files = match &r.files {
            Some(f) => f.clone(),
            None => pick_files(&hub.list(&r.repo).await?, r.quant.as_deref()).ok_or_else(|| {
                StoreError::NotDownloadable {
                    name: name.into(),
                    reason: match &r.quant {
                        Some(q) => format!("{} has no complete {q} GGUF", r.repo),
                        None => format!("{} has no GGUF files", r.repo),
                    },
                }
            })?,
        };
        let remote = hub.describe(&r.repo, &files).await?;
        let dir = self.choose_dir(name, &r.repo, &remote)?;
        let total = remote.iter().map(|f| f.size).sum();
        progress.planned(total, remote.len());
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let shown = Arc::new(Shown {
            inner: progress,
            handle: self.transfers.start(TransferKind::Download, name, &r.repo, total),
        });
        let result = hub.download(&dir, &r.repo, &remote, shown.clone()).await;
        if let Ok(s) = Arc::try_unwrap(shown) {
            s.handle.finish(&result);
        }
        let paths = result?;
        Ok(LocalModel {
            name: name.into(),
            size: remote.iter().map(|f| f.size).sum(),
            quant: r.quant.clone().or_else(|| quant_from_name(&files[0])),
            paths,
            location: Location::ModelsDir,
            repo: Some(r.repo),
        })
    }

    /// The first writable dir with room for what is still missing (a dir already holding part
    /// of this download is preferred, so that it resumes there). Never a read-only dir.
    fn choose_dir(&self, name: &str, repo: &str, files: &[RemoteFile]) -> Result<PathBuf, StoreError> {
        let folder = format!("models--{}", repo.replace('/', "--"));
        let mut ordered: Vec<&PathBuf> = self.dirs.iter().filter(|d| d.join("hf").join(&folder).exists()).collect();
        ordered.extend(self.dirs.iter().filter(|d| !d.join("hf").join(&folder).exists()));
        let mut seen = Vec::new();
        for d in ordered {
            let cache = d.join("hf");
            let missing: u64 = files.iter().filter(|f| Hub::cached(&cache, repo, f).is_none()).map(|f| f.size).sum();
            if std::fs::create_dir_all(d).is_err() {
                continue;
            }
            let free = match (self.free_space)(d) {
                Ok(f) => f,
                Err(_) => continue,
            };
            if free >= missing + missing / 100 {
                return Ok(cache);
            }
            seen.push((d.clone(), free));
        }
        let needed = files.iter().map(|f| f.size).sum();
        Err(StoreError::NoSpace { name: name.into(), needed, dirs: seen })
    }

    /// Deletes a model by name, only when every file of it (links resolved) lies inside one of
    /// the writable models dirs. Errors name files relative to their models dir.
    pub fn remove(&self, name: &str) -> Result<LocalModel, StoreError> {
        let m = match self.resolve_name(name)? {
            Resolved::Local(m) => m,
            Resolved::Remote(_) => {
                return Err(StoreError::NotFound { name: name.into(), hint: ": it is not on this machine".into() })
            }
        };
        // canonical paths: `..` and links cannot lead out of the dirs
        let dirs: Vec<PathBuf> = self.dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).collect();
        let inside = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| dirs.iter().any(|d| c.starts_with(d)));
        let ours =
            m.location == Location::ModelsDir && m.paths.iter().all(|p| inside(p) && p.parent().is_some_and(inside));
        if !ours {
            let location = if m.location == Location::ModelsDir { Location::ReadOnlyDir } else { m.location.clone() };
            return Err(StoreError::NotOurs { name: name.into(), location, path: self.relative(&m.paths[0]) });
        }
        let io = |p: &Path| {
            let path = self.relative(p);
            move |source| StoreError::Io { path, source }
        };
        for p in &m.paths {
            let target = std::fs::canonicalize(p).map_err(io(p))?;
            // the file itself (a hub blob, or the same file reached through a linked models dir),
            // then the link to it when there is one
            std::fs::remove_file(&target).map_err(io(p))?;
            let is_link = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
            if is_link {
                std::fs::remove_file(p).map_err(io(p))?;
            }
            tracing::info!(model = name, file = %self.relative(p).display(), "deleted");
        }
        Ok(m)
    }

    /// `p` relative to the models dir it is in (errors and logs show no absolute paths); its
    /// file name when it is in none.
    pub fn relative(&self, p: &Path) -> PathBuf {
        let dirs = self.dirs.iter().chain(&self.read_only).chain(&self.hf_cache).chain(&self.ollama);
        dirs.filter_map(|d| p.strip_prefix(d).ok())
            .next()
            .map(Path::to_path_buf)
            .or_else(|| p.file_name().map(PathBuf::from))
            .unwrap_or_default()
    }
}

/// From a repository listing: the GGUF(s) of one quantization (a whole split set), preferring
/// Q4_K_M when none is asked for.
pub fn pick_files(listing: &[String], quant: Option<&str>) -> Option<Vec<String>> {
    let ggufs: Vec<&String> = listing.iter().filter(|f| f.ends_with(".gguf")).collect();
    let sets: Vec<Vec<String>> = ggufs
        .iter()
        .filter_map(|f| match crate::gguf::split_paths(Path::new(f.as_str())) {
            Some(set) if set.len() > 1 => {
                let names: Vec<String> = set.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                (names[0] == **f && names.iter().all(|n| listing.contains(n))).then_some(names)
            }
            _ => Some(vec![f.to_string()]),
        })
        .collect();
    let of = |q: &str| sets.iter().find(|s| quant_from_name(&s[0]).as_deref() == Some(q)).cloned();
    match quant {
        Some(q) => of(&q.to_ascii_lowercase()),
        None => of("q4_k_m").or_else(|| sets.first().cloned()),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dirs: Vec<PathBuf>) -> Store {
        Store { dirs, read_only: vec![], hf_cache: None, ollama: None, offline: true, ..Store::from_env() }
    }

    #[test]
    fn resolves_paths_stems_and_split_sets() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tiny.gguf"), b"x").unwrap();
        std::fs::write(d.path().join("big-00001-of-00002.gguf"), b"x").unwrap();
        std::fs::write(d.path().join("big-00002-of-00002.gguf"), b"x").unwrap();
        std::fs::write(d.path().join("half-00001-of-00002.gguf"), b"x").unwrap();
        let s = store(vec![d.path().to_path_buf()]);
        let local = |n: &str| match s.resolve(n).unwrap() {
            Resolved::Local(m) => m.paths,
            Resolved::Remote(r) => panic!("{n} resolved remote: {r:?}"),
        };
        assert_eq!(local("tiny"), vec![d.path().join("tiny.gguf")]);
        assert_eq!(local("tiny:latest"), vec![d.path().join("tiny.gguf")]);
        assert_eq!(local("big").len(), 2);
        let p = d.path().join("tiny.gguf");
        assert_eq!(local(p.to_str().unwrap()), vec![p.clone()]);
        // an incomplete split set is not a model
        assert!(matches!(s.resolve("half"), Err(StoreError::NotFound { .. })));
        let err = s.resolve("tiyn").unwrap_err().to_string();
        assert!(err.contains("did you mean tiny"), "{err}");
        // catalog names resolve to the hub when not here
        match s.resolve("llama-3.1-8b:q8_0").unwrap() {
            Resolved::Remote(r) => {
                assert_eq!(r.quant.as_deref(), Some("q8_0"));
                assert!(r.files.unwrap()[0].ends_with("Q8_0.gguf"));
            }
            other => panic!("{other:?}"),
        }
        assert!(s.resolve("llama-3.1-8b:q1").unwrap_err().to_string().contains("comes in"));
    }

    #[test]
    fn picks_whole_split_sets() {
        let listing: Vec<String> = [
            "a-Q8_0-00001-of-00002.gguf",
            "a-Q8_0-00002-of-00002.gguf",
            "a-Q4_K_M.gguf",
            "a-Q6_K-00001-of-00002.gguf",
            "README.md",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(pick_files(&listing, None).unwrap(), vec!["a-Q4_K_M.gguf"]);
        assert_eq!(pick_files(&listing, Some("Q8_0")).unwrap().len(), 2);
        assert_eq!(pick_files(&listing, Some("q6_k")), None, "incomplete set");
    }
}
