//! Fetching a layer window into a partial model from a source that has the whole file (a peer,
//! the hub; the [`RangeSource`] trait keeps the transfer logic apart from the wire). Chunks are
//! requested with a bounded number in flight, written at their offsets, hashed in order, and a
//! range is recorded in the sidecar only once its hash matches the source's: a transfer killed
//! half-way resumes from the verified ranges, and a range found corrupt is fetched again.
//!
//! A source without per-range hashes (the hub) has its ranges taken by exact size, hashed here
//! and marked unverified; once every byte of the file is present it is checked against the
//! source's SHA-256 of the whole file, and on a mismatch those ranges are dropped.

use super::partial::{self, hex, missing, window_ranges, Partial, Piece};
use super::StoreError;
use sha2::Digest;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

/// Bytes per chunk request.
pub const CHUNK: u32 = 4 << 20;
/// Chunk requests in flight at once (bounds the memory a transfer holds to 4 × 4 MiB).
pub const IN_FLIGHT: usize = 4;
/// Largest header a source may announce (vocabularies of big models take tens of MB).
pub const MAX_HEADER: u64 = 1 << 30;
/// Largest range recorded as one piece: a transfer killed half-way loses at most this much.
pub const PIECE: u64 = 64 << 20;
/// Attempts per range before a mismatch is an error.
const ATTEMPTS: usize = 2;
/// When the whole window is present and the rest of the file is at most this (padding, unused
/// tensors), the rest is fetched too: the assembled file can then be checked whole.
const SMALL_REST: u64 = 1 << 20;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a source says of the whole file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileInfo {
    pub size: u64,
    /// Where the data section begins (the header is `[0, data_offset)`).
    pub data_offset: u64,
}

/// A source of a model file's bytes.
pub trait RangeSource: Send + Sync + 'static {
    /// Who it is, for messages.
    fn name(&self) -> String;
    fn info(&self) -> BoxFut<'_, Result<FileInfo, SourceError>>;
    /// SHA-256 (hex) of `[start, end)`; `None` from a source that has no per-range hashes.
    fn hash(&self, start: u64, end: u64) -> BoxFut<'_, Result<Option<String>, SourceError>>;
    /// SHA-256 (hex) of the whole file, when the source knows it without reading it.
    fn whole_sha256(&self) -> Option<String> {
        None
    }
    /// `len` (at most [`CHUNK`]) bytes from `start`.
    fn read(&self, start: u64, len: u32) -> BoxFut<'_, Result<Vec<u8>, SourceError>>;
}

/// Why a source did not deliver what was asked (or delivered something unusable).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The peer connection failed, or the peer refused (the peer source's typed transport error;
    /// boxed so that the store does not depend on the peer protocol).
    #[error(transparent)]
    Peer(Box<dyn std::error::Error + Send + Sync>),
    #[error("unexpected {what} answer")]
    Unexpected { what: String },
    #[error("{detail}")]
    Request { detail: String },
    #[error("the hub answered {status}{}", if *ranges_ignored { " to a Range request (ranges not supported)" } else { "" })]
    Status { status: String, ranges_ignored: bool },
    #[error("the hub answered Content-Range {got:?} to a request for {want:?}")]
    ContentRange { got: String, want: String },
    #[error("reading bytes {start}..: {detail}")]
    Reading { start: u64, detail: String },
    #[error("the hub sent more than the {len} bytes asked at {start}")]
    TooMuch { len: u64, start: u64 },
    #[error("asked for {len} bytes at {start}, got {got}")]
    Short { len: u64, start: u64, got: u64 },
    #[error("{len} bytes at {start} are not within the file's {size}")]
    OutOfRange { start: u64, len: u32, size: u64 },
    #[error("no complete GGUF header in the first {cap} bytes")]
    NoHeader { cap: u64 },
    #[error("implausible header of {data_offset} bytes in a file of {size}")]
    Implausible { data_offset: u64, size: u64 },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    /// A task that waited for the source ended (cancelled or panicked).
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    /// Any other failure, said in words (test sources).
    #[error("{0}")]
    Other(String),
}

impl From<String> for SourceError {
    fn from(s: String) -> SourceError {
        SourceError::Other(s)
    }
}

