//! The Hugging Face hub as a [`RangeSource`]: a model file's bytes by HTTP Range requests,
//! through the same endpoint, token and client as the downloads (hf-hub's). The hub has no
//! per-range hashes: ranges are taken by their exact size and the whole file is checked against
//! the hub's SHA-256 once assembled (see `fetch`).

use super::fetch::{BoxFut, FileInfo, RangeSource, SourceError, MAX_HEADER};
use crate::gguf::GgufFile;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The first read of the header; it grows fourfold until the header parses (bounded by
/// [`MAX_HEADER`]). Big vocabularies take a few MiB.
const FIRST_PROBE: u64 = 2 << 20;
/// Longest wait for one ranged request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Tries per ranged request: a connection dropped part-way is asked again.
const ATTEMPTS: u32 = 3;
/// Longest repository or path component accepted from the network.
const MAX_NAME: usize = 96;

/// A hub reference from the network that is refused before any request is made with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubFileError {
    #[error("hub repository {repo:?} is not ORG/NAME")]
    Repo { repo: String },
    #[error("hub file {file:?} is not a relative path to a .gguf")]
    File { file: String },
    #[error("hub sha256 is not 64 hex digits")]
    Sha256,
}

/// A single-file model on the hub: what a coordinator tells its stages to fetch from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubFile {
    /// `ORG/NAME`
    pub repo: String,
    /// The file's path in the repository.
    pub file: String,
    pub size: u64,
    /// SHA-256 (hex) of the whole file, when the hub gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl HubFile {
    /// Checks a reference that came from the network: `ORG/NAME` and a relative path of plain
    /// names (no `..`, no leading `/`), a GGUF file, a hex SHA-256.
    pub fn check(&self) -> Result<(), HubFileError> {
        let plain = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_NAME
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        let repo: Vec<&str> = self.repo.split('/').collect();
        if repo.len() != 2 || !repo.iter().all(|p| plain(p)) {
            return Err(HubFileError::Repo { repo: self.repo.clone() });
        }
        let parts: Vec<&str> = self.file.split('/').collect();
        if parts.len() > 8 || !parts.iter().all(|p| plain(p)) || !self.file.ends_with(".gguf") {
            return Err(HubFileError::File { file: self.file.clone() });
        }
        if self.sha256.as_ref().is_some_and(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(HubFileError::Sha256);
        }
        Ok(())
    }
}

/// One hub file, read by ranges.
pub struct HubRange {
    client: reqwest::Client,
    url: String,
    label: String,
    size: u64,
    sha256: Option<String>,
    /// The start of the file read to parse the header: reads inside it are answered from here.
    head: tokio::sync::Mutex<Option<Arc<[u8]>>>,
}

impl HubRange {
    pub(super) fn new(client: reqwest::Client, url: String, f: &HubFile) -> HubRange {
        HubRange {
            client,
            url,
            label: format!("the hub ({}/{})", f.repo, f.file),
            size: f.size,
            sha256: f.sha256.clone(),
            head: tokio::sync::Mutex::new(None),
        }
    }

    /// Exactly `[start, start + len)`, from a 206 answer whose Content-Range says so.
    async fn get(&self, start: u64, len: u64) -> Result<Vec<u8>, SourceError> {
        let last = start + len - 1;
        let r = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={start}-{last}"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| SourceError::Request { detail: e.to_string() })?;
        let status = r.status();
        if status != StatusCode::PARTIAL_CONTENT {
            // a 200 is the whole file: it is not read
            return Err(SourceError::Status { status: status.to_string(), ranges_ignored: status.is_success() });
        }
        let want = format!("bytes {start}-{last}/{}", self.size);
        let got = r.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("(none)");
        if got != want {
            return Err(SourceError::ContentRange { got: got.to_string(), want });
        }
        let mut out = Vec::with_capacity(len as usize);
        let mut r = r;
        while let Some(c) = r.chunk().await.map_err(|e| SourceError::Reading { start, detail: e.to_string() })? {
            if (out.len() + c.len()) as u64 > len {
                return Err(SourceError::TooMuch { len, start });
            }
            out.extend_from_slice(&c);
        }
        if out.len() as u64 != len {
            return Err(SourceError::Short { len, start, got: out.len() as u64 });
        }
        Ok(out)
    }

