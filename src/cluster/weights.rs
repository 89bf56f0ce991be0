//! Weights over the peer connection: serving byte ranges of the models this node holds whole
//! (by name, never by path), and fetching a stage's window from such a peer into a partial model
//! when this node lacks the model.

use super::ClusterNode;
use crate::store::fetch::{self, BoxFut, FileInfo, RangeSource};
use crate::store::Resolved;
use crate::transport::{Conn, Incoming, Kind, LoadRefusal, LoadStage, WeightsAsk, WeightsMeta, MAX_WEIGHTS_READ};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for one chunk or hash (a hash reads the whole range on the source).
const ASK_TIMEOUT: Duration = Duration::from_secs(120);

/// Answers one [`WeightsAsk`] (in its own task: reads and hashes are blocking work).
pub(super) fn serve(node: &Arc<ClusterNode>, inc: Incoming) {
    let store = node.store.clone();
    tokio::spawn(async move {
        let (conn, request) = (inc.conn, inc.frame.request);
        let ask: WeightsAsk = match serde_json::from_slice(&inc.frame.payload) {
            Ok(a) => a,
            Err(e) => {
                let _ = conn.send(Kind::Error, request, format!("malformed weights request: {e}").into_bytes()).await;
                return;
            }
        };
        let r = tokio::task::spawn_blocking(move || answer(&store, ask)).await.unwrap_or_else(|e| Err(e.to_string()));
        let _ = match r {
            Ok((kind, payload)) => conn.send(kind, request, payload).await,
            Err(e) => conn.send(Kind::Error, request, e.into_bytes()).await,
        };
    });
}

/// The whole single-file model `model` in this node's store, and its size.
fn whole(store: &crate::store::Store, model: &str) -> Result<(PathBuf, u64), String> {
    match store.resolve_name(model) {
        Ok(Resolved::Local(m)) if m.paths.len() == 1 => Ok((m.paths[0].clone(), m.size)),
        Ok(Resolved::Local(_)) => Err(format!("{model} is a split set here; its windows cannot be sent")),
        _ => Err(format!("this node does not have {model}")),
    }
}

fn answer(store: &crate::store::Store, ask: WeightsAsk) -> Result<(Kind, Vec<u8>), String> {
    let json = |m: &WeightsMeta| serde_json::to_vec(m).expect("plain data serializes");
    match ask {
        WeightsAsk::Info { model } => {
            let (path, size) = whole(store, &model)?;
            let g = crate::gguf::GgufFile::open(&path).map_err(|e| e.to_string())?;
            Ok((Kind::WeightsMeta, json(&WeightsMeta::Info { size, data_offset: g.data_offset })))
        }
        WeightsAsk::Hash { model, start, end } => {
            let (path, size) = whole(store, &model)?;
            if start >= end || end > size {
                return Err(format!("range {start}..{end} is not within the file's {size} bytes"));
            }
            let sha256 = crate::store::partial::hash_range(&path, start, end).map_err(|e| e.to_string())?;
            Ok((Kind::WeightsMeta, json(&WeightsMeta::Hash { sha256 })))
        }
        WeightsAsk::Read { model, start, len } => {
            if len == 0 || len > MAX_WEIGHTS_READ {
                return Err(format!("len = {len} is outside 1..={MAX_WEIGHTS_READ}"));
            }
            let (path, size) = whole(store, &model)?;
            if start.checked_add(len as u64).is_none_or(|e| e > size) {
                return Err(format!("{len} bytes at {start} run past the file's {size} bytes"));
            }
            let mut buf = vec![0u8; len as usize];
            let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            f.read_exact_at(&mut buf, start).map_err(|e| e.to_string())?;
            Ok((Kind::WeightsData, buf))
        }
    }
}

/// A peer that holds the whole model.
pub struct PeerSource {
    pub conn: Conn,
    pub model: String,
}

impl PeerSource {
    async fn ask(&self, a: WeightsAsk, want: Kind) -> Result<Vec<u8>, String> {
        let f = self
            .conn
            .request(Kind::WeightsAsk, serde_json::to_vec(&a).expect("serializes"), ASK_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if f.kind != want as u16 {
            return Err(format!("unexpected answer of kind {}", f.kind));
        }
        Ok(f.payload)
    }

    async fn meta(&self, a: WeightsAsk) -> Result<WeightsMeta, String> {
        let b = self.ask(a, Kind::WeightsMeta).await?;
        serde_json::from_slice(&b).map_err(|e| format!("malformed answer: {e}"))
    }
}

impl RangeSource for PeerSource {
    fn name(&self) -> String {
        format!("node {}", self.conn.peer().node_name)
    }