impl From<&str> for SourceError {
    fn from(s: &str) -> SourceError {
        SourceError::Other(s.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {model} from {source_name}: {reason}")]
    Source { model: String, source_name: String, reason: SourceError },
    #[error("fetching {model} from {source_name}: layers {begin}..{end} are not within the model's {n_layer}")]
    Layers { model: String, source_name: String, begin: u32, end: u32, n_layer: u32 },
    #[error("{model}: bytes {start}..{end} from {source_name} do not match its hash after {ATTEMPTS} attempts")]
    Mismatch { model: String, source_name: String, start: u64, end: u64 },
    #[error(
        "{model}: the assembled file's sha256 is {got}, {source_name} says {want}; its unverified ranges were dropped"
    )]
    WholeMismatch { model: String, source_name: String, got: String, want: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a fetch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes received from the source (headers of the protocol not counted).
    pub bytes: u64,
    /// Ranges found corrupt on disk and fetched again.
    pub repaired: usize,
}

/// Progress of one fetch: bytes done of bytes to move.
pub type OnProgress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Makes the partial file of `model` under `dir` hold at least the header (`[0, data_offset)`),
/// from `src`. What is already present is verified first (corrupt ranges are dropped and counted
/// in `repaired`).
pub async fn fetch_header(
    dir: &Path,
    model: &str,
    src: &Arc<dyn RangeSource>,
    progress: &OnProgress,
) -> Result<(Partial, FileInfo, Fetched), FetchError> {
    let err = |reason: SourceError| FetchError::Source { model: model.into(), source_name: src.name(), reason };
    let info = src.info().await.map_err(err)?;
    if info.data_offset == 0 || info.data_offset > info.size.min(MAX_HEADER) {
        return Err(err(SourceError::Implausible { data_offset: info.data_offset, size: info.size }));
    }
    let (d, m) = (dir.to_path_buf(), model.to_string());
    let (mut p, repaired) = blocking(move || -> Result<(Partial, usize), StoreError> {
        let mut p = Partial::create(&d, &m, info.size, 0)?;
        let bad = p.verify()?;
        if !bad.is_empty() {
            tracing::warn!(model = %m, ranges = bad.len(), "corrupt ranges in a partial model; fetching them again");
        }
        Ok((p, bad.len()))
    })
    .await?;
    let mut done = Fetched { bytes: 0, repaired };
    let header = [(0, info.data_offset)];
    for (s, e) in missing(&header, &p.present()) {
        done.bytes += fetch_range(&mut p, src, model, (s, e), progress, (0, e - s)).await?;
    }
    Ok((p, info, done))
}

/// Makes the partial file of `model` under `dir` hold layers `[begin, end)`: what is already
/// present is verified and kept, the rest comes from `src` in pieces of at most `piece` bytes
/// (each hashed and recorded on its own; [`PIECE`] normally). Returns the file's path.
pub async fn fetch_window(
    dir: &Path,
    model: &str,
    window: (u32, u32),
    src: Arc<dyn RangeSource>,
    piece: u64,
    progress: OnProgress,
) -> Result<(PathBuf, Fetched), FetchError> {
    let room = Room { free: &|d: &Path| fs4::available_space(d), budget: None };
    fetch_window_on(dir, model, window, src, piece, progress, &room).await
}

/// Free bytes on the file system of a dir.
pub type FreeSpace = dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync;

/// What a fetch may take on disk.
pub struct Room<'a> {
    /// The free space of a dir's file system.
    pub free: &'a FreeSpace,
    /// Bytes every partial model in the dir may take together (EXO_PARTIAL_BUDGET_GB).
    pub budget: Option<u64>,
}

/// Bytes kept free beyond what a fetch writes (the sidecar, logs, the rest of the system).
pub const SPARE: u64 = 16 << 20;

/// [`fetch_window`] within `room`: a window whose missing bytes do not fit the free space, or
/// that would take this partial past the budget, is refused before any of them is fetched
/// (naming what is needed and what there is); within the budget, the least recently used other
/// partials make room first; a fetch that runs out of space anyway removes its partial file
/// unless it holds finished windows: a disk is never left full by a transfer that cannot finish.
pub async fn fetch_window_on(
    dir: &Path,
    model: &str,
    (begin, end): (u32, u32),
    src: Arc<dyn RangeSource>,
    piece: u64,
    progress: OnProgress,
    room: &Room<'_>,
) -> Result<(PathBuf, Fetched), FetchError> {
    let r = fetch_window_inner(dir, model, (begin, end), src, piece, progress, room).await;
    if let Err(e) = &r {
        if is_out_of_space(e) {
            // only one that holds no finished window: those stay usable
            let p = Partial::open(&Partial::path_in(dir, model));
            if let Some(p) = p.filter(|p| p.sidecar.windows.is_empty()) {
                tracing::warn!(model, "out of disk space: removing the partial model");
                let _ = p.remove();
            }
        }
    }
    r
}

