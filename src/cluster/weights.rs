//! Weights over the peer connection: serving byte ranges of the models this node holds whole
//! (by name, never by path), and fetching a stage's window from such a peer into a partial model
//! when this node lacks the model.

use super::{ClusterNode, PeerStatus};
use crate::store::fetch::{self, BoxFut, FileInfo, RangeSource, SourceError};
use crate::store::Resolved;
use crate::transport::{
    Conn, LoadRefusal, LoadStage, Message, TransportError, WeightsAsk, WeightsError, WeightsMeta, MAX_WEIGHTS_READ,
};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for one chunk or hash (a hash reads the whole range on the source).
const ASK_TIMEOUT: Duration = Duration::from_secs(120);
/// Asks read or hashed at once (each answer may hold a 16 MiB buffer until it is sent).
const SERVE_AT_ONCE: usize = 8;
/// Asks waiting or being answered, from all peers together: beyond it an ask is refused at once,
/// so a flood of asks (or a peer that never reads its answers) holds no more memory or tasks.
/// An asker keeps 4 chunks and a hash in flight per fetch.
const MAX_OUTSTANDING: usize = 64;
/// Longest wait to send a "busy" refusal.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest range hashed for one ask: a piece, or a header.
const MAX_HASHED: u64 = if fetch::PIECE > fetch::MAX_HEADER { fetch::PIECE } else { fetch::MAX_HEADER };

static SERVING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SERVE_AT_ONCE);
static OUTSTANDING: AtomicUsize = AtomicUsize::new(0);

/// One outstanding ask, counted until dropped.
struct Outstanding;

impl Outstanding {
    fn take() -> Option<Outstanding> {
        if OUTSTANDING.fetch_add(1, Ordering::SeqCst) >= MAX_OUTSTANDING {
            OUTSTANDING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Outstanding)
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        OUTSTANDING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers one [`WeightsAsk`] (in its own task: reads and hashes are blocking work), at most
/// [`SERVE_AT_ONCE`] at a time; an answer not taken within [`ASK_TIMEOUT`] is dropped.
pub(super) fn serve(node: &Arc<ClusterNode>, ask: WeightsAsk, conn: Conn, request: u64) {
    let store = node.store.clone();
    let Some(counted) = Outstanding::take() else {
        // briefly: a peer flooding asks without reading gets no pile of waiting refusals
        let busy = Message::Error(WeightsError::Busy { max: MAX_OUTSTANDING }.into());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(BUSY_TIMEOUT, conn.tell(request, &busy)).await;
        });
        return;
    };
    tokio::spawn(async move {
        let _counted = counted;
        let Ok(_permit) = SERVING.acquire().await else { return };
        let r = tokio::task::spawn_blocking(move || answer(&store, ask))
            .await
            .unwrap_or_else(|e| Err(WeightsError::Io { detail: e.to_string() }));
        let m = r.unwrap_or_else(|e| Message::Error(e.into()));
        let _ = tokio::time::timeout(ASK_TIMEOUT, conn.tell(request, &m)).await;
    });
}

fn io(e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Io { detail: e.to_string() }
}

/// The whole single-file model `model` in this node's store, and its size.
fn whole(store: &crate::store::Store, model: &str) -> Result<(PathBuf, u64), WeightsError> {
    match store.resolve_name(model) {
        Ok(Resolved::Local(m)) if m.paths.len() == 1 => Ok((m.paths[0].clone(), m.size)),
        Ok(Resolved::Local(_)) => Err(WeightsError::SplitSet { model: model.to_string() }),
        // a partial assembled whole and verified (e.g. every layer fetched from the hub)
        _ => match store.partials().into_iter().find(|p| p.sidecar.model == model && p.verified_whole()) {
            Some(p) => Ok((p.path, p.sidecar.size)),
            None => Err(WeightsError::NotHere { model: model.to_string() }),
        },
    }
}