    fn info(&self) -> BoxFut<'_, Result<FileInfo, String>> {
        Box::pin(async move {
            match self.meta(WeightsAsk::Info { model: self.model.clone() }).await? {
                WeightsMeta::Info { size, data_offset } => Ok(FileInfo { size, data_offset }),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn hash(&self, start: u64, end: u64) -> BoxFut<'_, Result<String, String>> {
        Box::pin(async move {
            match self.meta(WeightsAsk::Hash { model: self.model.clone(), start, end }).await? {
                WeightsMeta::Hash { sha256 } if sha256.len() == 64 => Ok(sha256),
                other => Err(format!("unexpected answer {other:?}")),
            }
        })
    }

    fn read(&self, start: u64, len: u32) -> BoxFut<'_, Result<Vec<u8>, String>> {
        Box::pin(async move {
            self.ask(WeightsAsk::Read { model: self.model.clone(), start, len }, Kind::WeightsData).await
        })
    }
}

/// A partial model of `ls.model` holding this stage's window: one already here (verified), or
/// fetched from the first source that answers.
pub(super) async fn obtain(node: &Arc<ClusterNode>, ls: &LoadStage) -> Result<PathBuf, LoadRefusal> {
    let me = node.hello.node_name.clone();
    let no_model = || LoadRefusal::NoModel { node: me.clone(), model: ls.model.clone() };
    let failed = |detail: String| LoadRefusal::Failed { node: me.clone(), detail };
    let Some(dir) = node.store.partial_dir().map(PathBuf::from) else { return Err(no_model()) };
    let (begin, end) = (ls.range.begin, ls.range.end);
    let sources: Vec<&String> = ls.sources.iter().filter(|a| **a != node.hello.peer_addr).collect();
    if sources.is_empty() {
        // a window kept from before needs no source
        let (store, model, size) = (node.store.clone(), ls.model.clone(), ls.model_size);
        let here = tokio::task::spawn_blocking(move || {
            let mut p = store.partial_window(&model, size, begin, end)?;
            p.verify().ok().filter(|bad| bad.is_empty())?;
            Some(p.path)
        })
        .await
        .ok()
        .flatten();
        return here.ok_or_else(no_model);
    }
    let mut last = String::new();
    for addr in sources {
        let conn = match node.conn(addr).await {
            Ok(c) => c,
            Err(e) => {
                last = format!("{addr}: {e}");
                continue;
            }
        };
        let src = Arc::new(PeerSource { conn, model: ls.model.clone() });
        let t = std::time::Instant::now();
        let (model, from) = (ls.model.clone(), src.name());
        // a line every 2 s: a window of a big model takes minutes
        let shown = std::sync::Mutex::new(std::time::Instant::now());
        let handle = Arc::new(node.store.transfers.start("window", &ls.model, &from, 0));
        let recorded = handle.clone();
        let progress: fetch::OnProgress = Arc::new(move |done, total| {
            recorded.progress(done, total);
            let mut shown = shown.lock().unwrap();
            if shown.elapsed() >= Duration::from_secs(2) {
                *shown = std::time::Instant::now();
                tracing::info!(model = %model, from = %from, done, total, "fetching the window");
            }
        });
        let fetched = fetch::fetch_window(&dir, &ls.model, (begin, end), src.clone(), fetch::PIECE, progress).await;
        if let Ok(h) = Arc::try_unwrap(handle) {
            h.finish(fetched.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        }
        match fetched {
            Ok((path, done)) => {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                if size != ls.model_size {
                    return Err(LoadRefusal::ModelSize {
                        node: me,
                        model: ls.model.clone(),
                        here: size,
                        theirs: ls.model_size,
                    });
                }
                tracing::info!(model = %ls.model, from = %src.name(), bytes = done.bytes, repaired = done.repaired,
                    seconds = format!("{:.2}", t.elapsed().as_secs_f64()), range = %ls.range, "window in place");
                let (n, keep) = (node.clone(), path.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    n.store.evict_partials(&keep);
                    n.refresh_held();
                })
                .await;
                return Ok(path);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(failed(format!("does not have model {:?} and cannot fetch its window: {last}", ls.model)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_whole_models_of_its_store_and_bounds_every_read() {
        let d = tempfile::tempdir().unwrap();
        let model = d.path().join("tiny-llama.gguf");
        crate::synth::make_model(&crate::synth::preset("tiny-llama").unwrap(), &model).unwrap();
        let mut store = crate::store::Store::from_env();
        (store.dirs, store.read_only, store.hf_cache, store.ollama) = (vec![d.path().into()], vec![], None, None);
        let size = std::fs::metadata(&model).unwrap().len();
        let name = || "tiny-llama".to_string();
        let (k, b) = answer(&store, WeightsAsk::Read { model: name(), start: 0, len: 4 }).unwrap();
        assert_eq!((k, b.as_slice()), (Kind::WeightsData, &b"GGUF"[..]));
        match answer(&store, WeightsAsk::Info { model: name() }).unwrap() {
            (Kind::WeightsMeta, b) => match serde_json::from_slice(&b).unwrap() {
                WeightsMeta::Info { size: s, data_offset } => assert!(s == size && data_offset > 0 && data_offset < s),
                other => panic!("{other:?}"),
            },
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
            let e = answer(&store, bad.clone()).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