fn is_out_of_space(e: &FetchError) -> bool {
    match e {
        FetchError::Store(StoreError::NoSpace { .. } | StoreError::OverBudget { .. }) => true,
        FetchError::Store(StoreError::Io { source, .. }) => source.kind() == std::io::ErrorKind::StorageFull,
        _ => false,
    }
}

async fn fetch_window_inner(
    dir: &Path,
    model: &str,
    (begin, end): (u32, u32),
    src: Arc<dyn RangeSource>,
    piece: u64,
    progress: OnProgress,
    room: &Room<'_>,
) -> Result<(PathBuf, Fetched), FetchError> {
    let piece = piece.max(1);
    // the header first: it says where the window's tensors are
    let (mut p, info, mut done) = fetch_header(dir, model, &src, &progress).await?;
    let path = p.path.clone();
    let (pp, b, e) = (path.clone(), begin, end);
    let want = blocking(move || -> Result<(Vec<(u64, u64)>, u32), StoreError> {
        let bad =
            |e: crate::gguf::GgufError| StoreError::Corrupt { file: pp.display().to_string(), reason: e.to_string() };
        let files = crate::gguf::ModelFiles::open(&pp).map_err(bad)?;
        let shape = crate::gguf::ModelShape::from_files(&files).map_err(bad)?;
        let g = crate::gguf::GgufFile::open(&pp).map_err(bad)?;
        Ok((window_ranges(&g, shape.n_layer, b, e.min(shape.n_layer)), shape.n_layer))
    })
    .await?;
    let (mut want, n_layer) = want;
    if begin >= end || end > n_layer {
        return Err(FetchError::Layers { model: model.into(), source_name: src.name(), begin, end, n_layer });
    }
    p.sidecar.n_layer = n_layer;
    // every layer: the little rest of the file too, so that it can be checked whole
    let rest: u64 = missing(&[(0, info.size)], &partial::merge(want.clone(), 0)).iter().map(|r| r.1 - r.0).sum();
    if begin == 0 && end == n_layer && rest <= SMALL_REST {
        want = vec![(0, info.size)];
    }
    let todo: Vec<(u64, u64)> = missing(&want, &p.present())
        .into_iter()
        .flat_map(|(s, e)| (s..e).step_by(piece as usize).map(move |a| (a, (a + piece).min(e))))
        .collect();
    let total: u64 = todo.iter().map(|r| r.1 - r.0).sum();
    // the partial file is sparse: what it takes more is what is still to be written
    if let Some(budget) = room.budget {
        let after = p.allocated().saturating_add(total);
        if after > budget {
            return Err(StoreError::OverBudget { name: model.into(), needed: after, budget }.into());
        }
        // the others make room now, not after the fetch: the budget holds throughout
        let (dirs, keep) = (vec![dir.to_path_buf()], path.clone());
        blocking(move || Ok(partial::evict(&dirs, budget - total, &keep))).await?;
    }
    let available = (room.free)(dir).map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
    if total.saturating_add(SPARE) > available {
        return Err(StoreError::NoSpace {
            name: model.into(),
            needed: total + SPARE,
            dirs: vec![(dir.to_path_buf(), available)],
        }
        .into());
    }
    let mut moved = 0;
    for (s, e) in todo {
        moved += fetch_range(&mut p, &src, model, (s, e), &progress, (moved, total)).await?;
    }
    done.bytes += moved;
    let whole = src.whole_sha256();
    let checked = blocking(move || {
        let r = check_whole(&mut p, whole.as_deref())?;
        if r.is_ok() {
            p.add_window(begin, end)?;
        }
        Ok(r)
    })
    .await?;
    if let Err((got, want)) = checked {
        return Err(FetchError::WholeMismatch { model: model.into(), source_name: src.name(), got, want });
    }
    Ok((path, done))
}

/// Once every byte of the file is present, ranges taken without a hash from their source are
/// checked by the whole file's SHA-256 `want`: on a match they count as verified; on a mismatch
/// they are dropped and `Err((got, want))` comes back. Blocking (hashes the file).
fn check_whole(p: &mut Partial, want: Option<&str>) -> Result<Result<(), (String, String)>, StoreError> {
    if !p.sidecar.pieces.iter().any(|x| x.unverified) || !p.complete() {
        return Ok(Ok(()));
    }
    let Some(want) = want else {
        tracing::warn!(model = %p.sidecar.model, "assembled from ranges without hashes and no sha256 of the whole file to check");
        return Ok(Ok(()));
    };
    let got = super::sha256_file(&p.path).map_err(|source| StoreError::Io { path: p.path.clone(), source })?;
    if got.eq_ignore_ascii_case(want) {
        p.sidecar.pieces.iter_mut().for_each(|x| x.unverified = false);
        p.save()?;
        return Ok(Ok(()));
    }
    tracing::warn!(model = %p.sidecar.model, %got, %want, "the assembled file does not match its sha256; dropping its unverified ranges");
    p.sidecar.pieces.retain(|x| !x.unverified);
    p.sidecar.windows.clear();
    p.save()?;
    Ok(Err((got, want.to_string())))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io { path: PathBuf::new(), source: std::io::Error::other(e) })?
}

