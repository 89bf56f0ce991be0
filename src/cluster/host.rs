//! Stages this node runs for coordinators: loaded on request, each behind a worker task that
//! processes its batches in order and sends the result straight on, to the next stage's node or,
//! from the last stage, the sampled tokens back to the coordinator.

use super::ClusterNode;
use crate::engine::{Batch, BatchInput, ContextParams, DecodeOutput, ModelWindow, StageHandle, StageSpec};
use crate::pipeline::StageReport;
use crate::store::Resolved;
use crate::transport::{BatchMsg, Conn, EmbeddingMsg, Incoming, Kind, LoadRefusal, LoadStage, SeqOp, MAX_PAYLOAD};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;

#[derive(Default)]
pub(super) struct Host {
    stages: Mutex<HashMap<(u64, usize), mpsc::Sender<Job>>>,
    /// What each hosted stage is and whose (its coordinator).
    owned: Mutex<HashMap<(u64, usize), HostedStage>>,
}

/// A stage this node runs for a coordinator (`/cluster` and `/api/ps` list them).
#[derive(Clone, Debug, Serialize)]
pub struct HostedStage {
    pub instance: u64,
    pub index: usize,
    pub model: String,
    pub begin: u32,
    pub end: u32,
    /// The coordinator's node id and name.
    pub coordinator_id: String,
    pub coordinator: String,
    /// Since when the coordinator has been gone (unloaded after [`ORPHAN_GRACE`]).
    #[serde(skip)]
    pub orphaned_since: Option<std::time::Instant>,
}

/// How long a stage outlives its coordinator: a coordinator that reconnects within this keeps
/// its stages; one that died leaves nothing behind for long.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(4);

impl Host {
    pub(super) fn list(&self) -> Vec<HostedStage> {
        let mut v: Vec<HostedStage> = self.owned.lock().unwrap().values().cloned().collect();
        v.sort_by_key(|h| (h.instance, h.index));
        v
    }

    pub(super) fn is_empty(&self) -> bool {
        self.stages.lock().unwrap().is_empty()
    }

    /// Unloads every stage of `instance`.
    pub(super) fn unload(&self, instance: u64) {
        self.stages.lock().unwrap().retain(|(i, _), _| *i != instance);
        self.owned.lock().unwrap().retain(|(i, _), _| *i != instance);
    }

    /// Unloads the stages whose coordinator has been gone for longer than [`ORPHAN_GRACE`]
    /// (`alive`: whether a node id is up).
    pub(super) fn sweep(&self, alive: impl Fn(&str) -> bool) {
        let mut gone = Vec::new();
        for (k, h) in self.owned.lock().unwrap().iter_mut() {
            if alive(&h.coordinator_id) {
                h.orphaned_since = None;
            } else if h.orphaned_since.get_or_insert_with(std::time::Instant::now).elapsed() >= ORPHAN_GRACE {
                gone.push((*k, h.coordinator.clone()));
            }
        }
        for ((instance, index), who) in gone {
            tracing::info!(instance, stage = index, coordinator = %who, "unloading a stage whose coordinator is gone");
            self.stages.lock().unwrap().remove(&(instance, index));
            self.owned.lock().unwrap().remove(&(instance, index));
        }
    }
}

enum Job {
    /// `_queued`: the frame's share of the node's byte budget, held until the batch is done.
    Forward {
        msg: BatchMsg,
        /// An embedding batch (`Kind::EmbedForward`): the last stage answers an embedding.
        embed: bool,
        request: u64,
        _queued: tokio::sync::OwnedSemaphorePermit,
    },
    Op {
        op: SeqOp,
        request: u64,
        conn: Conn,
    },
}

#[derive(Serialize, Deserialize)]
pub(super) struct SeqOpMsg {
    pub instance: u64,
    pub stage: usize,
    pub op: SeqOp,
}

