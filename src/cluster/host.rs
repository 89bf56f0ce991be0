//! Stages this node runs for coordinators: loaded on request, each behind a worker task that
//! processes its batches in order and sends the result straight on, to the next stage's node or,
//! from the last stage, the sampled tokens back to the coordinator.

use super::ClusterNode;
use crate::engine::{Batch, BatchInput, ContextParams, DecodeOutput, ModelWindow, StageHandle, StageSpec};
use crate::pipeline::StageReport;
use crate::pipeline::{FaultKind, StageFault};
use crate::store::Resolved;
use crate::transport::{BatchMsg, Conn, LoadRefusal, LoadStage, Message, OpReply, PeerError, SeqOp, MAX_PAYLOAD};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

#[derive(Default)]
pub(super) struct Host {
    /// Each stage's queue of jobs. Unbounded in count, bounded in bytes: every job holds its
    /// frame's share of the node's byte budget until done, so handing a frame to a busy stage
    /// never waits (nor stalls the node's other frames, heartbeats included).
    pub(super) stages: Mutex<HashMap<(u64, usize), mpsc::UnboundedSender<Job>>>,
    /// What each hosted stage is and whose (its coordinator).
    owned: Mutex<HashMap<(u64, usize), HostedStage>>,
}

/// A stage this node runs for a coordinator (`/cluster` and `/api/ps` list them).
#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// `_queued`: the frame's share of the node's byte budget, held until the job is done.
pub(super) enum Job {
    Forward {
        msg: BatchMsg,
        /// An embedding batch (`Kind::EmbedForward`): the last stage answers an embedding.
        embed: bool,
        request: u64,
        _queued: OwnedSemaphorePermit,
    },
    Op {
        op: SeqOp,
        request: u64,
        conn: Conn,
        _queued: OwnedSemaphorePermit,
    },
}

/// Acts on a stage message from a coordinator (or the stage before): loads, batches, sequence
/// operations, unloads. `request` is the frame's request id; `queued` its share of the node's
/// byte budget, held as long as the job waits for its stage. Never waits itself: the node's
/// dispatch calls it for every frame.
pub(super) fn handle(node: &Arc<ClusterNode>, msg: Message, conn: Conn, request: u64, queued: OwnedSemaphorePermit) {
    match msg {
        Message::LoadStage(ls) => {
            let node = node.clone();
            let owner = conn.peer().clone();
            tokio::spawn(async move {
                let (stop, stopped) = tokio::sync::oneshot::channel();
                let report = tokio::spawn(super::progress::report(node.clone(), conn.clone(), (*ls).clone(), stopped));
                let r = load(&node, *ls, &owner).await;
                let _ = stop.send(());
                let _ = report.await;
                let reply = match r {
                    Ok(n_ctx) => Message::Loaded { n_ctx },
                    Err(e) => {
                        tracing::warn!(peer = %conn.peer().node_name, "refused to load a stage: {e}");
                        Message::Error(PeerError::Load(e))
                    }
                };
                let _ = conn.tell(request, &reply).await;
            });
        }
        Message::Forward(msg) => forward(node, msg, false, request, queued),
        Message::EmbedForward(msg) => forward(node, msg, true, request, queued),
        Message::SeqOp(m) => {
            let worker = node.host.stages.lock().unwrap().get(&(m.instance, m.stage)).cloned();
            let job = Job::Op { op: m.op, request, conn: conn.clone(), _queued: queued };
            if worker.is_none_or(|w| w.send(job).is_err()) {
                let e = PeerError::NoStage { node: node.hello.node_name.clone(), instance: m.instance, stage: m.stage };
                tokio::spawn(async move { conn.tell(request, &Message::Error(e)).await });
            }
        }
        Message::Unload { instance } => {
            node.host.unload(instance);
            tracing::info!(instance, "stages unloaded");
        }
        _ => {}
    }
}