fn answer(store: &crate::store::Store, ask: WeightsAsk) -> Result<Message, WeightsError> {
    match ask {
        WeightsAsk::Info { model } => {
            let (path, size) = whole(store, &model)?;
            let g = crate::gguf::GgufFile::open(&path).map_err(io)?;
            Ok(Message::WeightsMeta(WeightsMeta::Info { size, data_offset: g.data_offset }))
        }
        WeightsAsk::Hash { model, start, end } => {
            let (path, size) = whole(store, &model)?;
            if start >= end || end > size {
                return Err(WeightsError::Range { start, end, size });
            }
            if end - start > MAX_HASHED {
                return Err(WeightsError::TooLong { start, end, max: MAX_HASHED });
            }
            let sha256 = crate::store::partial::hash_range(&path, start, end).map_err(io)?;
            Ok(Message::WeightsMeta(WeightsMeta::Hash { sha256 }))
        }
        WeightsAsk::Read { model, start, len } => {
            if len == 0 || len > MAX_WEIGHTS_READ {
                return Err(WeightsError::Len { len, max: MAX_WEIGHTS_READ });
            }
            let (path, size) = whole(store, &model)?;
            if start.checked_add(len as u64).is_none_or(|e| e > size) {
                return Err(WeightsError::PastEnd { start, len, size });
            }
            let mut buf = vec![0u8; len as usize];
            let f = std::fs::File::open(&path).map_err(io)?;
            f.read_exact_at(&mut buf, start).map_err(io)?;
            Ok(Message::WeightsData(buf))
        }
    }
}

/// A peer that holds the whole model.
pub struct PeerSource {
    conn: Conn,
    model: String,
    /// What the peer said of the file (asked once: a fetch checks the size, then reads the header).
    info: tokio::sync::OnceCell<FileInfo>,
}

impl PeerSource {
    pub fn new(conn: Conn, model: &str) -> PeerSource {
        PeerSource { conn, model: model.to_string(), info: tokio::sync::OnceCell::new() }
    }

    async fn ask(&self, a: WeightsAsk) -> Result<Message, TransportError> {
        self.conn.call(&Message::WeightsAsk(a), ASK_TIMEOUT).await
    }
}

impl RangeSource for PeerSource {
    fn name(&self) -> String {
        format!("node {}", self.conn.peer().node_name)
    }

    fn info(&self) -> BoxFut<'_, Result<FileInfo, SourceError>> {
        Box::pin(async move {
            let ask = || async {
                match self.ask(WeightsAsk::Info { model: self.model.clone() }).await? {
                    Message::WeightsMeta(WeightsMeta::Info { size, data_offset }) => Ok(FileInfo { size, data_offset }),
                    other => Err(unexpected(&other)),
                }
            };
            self.info.get_or_try_init(ask).await.cloned()
        })
    }

    fn hash(&self, start: u64, end: u64) -> BoxFut<'_, Result<Option<String>, SourceError>> {
        Box::pin(async move {
            match self
                .ask(WeightsAsk::Hash { model: self.model.clone(), start, end })
                .await
                .map_err(|e| e.to_string())?
            {
                Message::WeightsMeta(WeightsMeta::Hash { sha256 }) if sha256.len() == 64 => Ok(Some(sha256)),
                other => Err(unexpected(&other)),
            }
        })
    }

    fn read(&self, start: u64, len: u32) -> BoxFut<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            match self
                .ask(WeightsAsk::Read { model: self.model.clone(), start, len })
                .await
                .map_err(|e| e.to_string())?
            {
                Message::WeightsData(b) => Ok(b),
                other => Err(unexpected(&other)),
            }
        })
    }
}

fn unexpected(m: &Message) -> SourceError {
    SourceError::Unexpected { what: format!("{:?}", m.kind()) }
}

/// Most sources a load request may name (each is tried in turn).
const MAX_SOURCES: usize = 16;

/// The peer addresses of `holders` (nodes holding the model whole: name, address), fastest
/// first for node `to`: by the bandwidth of the link holder -> `to` (the holder's own figure,
/// else `to`'s for the reverse), ties and holders without a figure by name. `here_id` and `here`
/// are this node's id and name, `peers` what it knows of the others.
pub fn sources_for(
    here_id: &str,
    here: &str,
    peers: &[PeerStatus],
    to: &str,
    holders: &[(String, String)],
) -> Vec<String> {
    // the direction the bytes travel, holder -> `to`, from the same figures placement prices
    // its source with (each end's own measurement first), so the preview's source is tried first
    let links = super::links::pairwise(here_id, here, peers);
    let rate = |h: &str| links.iter().find(|l| l.from == h && l.to == to).and_then(|l| l.bandwidth).unwrap_or(0.0);
    let mut v: Vec<(f64, &(String, String))> =
        holders.iter().filter(|(name, _)| name != to).map(|h| (rate(&h.0), h)).collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1 .0.cmp(&b.1 .0)));
    v.into_iter().map(|(_, h)| h.1.clone()).collect()
}

