//! Partial models: a GGUF whose header is complete and whose data region holds only the tensors
//! of some layer windows, each at its original offset in a sparse file, so that the patched
//! loader (which reads only its window's tensors) loads it like the whole file. A sidecar
//! (`NAME.gguf.partial.json`) lists the byte ranges present, each with its SHA-256.
//!
//! Partials live in `<models dir>/partial/`, which the model scans never enter: resolution never
//! takes a partial file for a whole one.
//!
//! Why SHA-256: `sha2` is already a dependency (the hub's whole-file check), it picks the CPU's
//! SHA instructions at run time (about 2 GB/s per core where present), and a whole assembled file
//! can be checked against the hub's own SHA-256.

use super::StoreError;
use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Gaps up to this size between two needed tensors are alignment padding: one range.
const PADDING: u64 = 256;
/// Most ranges a sidecar may list (a model has a few thousand tensors at most).
const MAX_RANGES: usize = 1 << 16;

/// One present byte range `[start, end)` of the file and the SHA-256 of its bytes (hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub start: u64,
    pub end: u64,
    pub sha256: String,
    /// The source had no hash of this range (the hub): it was taken by its exact size and
    /// hashed here, so that later disk corruption is still caught; the bytes themselves are
    /// checked once the whole file is assembled (against the hub's SHA-256 of the file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
}

/// The sidecar of a partial file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sidecar {
    /// The model's name (what `exo run` and the peers call it).
    pub model: String,
    /// Size of the whole file.
    pub size: u64,
    pub n_layer: u32,
    /// Layer windows whose every byte is present (merged, sorted).
    pub windows: Vec<(u32, u32)>,
    pub pieces: Vec<Piece>,
    /// Seconds since the epoch of the last load or fetch (least recently used go first).
    pub last_used: u64,
    /// The hub file the bytes come from, when known (a coordinator without the model records
    /// where its header came from, for the stages to fetch their windows from the same file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<super::HubFile>,
}

/// A partial model on disk.
#[derive(Clone, Debug)]
pub struct Partial {
    pub path: PathBuf,
    pub sidecar: Sidecar,
}

/// The bytes a stage of layers `[begin, end)` needs: the header, its layers' tensors, the token
/// embedding on a first stage, the head (and the embedding when tied) on a last stage, and every
/// small global tensor (norms, rope factors). Sorted, merged ranges `[start, end)`.
pub fn window_ranges(g: &GgufFile, n_layer: u32, begin: u32, end: u32) -> Vec<(u64, u64)> {
    let (first, last) = (begin == 0, end >= n_layer);
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    let mut v = vec![(0, g.data_offset)];
    for t in &g.tensors {
        let needed = match layer_of(&t.name) {
            Some(il) if il < n_layer => (begin..end).contains(&il),
            Some(_) => last, // blocks past n_layer (draft heads) go with the output
            None => match t.name.as_str() {
                "token_embd.weight" => first || (last && tied),
                "output.weight" => last,
                _ => true,
            },
        };
        if needed && t.bytes > 0 {
            let s = g.data_offset.saturating_add(t.offset);
            v.push((s, s.saturating_add(t.bytes).min(g.file_size)));
        }
    }
    merge(v, PADDING)
}

fn layer_of(name: &str) -> Option<u32> {
    name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok()
}