/// Fetches `[start, end)` in chunks, verifies it against the source's hash (a second attempt
/// when it does not match; a source without hashes: by size alone, marked unverified), checks
/// what landed on disk and records it. Returns the bytes received.
async fn fetch_range(
    p: &mut Partial,
    src: &Arc<dyn RangeSource>,
    model: &str,
    (start, end): (u64, u64),
    progress: &OnProgress,
    (base, total): (u64, u64),
) -> Result<u64, FetchError> {
    let err = |reason: SourceError| FetchError::Source { model: model.into(), source_name: src.name(), reason };
    let mut asked = Some({
        let s = src.clone();
        tokio::spawn(async move { s.hash(start, end).await })
    });
    let mut received = 0;
    let mut want_hash = None;
    let mut got = String::new();
    for attempt in 0..ATTEMPTS {
        // every chunk is checked for its exact length as it arrives
        got = download(p, src, start, end, &err, &mut |at| progress(base + at - start, total)).await?;
        received += end - start;
        if let Some(job) = asked.take() {
            want_hash = job.await.map_err(|e| err(e.into()))?.map_err(&err)?;
        }
        match want_hash.as_deref() {
            None => break,
            Some(w) if w == got => break,
            Some(_) => {}
        }
        tracing::warn!(model, start, end, attempt, "a range did not match the source's hash; fetching it again");
        if attempt + 1 == ATTEMPTS {
            return Err(FetchError::Mismatch { model: model.into(), source_name: src.name(), start, end });
        }
    }
    let unverified = want_hash.is_none();
    let want = want_hash.unwrap_or(got);
    // what landed on disk is what was hashed
    let pp = p.path.clone();
    let on_disk = blocking(move || {
        partial::hash_range(&pp, start, end).map_err(|source| StoreError::Io { path: pp.clone(), source })
    })
    .await?;
    if on_disk != want {
        return Err(FetchError::Mismatch { model: model.into(), source_name: "this node's disk".into(), start, end });
    }
    let mut q = p.clone();
    let piece = Piece { start, end, sha256: want, unverified };
    *p = blocking(move || q.record(piece).map(|_| q)).await?;
    Ok(received)
}

/// Streams `[start, end)` into the file with at most [`IN_FLIGHT`] chunks requested at once;
/// returns the SHA-256 of the bytes received, in order.
async fn download(
    p: &Partial,
    src: &Arc<dyn RangeSource>,
    start: u64,
    end: u64,
    err: &impl Fn(SourceError) -> FetchError,
    on_progress: &mut impl FnMut(u64),
) -> Result<String, FetchError> {
    type Job = tokio::task::JoinHandle<Result<Vec<u8>, SourceError>>;
    let mut queue: VecDeque<(u64, u64, Job)> = VecDeque::new();
    let received = async {
        let mut h = sha2::Sha256::new();
        let (mut next, mut at) = (start, start);
        while at < end {
            while queue.len() < IN_FLIGHT && next < end {
                let n = (end - next).min(CHUNK as u64);
                let (s, off) = (src.clone(), next);
                queue.push_back((off, n, tokio::spawn(async move { s.read(off, n as u32).await })));
                next += n;
            }
            let (off, n, job) = queue.pop_front().expect("a chunk is in flight");
            let data = job.await.map_err(|e| err(e.into()))?.map_err(err)?;
            if data.len() as u64 != n {
                return Err(err(SourceError::Short { len: n, start: off, got: data.len() as u64 }));
            }
            // hashing 4 MiB and writing it are blocking work
            let pp = p.clone();
            h = blocking(move || {
                h.update(&data);
                pp.write_at(off, &data).map(|_| h)
            })
            .await?;
            at += n;
            on_progress(at);
        }
        Ok(hex(&h.finalize()))
    }
    .await;
    // on a failure the chunks still in flight are of no use
    queue.iter().for_each(|j| j.2.abort());
    received
}