/// A window of `ls.model` kept from before, verified (needs no source).
async fn kept(node: &Arc<ClusterNode>, ls: &LoadStage) -> Option<PathBuf> {
    let (store, model, size) = (node.store.clone(), ls.model.clone(), ls.model_size);
    let (begin, end) = (ls.range.begin, ls.range.end);
    tokio::task::spawn_blocking(move || {
        let mut p = store.partial_window(&model, size, begin, end)?;
        p.verify().ok().filter(|bad| bad.is_empty())?;
        // reused: the last to be evicted
        if let Err(e) = p.touch() {
            tracing::warn!(model = %model, "cannot record the use of a partial model: {e}");
        }
        Some(p.path)
    })
    .await
    .ok()
    .flatten()
}

/// A partial model of `ls.model` holding this stage's window: one already here (verified), or
/// fetched from the first source that answers (the peers in the order given, then the hub with
/// this node's own endpoint and token).
pub(super) async fn obtain(node: &Arc<ClusterNode>, ls: &LoadStage) -> Result<PathBuf, LoadRefusal> {
    let me = node.hello.node_name.clone();
    let no_model = || LoadRefusal::NoModel { node: me.clone(), model: ls.model.clone() };
    let Some(dir) = node.store.partial_dir().map(PathBuf::from) else { return Err(no_model()) };
    // a window kept from before needs no source (and no round trip to one)
    if let Some(path) = kept(node, ls).await {
        return Ok(path);
    }
    let peers: Vec<&String> = ls.sources.iter().filter(|a| **a != node.hello.peer_addr).take(MAX_SOURCES).collect();
    if peers.is_empty() && ls.hub.is_none() {
        return Err(no_model());
    }
    let mut tried = Vec::new();
    for addr in peers {
        let conn = match node.conn(addr).await {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("node at {addr}: {e}"));
                continue;
            }
        };
        let src = Arc::new(PeerSource::new(conn, &ls.model));
        match fetch_from(node, ls, &dir, src).await? {
            Ok(path) => return Ok(path),
            Err(e) => tried.push(e.to_string()),
        }
    }
    match &ls.hub {
        Some(h) if h.size != ls.model_size => {
            tried.push(format!("the hub: its file has {} bytes, the coordinator's {}", h.size, ls.model_size))
        }
        Some(h) => match node.store.hub_range(h).await {
            Ok(src) => match fetch_from(node, ls, &dir, Arc::new(src)).await? {
                Ok(path) => return Ok(path),
                Err(e) => tried.push(e.to_string()),
            },
            Err(e) => tried.push(format!("the hub: {e}")),
        },
        None => tried.push("the hub: the coordinator named no hub file".into()),
    }
    Err(LoadRefusal::Unobtainable { node: me, model: ls.model.clone(), tried })
}

/// Why one source could not send the window (the next one is tried).
#[derive(Debug, thiserror::Error)]
enum SourceFailed {
    #[error("{source_name}: its file has {theirs} bytes, the coordinator's {want}")]
    Size { source_name: String, theirs: u64, want: u64 },
    #[error("{source_name}: {reason}")]
    Info { source_name: String, reason: SourceError },
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
}