/// Hands a batch to its stage's worker, or answers the coordinator why it cannot.
fn forward(node: &Arc<ClusterNode>, msg: BatchMsg, embed: bool, request: u64, queued: OwnedSemaphorePermit) {
    let stage = msg.stage as usize;
    let worker = node.host.stages.lock().unwrap().get(&(msg.instance, stage)).cloned();
    let (reply_to, instance) = (msg.reply_to.clone(), msg.instance);
    let kind = match worker {
        Some(w) if w.send(Job::Forward { msg, embed, request, _queued: queued }).is_ok() => return,
        Some(_) => FaultKind::Unloaded,
        None => FaultKind::Refused(PeerError::NoStage { node: node.hello.node_name.clone(), instance, stage }),
    };
    // answering may mean connecting to the coordinator: not on the dispatch's time
    let (node, f) = (node.clone(), StageFault { stage, node: node.hello.node_name.clone(), kind });
    tokio::spawn(async move { answer(&node, &reply_to, request, embed, f).await });
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
    let (tx, rx) = mpsc::unbounded_channel();
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

async fn worker(node: Weak<ClusterNode>, stage: StageHandle, ls: LoadStage, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(n) = node.upgrade() else { return };
        match job {
            Job::Forward { msg, embed, request, .. } => {
                let input = if msg.hidden.is_empty() {
                    BatchInput::Tokens(msg.tokens.clone())
                } else {
                    BatchInput::Hidden(msg.hidden.clone())
                };
                let batch = Batch {
                    input,
                    pos: msg.pos.clone(),
                    seq: msg.seq.clone(),
                    output: msg.output.clone(),
                    spec: msg.spec.clone(),
                };
                let last = ls.next.is_none();
                let out =
                    if embed { stage.embed(batch).await } else { stage.decode(batch, false, msg.sample && last).await };
                match out {
                    Ok(DecodeOutput::Hidden(h)) => {
                        let next = ls.next.as_deref().expect("a non-last stage has a next hop");
                        let out = BatchMsg { stage: msg.stage + 1, tokens: vec![], hidden: h, ..msg.clone() };
                        let out = if embed { Message::EmbedForward(out) } else { Message::Forward(out) };
                        let sent = match n.conn(next).await {
                            Ok(c) => c.tell(request, &out).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = sent {
                            // the next stage's node is the one that failed
                            let kind = FaultKind::Unreachable {
                                from: ls.index,
                                addr: next.to_string(),
                                detail: e.to_string(),
                            };
                            let f = StageFault { stage: ls.index + 1, node: next.to_string(), kind };
                            answer(&n, &msg.reply_to, request, embed, f).await;
                        }
                    }
                    Ok(DecodeOutput::Last { tokens, .. }) => {
                        reply(&n, &msg.reply_to, request, Message::Tokens(Ok(tokens))).await
                    }
                    Ok(DecodeOutput::Embedding(v)) => {
                        reply(&n, &msg.reply_to, request, Message::Embedding(Ok(v))).await
                    }
                    Err(e) => {
                        let kind = FaultKind::Engine { detail: e.to_string() };
                        let f = StageFault { stage: ls.index, node: n.hello.node_name.clone(), kind };
                        answer(&n, &msg.reply_to, request, embed, f).await;
                    }
                }
            }
            Job::Op { op, request, conn, .. } => {
                let r = match op {
                    SeqOp::Remove { seq, p0, p1 } => stage.seq_rm(seq, p0, p1).await.map(OpReply::Removed),
                    SeqOp::Clear => stage.clear().await.map(|_| OpReply::Done),
                    SeqOp::Sampler { seq, params, history } => {
                        stage.set_sampler(seq, params, history).await.map(|_| OpReply::Done)
                    }
                    SeqOp::Stats => Ok(OpReply::Stats(Box::new(StageReport {
                        node: n.hello.node_name.clone(),
                        range: ls.range,
                        n_threads: stage.info().context.n_threads,
                        counters: stage.counters(),
                        node_data_bytes_sent: n.data_bytes_sent().await,
                        node_peak_rss_bytes: crate::profile::peak_rss_bytes(),
                    }))),
                };
                let reply = match r {
                    Ok(v) => Message::SeqDone(v),
                    Err(e) => Message::Error(PeerError::Stage { detail: e.to_string() }),
                };
                let _ = conn.tell(request, &reply).await;
            }
        }
    }
}

/// A fault answered in the shape the coordinator waits for: tokens, or an embedding.
async fn answer(node: &ClusterNode, to: &str, request: u64, embed: bool, f: StageFault) {
    let m = if embed { Message::Embedding(Err(f)) } else { Message::Tokens(Err(f)) };
    reply(node, to, request, m).await
}

/// Answers the coordinator at `to` (the batch's `reply_to`).
async fn reply(node: &ClusterNode, to: &str, request: u64, m: Message) {
    match node.conn(to).await {
        Ok(c) => {
            let _ = c.tell(request, &m).await;
        }
        Err(e) => tracing::warn!(%to, "cannot answer the coordinator: {e}"),
    }
}