#[derive(Serialize, Deserialize)]
pub(super) struct TokensMsg {
    pub tokens: Vec<i32>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct LoadedMsg {
    pub n_ctx: u32,
}

#[derive(Serialize, Deserialize)]
pub(super) struct UnloadMsg {
    pub instance: u64,
}

pub(super) fn decode_tokens(b: &[u8]) -> Result<Vec<i32>, String> {
    match serde_json::from_slice::<TokensMsg>(b) {
        Ok(TokensMsg { error: Some(e), .. }) => Err(e),
        Ok(TokensMsg { tokens, .. }) => Ok(tokens),
        Err(e) => Err(format!("malformed tokens message: {e}")),
    }
}

/// Runs the decoder this node applies to a peer frame of `kind`, for every kind (the fuzz
/// targets and tests drive every decoder through this).
pub fn decode_payload(kind: Kind, b: &[u8]) -> Result<(), String> {
    fn j<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<(), String> {
        serde_json::from_slice::<T>(b).map(drop).map_err(|e| e.to_string())
    }
    match kind {
        Kind::Hello | Kind::Welcome => j::<crate::transport::Hello>(b),
        Kind::LoadStage => j::<LoadStage>(b),
        Kind::Loaded => j::<LoadedMsg>(b),
        Kind::Forward | Kind::EmbedForward => BatchMsg::decode(b).map(drop).map_err(|e| e.to_string()),
        Kind::Embedding => EmbeddingMsg::decode(b).map(drop).map_err(|e| e.to_string()),
        Kind::Tokens => decode_tokens(b).map(drop),
        Kind::SeqOp => j::<SeqOpMsg>(b),
        Kind::Unload => j::<UnloadMsg>(b),
        Kind::Pong => j::<super::holdings::Pong>(b),
        Kind::Error => j::<LoadRefusal>(b),
        Kind::WeightsAsk => j::<crate::transport::WeightsAsk>(b),
        Kind::WeightsMeta => j::<crate::transport::WeightsMeta>(b),
        // raw bytes of a model file
        Kind::WeightsData => Ok(()),
        Kind::LoadProgress => j::<crate::transport::LoadProgressMsg>(b),
        Kind::OtherCluster => crate::transport::noise::parse_preamble(b).map(drop).map_err(|e| e.to_string()),
        // free text or nothing
        Kind::Refused | Kind::Ping | Kind::SeqDone | Kind::Bye | Kind::Handshake => Ok(()),
    }
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serializes")
}

pub(super) async fn handle(node: &Arc<ClusterNode>, kind: Kind, inc: Incoming) {
    let (f, conn, queued) = (inc.frame, inc.conn, inc.queued);
    match kind {
        Kind::LoadStage => {
            let ls: LoadStage = match serde_json::from_slice(&f.payload) {
                Ok(x) => x,
                Err(e) => {
                    let _ =
                        conn.send(Kind::Error, f.request, format!("malformed load request: {e}").into_bytes()).await;
                    return;
                }
            };
            let node = node.clone();
            let owner = conn.peer().clone();
            tokio::spawn(async move {
                let (stop, stopped) = tokio::sync::oneshot::channel();
                let report = tokio::spawn(super::progress::report(node.clone(), conn.clone(), ls.clone(), stopped));
                let r = load(&node, ls, &owner).await;
                let _ = stop.send(());
                let _ = report.await;
                let reply = match r {
                    Ok(n_ctx) => (Kind::Loaded, json(&LoadedMsg { n_ctx })),
                    Err(e) => {
                        tracing::warn!(peer = %conn.peer().node_name, "refused to load a stage: {e}");
                        (Kind::Error, json(&e))
                    }
                };
                let _ = conn.send(reply.0, f.request, reply.1).await;
            });
        }
        Kind::Forward | Kind::EmbedForward => {
            let embed = kind == Kind::EmbedForward;
            let msg = match BatchMsg::decode(&f.payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(peer = %conn.peer().node_name, "dropping a malformed batch: {e}");
                    return;
                }
            };
            let worker = node.host.stages.lock().unwrap().get(&(msg.instance, msg.stage as usize)).cloned();
            match worker {
                Some(w) => {
                    let reply_to = msg.reply_to.clone();
                    if w.send(Job::Forward { msg, embed, request: f.request, _queued: queued }).await.is_err() {
                        answer(node, &reply_to, f.request, embed, "the stage was unloaded".into()).await;
                    }
                }
                None => {
                    let e = format!(
                        "node {} holds no stage {} of instance {}",
                        node.hello.node_name, msg.stage, msg.instance
                    );
                    answer(node, &msg.reply_to, f.request, embed, e).await;
                }
            }
        }
        Kind::SeqOp => {
            let m: SeqOpMsg = match serde_json::from_slice(&f.payload) {
                Ok(x) => x,
                Err(e) => {
                    let _ = conn
                        .send(Kind::Error, f.request, format!("malformed sequence operation: {e}").into_bytes())
                        .await;
                    return;
                }
            };
            let worker = node.host.stages.lock().unwrap().get(&(m.instance, m.stage)).cloned();
            match worker {
                Some(w) => {
                    let _ = w.send(Job::Op { op: m.op, request: f.request, conn }).await;
                }
                None => {
                    let _ = conn.send(Kind::Error, f.request, b"no such stage on this node".to_vec()).await;
                }
            }
        }
        Kind::Unload => {
            if let Ok(m) = serde_json::from_slice::<UnloadMsg>(&f.payload) {
                node.host.unload(m.instance);
                tracing::info!(instance = m.instance, "stages unloaded");
            }
        }
        _ => {}
    }
}