/// Fetches the window from `src`: `Ok(Err(why))` when this source failed (the next one is
/// tried), `Err` when the load must be refused.
async fn fetch_from(
    node: &Arc<ClusterNode>,
    ls: &LoadStage,
    dir: &std::path::Path,
    src: Arc<dyn RangeSource>,
) -> Result<Result<PathBuf, SourceFailed>, LoadRefusal> {
    // the source's file must be the coordinator's before anything is written: another size would
    // recreate the partial file, dropping the windows it holds
    match src.info().await {
        Ok(i) if i.size == ls.model_size => {}
        Ok(i) => return Ok(Err(SourceFailed::Size { source_name: src.name(), theirs: i.size, want: ls.model_size })),
        Err(reason) => return Ok(Err(SourceFailed::Info { source_name: src.name(), reason })),
    }
    let t = std::time::Instant::now();
    let (model, from) = (ls.model.clone(), src.name());
    // a line every 2 s: a window of a big model takes minutes
    let shown = std::sync::Mutex::new(std::time::Instant::now());
    let handle = Arc::new(node.store.transfers.start(crate::store::TransferKind::Window, &ls.model, &from, 0));
    let recorded = handle.clone();
    let progress: fetch::OnProgress = Arc::new(move |done, total| {
        recorded.progress(done, total);
        let mut shown = shown.lock().unwrap();
        if shown.elapsed() >= Duration::from_secs(2) {
            *shown = std::time::Instant::now();
            tracing::info!(model = %model, from = %from, done, total, "fetching the window");
        }
    });
    let (begin, end) = (ls.range.begin, ls.range.end);
    let room = node.store.room();
    let fetched =
        fetch::fetch_window_on(dir, &ls.model, (begin, end), src.clone(), fetch::PIECE, progress, &room).await;
    if let Ok(h) = Arc::try_unwrap(handle) {
        h.finish(&fetched);
    }
    let (path, done) = match fetched {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.into())),
    };
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if size != ls.model_size {
        let me = node.hello.node_name.clone();
        return Err(LoadRefusal::ModelSize { node: me, model: ls.model.clone(), here: size, theirs: ls.model_size });
    }
    tracing::info!(model = %ls.model, from = %src.name(), bytes = done.bytes, repaired = done.repaired,
        seconds = format!("{:.2}", t.elapsed().as_secs_f64()), range = %ls.range, "window in place");
    let (n, keep) = (node.clone(), path.clone());
    let _ = tokio::task::spawn_blocking(move || {
        n.store.evict_partials(&keep);
        n.refresh_held();
    })
    .await;
    Ok(Ok(path))
}

