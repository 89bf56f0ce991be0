//! Downloads from a Hugging Face hub (HF_ENDPOINT, HF_TOKEN) with `hf-hub`: into a models dir
//! in the hub's cache layout, resumable (hf-hub keeps `.sync.part` files with a committed-bytes
//! trailer), atomic (a file appears under its name only when complete), verified (size, and
//! sha256 where the hub gives it as the LFS etag).

use super::StoreError;
use hf_hub::api::tokio::{Api, ApiBuilder, Progress};
use hf_hub::Cache;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Progress of a pull, reported to whoever shows it (the CLI draws bars, the API streams NDJSON).
pub trait PullProgress: Send + Sync {
    /// Before the first byte: what the whole pull will fetch.
    fn planned(&self, _total_bytes: u64, _files: usize) {}
    /// A file starts (or resumes); `size` is its full size.
    fn file_started(&self, file: &str, size: u64);
    /// `n` more bytes of the current file are on disk.
    fn advanced(&self, n: u64);
    fn file_done(&self, file: &str);
    /// A status line ("verifying ...").
    fn note(&self, msg: &str);
}

/// Reports nothing.
pub struct Quiet;
impl PullProgress for Quiet {
    fn file_started(&self, _: &str, _: u64) {}
    fn advanced(&self, _: u64) {}
    fn file_done(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

#[derive(Clone)]
struct Adapter(Arc<dyn PullProgress>);

impl Progress for Adapter {
    async fn init(&mut self, size: usize, filename: &str) {
        self.0.file_started(filename, size as u64);
    }
    async fn update(&mut self, size: usize) {
        self.0.advanced(size as u64);
    }
    async fn finish(&mut self) {}
}

/// A file to fetch, as the hub describes it.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    pub path: String,
    pub size: u64,
    /// The LFS sha256 when the etag is one.
    pub sha256: Option<String>,
}

pub struct Hub {
    pub endpoint: String,
    pub token: Option<String>,
    /// Bytes per resumable chunk.
    pub chunk_size: usize,
}

impl Hub {
    fn api(&self, cache_dir: &Path) -> Result<Api, StoreError> {
        ApiBuilder::new()
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_cache_dir(cache_dir.to_path_buf())
            .with_progress(false)
            .with_chunk_size(Some(self.chunk_size))
            .build()
            .map_err(|e| StoreError::Hub { what: "cannot set up the hub client".into(), reason: e.to_string() })
    }

    /// The client downloads use (the token, the user agent), for ranged reads.
    pub(super) fn client(&self) -> Result<reqwest::Client, StoreError> {
        Ok(self.api(&std::env::temp_dir())?.client().clone())
    }

    pub(super) fn url(&self, repo: &str, file: &str) -> String {
        format!("{}/{repo}/resolve/main/{file}", self.endpoint.trim_end_matches('/'))
    }

    /// The repository's file names.
    pub async fn list(&self, repo: &str) -> Result<Vec<String>, StoreError> {
        let tmp = std::env::temp_dir();
        let info = self
            .api(&tmp)?
            .model(repo.to_string())
            .info()
            .await
            .map_err(|e| StoreError::Hub { what: format!("cannot list {repo}"), reason: e.to_string() })?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// Size and checksum of each file (one small ranged request each).
    pub async fn describe(&self, repo: &str, files: &[String]) -> Result<Vec<RemoteFile>, StoreError> {
        let tmp = std::env::temp_dir();
        let api = self.api(&tmp)?;
        let mut out = Vec::new();
        for f in files {
            let err = |reason: String| StoreError::Hub { what: format!("cannot look up {repo}/{f}"), reason };
            let r = api
                .client()
                .get(self.url(repo, f))
                .header("Range", "bytes=0-0")
                .send()
                .await
                .map_err(|e| err(e.to_string()))?
                .error_for_status()
                .map_err(|e| err(e.to_string()))?;
            let h = r.headers();
            let size = h
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit('/').next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| err("no size (Content-Range) in the answer".into()))?;
            let etag = h
                .get("x-linked-etag")
                .or_else(|| h.get("etag"))
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim_matches('"').trim_start_matches("W/").trim_matches('"').to_string());
            let sha256 = etag.filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()));
            out.push(RemoteFile { path: f.clone(), size, sha256 });
        }
        Ok(out)
    }

    /// The complete, verified local copy of `file` under `cache_dir`, if there is one.
    pub fn cached(cache_dir: &Path, repo: &str, f: &RemoteFile) -> Option<PathBuf> {
        let p = Cache::new(cache_dir.to_path_buf()).model(repo.to_string()).get(&f.path)?;
        (std::fs::metadata(&p).ok()?.len() == f.size).then_some(p)
    }

    /// Downloads `files` of `repo` into `cache_dir` (hub layout) and verifies them. A file that
    /// fails verification is deleted. Interrupted files resume on the next call.
    pub async fn download(
        &self,
        cache_dir: &Path,
        repo: &str,
        files: &[RemoteFile],
        progress: Arc<dyn PullProgress>,
    ) -> Result<Vec<PathBuf>, StoreError> {
        let api = self.api(cache_dir)?;
        let remote = api.model(repo.to_string());
        let mut paths = Vec::new();
        for f in files {
            if let Some(p) = Self::cached(cache_dir, repo, f) {
                progress.note(&format!("{} already present", f.path));
                paths.push(p);
                continue;
            }
            let p = remote.download_with_progress(&f.path, Adapter(progress.clone())).await.map_err(|e| {
                StoreError::Hub {
                    what: format!("download of {repo}/{} interrupted (run the pull again to resume)", f.path),
                    reason: e.to_string(),
                }
            })?;
            progress.file_done(&f.path);
            // hashing gigabytes is blocking work: off the async workers
            let (p2, f2, pr) = (p.clone(), f.clone(), progress.clone());
            tokio::task::spawn_blocking(move || verify(&p2, &f2, pr.as_ref()))
                .await
                .map_err(|e| StoreError::Hub { what: format!("verifying {}", f.path), reason: e.to_string() })??;
            paths.push(p);
        }
        Ok(paths)
    }
}

/// Size, then sha256 when known; a bad file is removed (blob and pointer).
fn verify(p: &Path, f: &RemoteFile, progress: &dyn PullProgress) -> Result<(), StoreError> {
    let remove = || {
        if let Ok(blob) = std::fs::canonicalize(p) {
            let _ = std::fs::remove_file(blob);
        }
        let _ = std::fs::remove_file(p);
    };
    let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len != f.size {
        remove();
        return Err(StoreError::Corrupt { file: f.path.clone(), reason: format!("{len} bytes, expected {}", f.size) });
    }
    if let Some(want) = &f.sha256 {
        progress.note(&format!("verifying sha256 of {}", f.path));
        let got = sha256_file(p).map_err(|source| StoreError::Io { path: p.to_path_buf(), source })?;
        if !got.eq_ignore_ascii_case(want) {
            remove();
            return Err(StoreError::Corrupt { file: f.path.clone(), reason: format!("sha256 {got}, expected {want}") });
        }
    }
    Ok(())
}

pub fn sha256_file(p: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