/// Most sequences a stage serves (llama.cpp's own limit).
const MAX_SEQ: u32 = 256;
/// Longest context a stage accepts (a million tokens; memory is checked as well).
const MAX_CTX: u32 = 1 << 20;

/// Checks a load request against what this node offers before anything is loaded: the model
/// (same name and size), the layer range, context, batch and sequence counts, and the memory the
/// stage would take (placement's estimate) against the memory this node offers.
/// A partial model (its window fetched from a peer, see [`super::weights`]) passes the same
/// checks with `partial` set.
fn check(
    node: &ClusterNode,
    ls: &LoadStage,
    partial: Option<&std::path::Path>,
) -> Result<std::path::PathBuf, LoadRefusal> {
    let me = node.hello.node_name.clone();
    let path = match partial {
        Some(p) => p.to_path_buf(),
        // by name only: a peer never names a path
        None => match node.store.resolve_name(&ls.model) {
            Ok(Resolved::Local(m)) if m.size != ls.model_size => {
                return Err(LoadRefusal::ModelSize {
                    node: me,
                    model: ls.model.clone(),
                    here: m.size,
                    theirs: ls.model_size,
                })
            }
            Ok(Resolved::Local(m)) => m.first().to_path_buf(),
            _ => return Err(LoadRefusal::NoModel { node: me, model: ls.model.clone() }),
        },
    };
    let failed = |e: &dyn std::fmt::Display| LoadRefusal::Failed { node: me.clone(), detail: e.to_string() };
    let files = crate::gguf::ModelFiles::open(&path).map_err(|e| failed(&e))?;
    let shape = crate::gguf::ModelShape::from_files(&files).map_err(|e| failed(&e))?;
    let (begin, end) = (ls.range.begin, ls.range.end);
    if begin >= end || end > shape.n_layer {
        return Err(LoadRefusal::Layers { node: me, begin, end, n_layer: shape.n_layer });
    }
    // a batch's hidden states must fit in one frame
    let max_batch = (MAX_PAYLOAD as u64 / (4 * shape.n_embd.max(1) as u64)).max(1);
    for (field, value, max) in [
        ("n_ctx", ls.n_ctx as u64, MAX_CTX as u64),
        ("n_batch", ls.n_batch as u64, max_batch),
        ("n_seq_max", ls.n_seq_max as u64, MAX_SEQ as u64),
    ] {
        if value == 0 || value > max {
            return Err(LoadRefusal::Limit { node: me, field: field.into(), value, max });
        }
    }
    let cost = crate::placement::ModelCost::from_shape(&ls.model, &shape);
    let (weights, kv, compute) =
        crate::placement::stage_memory(&cost, begin, end, begin == 0, end == shape.n_layer, ls.n_ctx, ls.n_batch);
    let needed = weights + kv + compute;
    let offered = node.profile().memory_offered;
    if needed > offered {
        return Err(LoadRefusal::Memory { node: me, begin, end, needed, offered, weights, kv, compute });
    }
    Ok(path)
}

/// Loads the requested window if this node can (see [`check`]).
async fn load(node: &Arc<ClusterNode>, ls: LoadStage, owner: &crate::transport::Hello) -> Result<u32, LoadRefusal> {
    let me = node.hello.node_name.clone();
    let checked = |partial: Option<std::path::PathBuf>| {
        let (n, l, me) = (node.clone(), ls.clone(), me.clone());
        async move {
            tokio::task::spawn_blocking(move || check(&n, &l, partial.as_deref()))
                .await
                .map_err(|e| LoadRefusal::Failed { node: me, detail: e.to_string() })?
        }
    };
    let path = match checked(None).await {
        // not here whole: the window from a partial model, fetched from a peer when missing
        Err(LoadRefusal::NoModel { .. }) => checked(Some(super::weights::obtain(node, &ls).await?)).await?,
        r => r?,
    };
    let spec = StageSpec {
        window: ModelWindow::layers(&path, ls.range.begin, ls.range.end),
        context: ContextParams {
            n_ctx: ls.n_ctx,
            n_batch: ls.n_batch,
            n_ubatch: ls.n_batch,
            n_seq_max: ls.n_seq_max,
            exact: ls.exact,
            // this node's --threads, not the coordinator's
            n_threads: node.threads.max(1),
        },
    };
    let failed = |detail: String| LoadRefusal::Failed { node: me.clone(), detail };
    let stage = tokio::task::spawn_blocking(move || StageHandle::load(spec))
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    let n_ctx = stage.info().n_ctx;
    let (tx, rx) = mpsc::channel(256);
    node.host.stages.lock().unwrap().insert((ls.instance, ls.index), tx);
    node.host.owned.lock().unwrap().insert(
        (ls.instance, ls.index),
        HostedStage {
            instance: ls.instance,
            index: ls.index,
            model: ls.model.clone(),
            begin: ls.range.begin,
            end: ls.range.end,
            coordinator_id: owner.node_id.clone(),
            coordinator: owner.node_name.clone(),
            orphaned_since: None,
        },
    );
    tracing::info!(instance = ls.instance, stage = ls.index, range = %ls.range, model = %ls.model, "stage loaded");
    tokio::spawn(worker(Arc::downgrade(node), stage, ls, rx));
    Ok(n_ctx)
}