/// Sorts and merges ranges closer than `gap`.
pub fn merge(mut v: Vec<(u64, u64)>, gap: u64) -> Vec<(u64, u64)> {
    v.retain(|r| r.1 > r.0);
    v.sort();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1.saturating_add(gap) => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `want` minus `have` (both sorted, merged).
pub fn missing(want: &[(u64, u64)], have: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(mut s, e) in want {
        for &(hs, he) in have {
            if he <= s || hs >= e {
                continue;
            }
            if hs > s {
                out.push((s, hs));
            }
            s = s.max(he);
            if s >= e {
                break;
            }
        }
        if s < e {
            out.push((s, e));
        }
    }
    out
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A file name for a model name (names may hold `/` and `:`): the name with other characters as
/// `_`, and then a short hash of the exact name, so that `org/m:q4` and `org/m_q4` get two files.
fn file_stem(model: &str) -> String {
    let plain: String = model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if plain == model {
        return plain;
    }
    format!("{plain}-{}", &sha256_hex(model.as_bytes())[..8])
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256 of `[start, end)` of a file, read in 4 MiB pieces.
pub fn hash_range(path: &Path, start: u64, end: u64) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at)?;
        h.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hex(&h.finalize()))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

impl Partial {
    pub fn sidecar_path(path: &Path) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(".partial.json");
        PathBuf::from(s)
    }

    /// Where the partial of `model` lives under the models dir `dir`.
    pub fn path_in(dir: &Path, model: &str) -> PathBuf {
        dir.join("partial").join(format!("{}.gguf", file_stem(model)))
    }

    /// Reads a partial file's sidecar; `None` when absent or unreadable (the file is then
    /// treated as empty).
    pub fn open(path: &Path) -> Option<Partial> {
        let mut s = String::new();
        std::fs::File::open(Self::sidecar_path(path)).ok()?.take(64 << 20).read_to_string(&mut s).ok()?;
        let sidecar: Sidecar = serde_json::from_str(&s).ok()?;
        let len = std::fs::metadata(path).ok()?.len();
        // a sidecar that does not describe this file is ignored
        let sane = sidecar.size == len
            && sidecar.pieces.len() <= MAX_RANGES
            && sidecar.pieces.iter().all(|p| p.start < p.end && p.end <= len);
        sane.then(|| Partial { path: path.to_path_buf(), sidecar })
    }

    /// Creates (or reopens) the sparse file of `size` bytes for `model` under `dir`.
    pub fn create(dir: &Path, model: &str, size: u64, n_layer: u32) -> Result<Partial, StoreError> {
        let path = Self::path_in(dir, model);
        if let Some(p) = Self::open(&path).filter(|p| p.sidecar.model == model && p.sidecar.size == size) {
            return Ok(p);
        }
        let parent = path.parent().expect("under a dir");
        std::fs::create_dir_all(parent).map_err(io(parent))?;
        let f = std::fs::File::create(&path).map_err(io(&path))?;
        f.set_len(size).map_err(io(&path))?;
        let p = Partial {
            path,
            sidecar: Sidecar {
                model: model.into(),
                size,
                n_layer,
                windows: vec![],
                pieces: vec![],
                last_used: now_secs(),
                hub: None,
            },
        };
        p.save()?;
        Ok(p)
    }

    /// Writes the sidecar atomically (a crash leaves the old one or the new one).
    pub fn save(&self) -> Result<(), StoreError> {
        let side = Self::sidecar_path(&self.path);
        let tmp = side.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.sidecar).expect("plain data serializes");
        std::fs::write(&tmp, body).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &side).map_err(io(&side))
    }

    /// The present ranges, merged.
    pub fn present(&self) -> Vec<(u64, u64)> {
        merge(self.sidecar.pieces.iter().map(|p| (p.start, p.end)).collect(), 0)
    }

    /// Whether every byte of `want` is present.
    pub fn covers(&self, want: &[(u64, u64)]) -> bool {
        missing(want, &self.present()).is_empty()
    }

    /// Writes `data` at `start` (not yet recorded as present: see [`Partial::record`]).
    pub fn write_at(&self, start: u64, data: &[u8]) -> Result<(), StoreError> {
        if start.checked_add(data.len() as u64).is_none_or(|e| e > self.sidecar.size) {
            return Err(StoreError::Corrupt {
                file: self.path.display().to_string(),
                reason: format!("a write at {start} of {} bytes runs past the file", data.len()),
            });
        }
        let f = std::fs::OpenOptions::new().write(true).open(&self.path).map_err(io(&self.path))?;
        f.write_all_at(data, start).map_err(io(&self.path))
    }

    /// Records a verified range and saves the sidecar: a transfer killed after this keeps it.
    pub fn record(&mut self, piece: Piece) -> Result<(), StoreError> {
        self.sidecar.pieces.retain(|p| p.end <= piece.start || p.start >= piece.end);
        self.sidecar.pieces.push(piece);
        self.sidecar.pieces.sort_by_key(|p| p.start);
        self.save()
    }

    /// Records that window `[begin, end)` is complete and marks the file used now.
    pub fn add_window(&mut self, begin: u32, end: u32) -> Result<(), StoreError> {
        let mut w: Vec<(u64, u64)> = self.sidecar.windows.iter().map(|&(b, e)| (b as u64, e as u64)).collect();
        w.push((begin as u64, end as u64));
        self.sidecar.windows = merge(w, 0).into_iter().map(|(b, e)| (b as u32, e as u32)).collect();
        self.sidecar.last_used = now_secs();
        self.save()
    }

    /// Marks the file used now (eviction drops the least recently used first).
    pub fn touch(&mut self) -> Result<(), StoreError> {
        self.sidecar.last_used = now_secs();
        self.save()
    }

    /// Whether a complete window holds `[begin, end)`.
    pub fn has_window(&self, begin: u32, end: u32) -> bool {
        self.sidecar.windows.iter().any(|&(b, e)| b <= begin && end <= e)
    }

    /// Hashes every present range again; the ones that no longer match are dropped from the
    /// sidecar (and their windows with them) and returned, so that they are fetched again.
    pub fn verify(&mut self) -> Result<Vec<Piece>, StoreError> {
        let mut bad = Vec::new();
        for p in &self.sidecar.pieces {
            if hash_range(&self.path, p.start, p.end).map_err(io(&self.path))? != p.sha256 {
                bad.push(p.clone());
            }
        }
        if !bad.is_empty() {
            self.sidecar.pieces.retain(|p| !bad.contains(p));
            self.sidecar.windows.clear(); // recomputed by the next fetch
            self.save()?;
        }
        Ok(bad)
    }

    /// Whether every byte of the file is present.
    pub fn complete(&self) -> bool {
        self.covers(&[(0, self.sidecar.size)])
    }

    /// Every byte present and checked against a source's hash (per range, or the hub's SHA-256
    /// of the assembled file): as good as the whole file for sending windows to peers.
    pub fn verified_whole(&self) -> bool {
        self.complete() && self.sidecar.pieces.iter().all(|p| !p.unverified)
    }

    /// Bytes the file takes on disk (allocated blocks).
    pub fn allocated(&self) -> u64 {
        allocated_bytes(&self.path)
    }

    /// Deletes the file and its sidecar.
    pub fn remove(&self) -> Result<(), StoreError> {
        std::fs::remove_file(&self.path).map_err(io(&self.path))?;
        let side = Self::sidecar_path(&self.path);
        std::fs::remove_file(&side).map_err(io(&side))
    }
}