    /// [`HubRange::get`], asked again when it fails (a dropped connection, a timeout).
    async fn get_again(&self, start: u64, len: u64) -> Result<Vec<u8>, SourceError> {
        let mut attempt = 1;
        loop {
            match self.get(start, len).await {
                Ok(b) => return Ok(b),
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(source = %self.label, start, len, attempt, "{e}; asking again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl RangeSource for HubRange {
    fn name(&self) -> String {
        self.label.clone()
    }

    /// Reads the start of the file until its GGUF header parses.
    fn info(&self) -> BoxFut<'_, Result<FileInfo, SourceError>> {
        Box::pin(async move {
            let mut head = self.head.lock().await;
            let mut buf: Vec<u8> = head.as_deref().map(<[u8]>::to_vec).unwrap_or_default();
            let cap = self.size.min(MAX_HEADER);
            // what was read before is parsed again first: asked twice, the header is read once
            let mut want = if buf.is_empty() { FIRST_PROBE.min(cap) } else { buf.len() as u64 };
            loop {
                if want > buf.len() as u64 {
                    let more = self.get_again(buf.len() as u64, want - buf.len() as u64).await?;
                    buf.extend_from_slice(&more);
                }
                match GgufFile::parse_prefix(&buf, Path::new(&self.label), self.size) {
                    Ok(Some(g)) => {
                        *head = Some(buf.into());
                        return Ok(FileInfo { size: self.size, data_offset: g.data_offset });
                    }
                    Ok(None) if (buf.len() as u64) < cap => want = (buf.len() as u64 * 4).min(cap),
                    Ok(None) => return Err(SourceError::NoHeader { cap }),
                    Err(e) => return Err(e.into()),
                }
            }
        })
    }

    fn hash(&self, _start: u64, _end: u64) -> BoxFut<'_, Result<Option<String>, SourceError>> {
        Box::pin(async { Ok(None) })
    }

    fn whole_sha256(&self) -> Option<String> {
        self.sha256.clone()
    }

    fn read(&self, start: u64, len: u32) -> BoxFut<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            let end = start.checked_add(len as u64).filter(|&e| len > 0 && e <= self.size);
            let Some(end) = end else {
                return Err(SourceError::OutOfRange { start, len, size: self.size });
            };
            if let Some(h) = self.head.lock().await.as_ref().filter(|h| end <= h.len() as u64) {
                return Ok(h[start as usize..end as usize].to_vec());
            }
            self.get_again(start, len as u64).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_from_the_network_are_checked() {
        let ok = HubFile { repo: "org/model-GGUF".into(), file: "q4/model.Q4_K_M.gguf".into(), size: 1, sha256: None };
        assert!(ok.check().is_ok());
        let bad = |f: &dyn Fn(&mut HubFile)| {
            let mut h = ok.clone();
            f(&mut h);
            h.check().unwrap_err().to_string()
        };
        assert!(bad(&|h| h.repo = "org".into()).contains("ORG/NAME"));
        assert!(bad(&|h| h.repo = "org/../x".into()).contains("ORG/NAME"));
        assert!(bad(&|h| h.repo = "a/b?c=d".into()).contains("ORG/NAME"));
        assert!(bad(&|h| h.file = "../../etc/passwd.gguf".into()).contains("relative path"));
        assert!(bad(&|h| h.file = "/abs.gguf".into()).contains("relative path"));
        assert!(bad(&|h| h.file = "model.bin".into()).contains(".gguf"));
        assert!(bad(&|h| h.file = format!("{}.gguf", "a".repeat(200))).contains("relative path"));
        assert!(bad(&|h| h.sha256 = Some("zz".into())).contains("sha256"));
        let mut h = ok.clone();
        h.repo = "org".into();
        assert_eq!(h.check(), Err(HubFileError::Repo { repo: "org".into() }));
    }
}