async fn worker(node: Weak<ClusterNode>, stage: StageHandle, ls: LoadStage, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(n) = node.upgrade() else { return };
        match job {
            Job::Forward { msg, embed, request, .. } => {
                let input = if msg.hidden.is_empty() {
                    BatchInput::Tokens(msg.tokens.clone())
                } else {
                    BatchInput::Hidden(msg.hidden.clone())
                };
                let batch = Batch { input, pos: msg.pos.clone(), seq: msg.seq.clone(), output: msg.output.clone() };
                let last = ls.next.is_none();
                let out =
                    if embed { stage.embed(batch).await } else { stage.decode(batch, false, msg.sample && last).await };
                match out {
                    Ok(DecodeOutput::Hidden(h)) => {
                        let next = ls.next.as_deref().expect("a non-last stage has a next hop");
                        let out = BatchMsg { stage: msg.stage + 1, tokens: vec![], hidden: h, ..msg.clone() };
                        let sent = match n.conn(next).await {
                            Ok(c) => {
                                let kind = if embed { Kind::EmbedForward } else { Kind::Forward };
                                c.send(kind, request, out.encode()).await.map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        };
                        if let Err(e) = sent {
                            let e = format!("stage {} cannot reach the next stage at {next}: {e}", ls.index);
                            answer(&n, &msg.reply_to, request, embed, e).await;
                        }
                    }
                    Ok(DecodeOutput::Last { tokens, .. }) => reply(&n, &msg.reply_to, request, Ok(tokens)).await,
                    Ok(DecodeOutput::Embedding(v)) => reply_embedding(&n, &msg.reply_to, request, Ok(v)).await,
                    Err(e) => {
                        let e = format!("stage {} on {}: {e}", ls.index, n.hello.node_name);
                        answer(&n, &msg.reply_to, request, embed, e).await;
                    }
                }
            }
            Job::Op { op, request, conn } => {
                let r = match op {
                    SeqOp::Remove { seq, p0, p1 } => stage.seq_rm(seq, p0, p1).await.map(|ok| ok.to_string()),
                    SeqOp::Clear => stage.clear().await.map(|_| "true".to_string()),
                    SeqOp::Sampler { seq, params, history } => {
                        stage.set_sampler(seq, params, history).await.map(|_| "true".to_string())
                    }
                    SeqOp::Stats => Ok(serde_json::to_string(&StageReport {
                        node: n.hello.node_name.clone(),
                        range: ls.range,
                        n_threads: stage.info().context.n_threads,
                        counters: stage.counters(),
                        node_data_bytes_sent: n.data_bytes_sent().await,
                        node_peak_rss_bytes: crate::profile::peak_rss_bytes(),
                    })
                    .expect("plain data serializes")),
                };
                let _ = match r {
                    Ok(v) => conn.send(Kind::SeqDone, request, v.into_bytes()).await,
                    Err(e) => conn.send(Kind::Error, request, e.to_string().into_bytes()).await,
                };
            }
        }
    }
}

/// An error answered in the shape the coordinator waits for: tokens, or an embedding.
async fn answer(node: &ClusterNode, to: &str, request: u64, embed: bool, e: String) {
    if embed {
        reply_embedding(node, to, request, Err(e)).await
    } else {
        reply(node, to, request, Err(e)).await
    }
}

async fn reply_embedding(node: &ClusterNode, to: &str, request: u64, r: Result<Vec<f32>, String>) {
    match node.conn(to).await {
        Ok(c) => {
            let _ = c.send(Kind::Embedding, request, EmbeddingMsg(r).encode()).await;
        }
        Err(e) => tracing::warn!(%to, "cannot answer the coordinator: {e}"),
    }
}

async fn reply(node: &ClusterNode, to: &str, request: u64, r: Result<Vec<i32>, String>) {
    let msg = match r {
        Ok(tokens) => TokensMsg { tokens, error: None },
        Err(e) => TokensMsg { tokens: vec![], error: Some(e) },
    };
    match node.conn(to).await {
        Ok(c) => {
            let _ = c.send(Kind::Tokens, request, json(&msg)).await;
        }
        Err(e) => tracing::warn!(%to, "cannot answer the coordinator: {e}"),
    }
}