/// Bytes a file takes on disk (`st_blocks` × 512), what `du` shows.
pub fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Every partial model under the models dirs `dirs`.
pub fn scan(dirs: &[PathBuf]) -> Vec<Partial> {
    let mut v = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d.join("partial")) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "gguf") {
                v.extend(Partial::open(&p));
            }
        }
    }
    v.sort_by(|a, b| a.sidecar.model.cmp(&b.sidecar.model));
    v
}

/// Deletes least recently used partials (never `keep`) until they take at most `budget` bytes
/// on disk; returns the models deleted.
pub fn evict(dirs: &[PathBuf], budget: u64, keep: &Path) -> Vec<String> {
    let mut all = scan(dirs);
    all.sort_by_key(|p| p.sidecar.last_used);
    let mut total: u64 = all.iter().map(Partial::allocated).sum();
    let mut gone = Vec::new();
    for p in all {
        if total <= budget {
            break;
        }
        if p.path == keep {
            continue;
        }
        let a = p.allocated();
        if p.remove().is_ok() {
            tracing::info!(model = %p.sidecar.model, bytes = a, "evicted a partial model (disk budget)");
            total = total.saturating_sub(a);
            gone.push(p.sidecar.model);
        }
    }
    gone
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_differ_get_files_that_differ() {
        let d = Path::new("/m");
        assert_eq!(Partial::path_in(d, "tiny-llama"), Path::new("/m/partial/tiny-llama.gguf"));
        let (a, b) = (Partial::path_in(d, "hf.co/org/m:q4"), Partial::path_in(d, "hf.co/org/m_q4"));
        assert_ne!(a, b);
        assert_eq!(b.parent(), Some(Path::new("/m/partial")));
        for p in [&a, &b] {
            let name = p.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with("hf.co_org_m_q4") && !name.contains('/') && !name.contains(':'), "{name}");
        }
        assert_eq!(Partial::path_in(d, "../x").parent(), Some(Path::new("/m/partial")));
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(merge(vec![(10, 20), (0, 5), (21, 30), (40, 40)], 1), vec![(0, 5), (10, 30)]);
        assert_eq!(merge(vec![(10, 20), (0, 5), (21, 30)], 0), vec![(0, 5), (10, 20), (21, 30)]);
        assert_eq!(missing(&[(0, 100)], &[(10, 20), (30, 40)]), vec![(0, 10), (20, 30), (40, 100)]);
        assert_eq!(missing(&[(0, 10), (50, 60)], &[(0, 60)]), vec![]);
        assert_eq!(missing(&[(5, 15)], &[(0, 10)]), vec![(10, 15)]);
    }

    #[test]
    fn sidecar_roundtrip_rejects_a_foreign_file() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Partial::create(d.path(), "hf.co/a/b:q4", 1 << 20, 4).unwrap();
        let file = p.path.file_name().unwrap().to_str().unwrap();
        assert!(p.path.parent().unwrap().ends_with("partial") && file.starts_with("hf.co_a_b_q4-"), "{file}");
        p.write_at(4096, b"hello").unwrap();
        p.record(Piece { start: 4096, end: 4101, sha256: sha256_hex(b"hello"), unverified: false }).unwrap();
        assert!(p.write_at((1 << 20) - 2, b"abc").is_err(), "past the end");
        let q = Partial::open(&p.path).unwrap();
        assert!(q.covers(&[(4096, 4101)]) && !q.covers(&[(4000, 4101)]));
        // a corrupted byte is found and its range dropped
        let mut q = q;
        p.write_at(4097, b"X").unwrap();
        assert_eq!(q.verify().unwrap().len(), 1);
        assert!(q.sidecar.pieces.is_empty());
        // a sidecar for another size is ignored
        std::fs::File::options().write(true).open(&p.path).unwrap().set_len(10).unwrap();
        assert!(Partial::open(&p.path).is_none());
    }

    #[test]
    fn eviction_drops_least_recently_used_first() {
        let d = tempfile::tempdir().unwrap();
        let dirs = vec![d.path().to_path_buf()];
        for (i, name) in ["old", "mid", "new"].iter().enumerate() {
            let mut p = Partial::create(d.path(), name, 1 << 20, 1).unwrap();
            p.write_at(0, &vec![1u8; 256 << 10]).unwrap();
            p.sidecar.last_used = 1000 + i as u64;
            p.save().unwrap();
        }
        let one = allocated_bytes(&Partial::path_in(d.path(), "old"));
        assert!(one >= 256 << 10);
        let keep = Partial::path_in(d.path(), "mid");
        // room for two: the oldest goes
        assert_eq!(evict(&dirs, 2 * one, &keep), vec!["old"]);
        // room for none: everything but the one in use
        assert_eq!(evict(&dirs, 0, &keep), vec!["new"]);
        let left: Vec<String> = scan(&dirs).into_iter().map(|p| p.sidecar.model).collect();
        assert_eq!(left, vec!["mid"]);
    }
}