impl From<crate::transport::TransportError> for crate::store::fetch::SourceError {
    fn from(e: crate::transport::TransportError) -> Self {
        crate::store::fetch::SourceError::Peer(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_ordered_fastest_first_for_the_stage_node() {
        let link = |name: &str, bw: Option<f64>| crate::cluster::holdings::LinkFigure {
            node_id: format!("id-{name}"),
            name: name.into(),
            rtt_ms: None,
            bandwidth: bw,
        };
        let peer = |name: &str, bw: Option<f64>, links| PeerStatus {
            node_id: format!("id-{name}"),
            name: name.into(),
            address: format!("{name}:1"),
            rtt_ms: None,
            bandwidth: bw,
            last_seen_ms_ago: 0,
            profile: None,
            held: vec![],
            links,
            key: String::new(),
        };
        let h = |n: &str| (n.to_string(), format!("{n}:1"));
        let order =
            |peers: &[PeerStatus], to: &str, holders: &[(String, String)]| sources_for("id-a", "a", peers, to, holders);
        // this node is a; b measured b -> c and b -> d; c measured c -> a (a's own figure for
        // c stands for a -> c) and c -> b (b's own figure wins); d measured nothing
        let peers = vec![
            peer("b", Some(5e8), vec![link("c", Some(2e8)), link("d", Some(1e6))]),
            peer("c", Some(1e9), vec![link("a", Some(1e7)), link("b", Some(3e9))]),
            peer("d", None, vec![]),
        ];
        let holders = [h("d"), h("b"), h("a")];
        // to c: a -> c 1e9 (a's figure), b -> c 2e8 (b's figure, not c's 3e9), d unknown
        assert_eq!(order(&peers, "c", &holders), ["a:1", "b:1", "d:1"]);
        // to a: b -> a is b's figure (none), so a's for a -> b (5e8); d none; a never itself
        assert_eq!(order(&peers, "a", &holders), ["b:1", "d:1"]);
        // to d: b measured b -> d; a nothing for d: by name after
        assert_eq!(order(&peers, "d", &holders), ["b:1", "a:1"]);
        // a hostile NaN or negative figure counts as unknown; unknowns by name
        let peers = vec![peer("b", Some(f64::NAN), vec![]), peer("d", Some(-1.0), vec![])];
        assert_eq!(order(&peers, "a", &holders), ["b:1", "d:1"]);
        let peers = vec![peer("b", Some(f64::NAN), vec![]), peer("d", Some(1.0), vec![])];
        assert_eq!(order(&peers, "a", &holders), ["d:1", "b:1"]);
    }

    #[test]
    fn serves_only_whole_models_of_its_store_and_bounds_every_read() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("tiny-llama.gguf");
        crate::synth::make_model(&crate::synth::preset("tiny-llama").unwrap(), &model).unwrap();
        let mut store = crate::store::Store::from_env();
        (store.dirs, store.read_only, store.hf_cache, store.ollama) = (vec![d.path().into()], vec![], None, None);
        let size = std::fs::metadata(&model).unwrap().len();
        let name = || "tiny-llama".to_string();
        let data = |m| match m {
            Message::WeightsData(b) => b,
            other => panic!("{other:?}"),
        };
        assert_eq!(data(answer(&store, WeightsAsk::Read { model: name(), start: 0, len: 4 }).unwrap()), b"GGUF");
        match answer(&store, WeightsAsk::Info { model: name() }).unwrap() {
            Message::WeightsMeta(WeightsMeta::Info { size: s, data_offset }) => {
                assert!(s == size && data_offset > 0 && data_offset < s)
            }
            other => panic!("{other:?}"),
        }
        let path = model.to_string_lossy().into_owned();
        for (bad, why) in [
            (WeightsAsk::Read { model: name(), start: 0, len: u32::MAX }, "outside"),
            (WeightsAsk::Read { model: name(), start: 0, len: 0 }, "outside"),
            (WeightsAsk::Read { model: name(), start: size - 2, len: 4 }, "past the file"),
            (WeightsAsk::Read { model: name(), start: u64::MAX, len: 4 }, "past the file"),
            (WeightsAsk::Read { model: path, start: 0, len: 4 }, "does not have"),
            (WeightsAsk::Hash { model: name(), start: 10, end: size + 1 }, "not within"),
            (WeightsAsk::Hash { model: name(), start: 10, end: 10 }, "not within"),
            (WeightsAsk::Info { model: "nope".into() }, "does not have"),
        ] {
            let e = answer(&store, bad.clone()).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // a hash reads its whole range: one ask hashes at most a piece or a header (the file
        // grown sparse beyond that, so the range is within it)
        std::fs::OpenOptions::new().write(true).open(&model).unwrap().set_len(MAX_HASHED + (8 << 20)).unwrap();
        let e = answer(&store, WeightsAsk::Hash { model: name(), start: 0, end: MAX_HASHED + 1 }).unwrap_err();
        assert!(matches!(e, WeightsError::TooLong { .. }), "{e}");
        assert!(answer(&store, WeightsAsk::Hash { model: name(), start: 4096, end: 8192 }).is_ok());
    }

    #[test]
    fn outstanding_asks_are_capped() {
        // other tests may hold some: take what is left, then one more is refused
        let mut held = Vec::new();
        while let Some(o) = Outstanding::take() {
            held.push(o);
            assert!(held.len() <= MAX_OUTSTANDING);
        }
        assert!(Outstanding::take().is_none());
        held.pop();
        assert!(Outstanding::take().is_some(), "a finished ask makes room");
    }

    #[test]
    fn a_partial_assembled_whole_and_verified_is_served_and_advertised_whole() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src.bin");
        crate::synth::make_model(&crate::synth::preset("tiny-llama").unwrap(), &src).unwrap();
        let bytes = std::fs::read(&src).unwrap();
        let size = bytes.len() as u64;
        let models = d.path().join("models");
        let mut store = crate::store::Store::from_env();
        (store.dirs, store.read_only, store.hf_cache, store.ollama) = (vec![models.clone()], vec![], None, None);
        let mut p = crate::store::partial::Partial::create(&models, "copy", size, 8).unwrap();
        p.write_at(0, &bytes[..size as usize - 10]).unwrap();
        let sha = |b: &[u8]| crate::store::partial::hex(&<sha2::Sha256 as sha2::Digest>::digest(b));
        let piece = |end: u64, unverified| crate::store::partial::Piece {
            start: 0,
            end,
            sha256: sha(&bytes[..end as usize]),
            unverified,
        };
        p.record(piece(size - 10, false)).unwrap();
        let read = WeightsAsk::Read { model: "copy".into(), start: 0, len: 4 };
        // not every byte yet: neither served nor advertised
        assert!(matches!(answer(&store, read.clone()), Err(WeightsError::NotHere { .. })));
        assert!(crate::cluster::holdings::scan(&store).iter().all(|h| h.model != "copy"));
        p.write_at(0, &bytes).unwrap();
        p.record(piece(size, true)).unwrap();
        // every byte, but taken by size alone and never checked whole
        assert!(answer(&store, read.clone()).is_err());
        p.record(piece(size, false)).unwrap();
        assert!(matches!(answer(&store, read).unwrap(), Message::WeightsData(b) if b == b"GGUF"));
        let held = crate::cluster::holdings::scan(&store);
        assert!(held.iter().any(|h| h.model == "copy" && h.whole && h.size == size), "{held:?}");
    }
}
