//! The coordinator's view of a pipeline whose stages run on (possibly) other nodes. It sends
//! token batches to the first stage; hidden states travel from stage to stage directly; the last
//! stage samples and answers here. KV and sampler operations go to every stage.

use super::{Answer, ClusterNode};
use crate::engine::{ContextParams, LayerRange, ModelWindow, SamplingParams, StageHandle, StageInfo, StageSpec, Token};
use crate::pipeline::{
    FaultKind, NodeReport, Pending, PendingEmbedding, Pipeline, PipelineError, PipelineReport, StageFault, TokenChunk,
};
use crate::transport::{BatchMsg, Conn, LoadStage, Message, OpReply, SeqOp, StageOp, TransportError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// One stage of a placement: which node (by name and peer address) runs which layers.
#[derive(Clone, Debug)]
pub struct StagePlacement {
    pub node: String,
    pub addr: String,
    pub range: LayerRange,
}

/// Where stage nodes that lack the model get their windows: the nodes holding it whole (this one
/// too when `here`), fastest first for each stage node, then the hub file when there is one.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// This node holds the whole file (it resolved the model to it).
    pub here: bool,
    pub hub: Option<crate::store::HubFile>,
}

pub struct ClusterChain {
    node: Arc<ClusterNode>,
    instance: u64,
    stages: Vec<StagePlacement>,
    conns: Vec<Conn>,
    vocab: StageHandle,
    info: StageInfo,
}

const LOAD_TIMEOUT: Duration = Duration::from_secs(600);
const OP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one batch's answer; a dead stage is noticed much sooner (its connection).
const BATCH_TIMEOUT: Duration = Duration::from_secs(600);

/// The fault of stage `i` (placed as `st`).
fn fault(i: usize, st: &StagePlacement, kind: FaultKind) -> PipelineError {
    PipelineError::Remote(StageFault { stage: i, node: st.node.clone(), kind })
}

/// A failed request to stage `i`: a typed refusal stays typed.
fn failed(i: usize, st: &StagePlacement, e: TransportError) -> PipelineError {
    fault(i, st, FaultKind::from_transport(e))
}

/// An answer of the wrong kind from stage `i`.
fn unexpected(i: usize, st: &StagePlacement, m: &Message) -> PipelineError {
    fault(i, st, FaultKind::Malformed { detail: format!("unexpected {:?} answer", m.kind()) })
}

impl ClusterChain {
    /// Asks every stage's node to load its window of `model` (resolved here to the whole file
    /// `path`, `size` bytes); the coordinator itself loads only the vocabulary.
    pub async fn load(
        node: Arc<ClusterNode>,
        model: &str,
        path: &Path,
        size: u64,
        stages: Vec<StagePlacement>,
        context: ContextParams,
    ) -> Result<ClusterChain, PipelineError> {
        let origin = Origin { here: true, hub: None };
        ClusterChain::load_from(node, model, path, size, stages, context, origin).await
    }

    /// [`ClusterChain::load`] where `path` may be a header-only partial (this node lacks the
    /// model) and stages fetch their windows as `origin` says.
    pub async fn load_from(
        node: Arc<ClusterNode>,
        model: &str,
        path: &Path,
        size: u64,
        stages: Vec<StagePlacement>,
        context: ContextParams,
        origin: Origin,
    ) -> Result<ClusterChain, PipelineError> {
        let window = ModelWindow { vocab_only: true, ..ModelWindow::full(path) };
        let vocab = tokio::task::spawn_blocking(move || StageHandle::load(StageSpec { window, context }))
            .await
            .map_err(|e| PipelineError::BadStages { n_layer: 0, detail: e.to_string() })??;
        let n_layer = vocab.info().n_layer;
        LayerRange::tiling(stages.iter().map(|st| st.range), n_layer).map_err(|e| {
            let on = |r: &LayerRange| stages.iter().find(|st| st.range == *r).map(|st| st.node.clone());
            let detail = match &e {
                crate::engine::TilingError::Gap { range, .. } => format!("{e} (on {})", on(range).unwrap_or_default()),
                _ => e.to_string(),
            };
            PipelineError::BadStages { n_layer, detail }
        })?;
        let instance = node.new_request();
        let mut conns = Vec::new();
        for (i, st) in stages.iter().enumerate() {
            conns.push(node.conn(&st.addr).await.map_err(|e| failed(i, st, e))?);
        }
        let mut holders = node.holders(model, Some(size));
        let me = (node.hello.node_name.clone(), node.hello.peer_addr.clone());
        if origin.here && !holders.contains(&me) {
            // a file outside the scanned dirs (a CLI path) is not in this node's holdings
            holders.insert(0, me.clone());
        }
        let peers = node.peers();
        // every stage loads at once; if one cannot, the others are unloaded again
        let mut loads = tokio::task::JoinSet::new();
        for (i, st) in stages.iter().enumerate() {
            let req = LoadStage {
                instance,
                model: model.to_string(),
                model_size: size,
                range: st.range,
                n_ctx: context.n_ctx,
                n_batch: context.n_batch,
                n_seq_max: context.n_seq_max,
                exact: context.exact,
                next: stages.get(i + 1).map(|s| s.addr.clone()),
                index: i,
                sources: super::weights::sources_for(&node.hello.node_id, &me.0, &peers, &st.node, &holders),
                hub: origin.hub.clone(),
            };
            let (conn, st) = (conns[i].clone(), st.clone());
            loads.spawn(async move {
                match conn.call(&Message::LoadStage(Box::new(req)), LOAD_TIMEOUT).await {
                    Ok(Message::Loaded { n_ctx }) => Ok::<u32, PipelineError>(n_ctx),
                    Ok(m) => Err(unexpected(i, &st, &m)),
                    Err(e) => Err(failed(i, &st, e)),
                }
            });
        }
        let mut n_ctx = u32::MAX;
        let mut failed = None;
        while let Some(r) = loads.join_next().await {
            match r {
                Ok(Ok(n)) => n_ctx = n_ctx.min(n),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(e) => {
                    failed.get_or_insert(PipelineError::BadStages { n_layer, detail: e.to_string() });
                }
            }
        }
        if let Some(e) = failed {
            for c in &conns {
                let _ = c.tell(0, &Message::Unload { instance }).await;
            }
            return Err(e);
        }
        let mut info = vocab.info().clone();
        info.n_ctx = n_ctx;
        info.range = LayerRange { begin: 0, end: n_layer };
        tracing::info!(instance, stages = ?stages.iter().map(|s| format!("{}={}", s.node, s.range)).collect::<Vec<_>>(), "cluster pipeline loaded");
        Ok(ClusterChain { node, instance, stages, conns, vocab, info })
    }

    pub fn stages(&self) -> &[StagePlacement] {
        &self.stages
    }

    /// Every stage's node is up (its connection open, its heartbeats answered).
    pub fn healthy(&self) -> bool {
        self.conns.iter().zip(&self.stages).all(|(c, s)| !c.is_closed() && self.node.alive(&s.addr))
    }

    /// Applies `op` on stage `i`: its typed answer.
    async fn op(&self, i: usize, op: SeqOp) -> Result<OpReply, PipelineError> {
        let m = Message::SeqOp(StageOp { instance: self.instance, stage: i, op });
        match self.conns[i].call(&m, OP_TIMEOUT).await {
            Ok(Message::SeqDone(r)) => Ok(r),
            Ok(m) => Err(unexpected(i, &self.stages[i], &m)),
            Err(e) => Err(failed(i, &self.stages[i], e)),
        }
    }

    /// [`Self::op`] where anything but `want` answered is a malformed answer.
    fn expect(&self, i: usize, r: OpReply, want: &str) -> PipelineError {
        let kind = FaultKind::Malformed { detail: format!("{r:?} where {want} was expected") };
        fault(i, &self.stages[i], kind)
    }
}

/// What waiting for a batch's answer needs: the stages, to notice one going away and to say
/// which one an error is about.
struct Watch {
    node: Arc<ClusterNode>,
    stages: Vec<StagePlacement>,
    conns: Vec<Conn>,
}

impl Watch {
    async fn answer(
        &self,
        request: u64,
        mut rx: oneshot::Receiver<Result<Answer, StageFault>>,
    ) -> Result<Answer, PipelineError> {
        let last = self.stages.len() - 1;
        let started = std::time::Instant::now();
        // a stage's connection closing (its node died) is noticed at once; a hung node by its
        // missed heartbeats, looked at every 200 ms
        let mut closing = tokio::task::JoinSet::new();
        for c in &self.conns {
            let c = c.clone();
            closing.spawn(async move { c.closed().await });
        }
        let r = loop {
            tokio::select! {
                r = &mut rx => break r.map_err(|_| PipelineError::Protocol { index: last, what: "a dropped answer" })?,
                Some(_) = closing.join_next() => {
                    if let Some(i) = self.dead_stage() {
                        self.node.forget(request);
                        return Err(fault(i, &self.stages[i], FaultKind::Closed));
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(i) = self.dead_stage() {
                        self.node.forget(request);
                        return Err(fault(i, &self.stages[i], FaultKind::Gone));
                    }
                    if started.elapsed() > BATCH_TIMEOUT {
                        self.node.forget(request);
                        return Err(fault(last, &self.stages[last], FaultKind::Timeout));
                    }
                }
            }
        };
        r.map_err(|f| self.placed(f))
    }

    /// A fault from inside the pipeline, named as this coordinator placed its stage (a stage
    /// index past the last, from a hostile or confused peer, is the last stage: it answered).
    fn placed(&self, f: StageFault) -> PipelineError {
        let i = f.stage.min(self.stages.len() - 1);
        fault(i, &self.stages[i], f.kind)
    }

    /// The first stage whose node went away (connection closed) or stopped answering its
    /// heartbeats, if any.
    fn dead_stage(&self) -> Option<usize> {
        self.conns.iter().zip(&self.stages).position(|(c, s)| c.is_closed() || !self.node.alive(&s.addr))
    }
}

impl ClusterChain {
    /// Sends a batch to the first stage; the last one answers `request` here.
    async fn send(
        &self,
        c: TokenChunk,
        sample: bool,
        embed: bool,
    ) -> Result<(Watch, u64, oneshot::Receiver<Result<Answer, StageFault>>), PipelineError> {
        let request = self.node.new_request();
        let rx = self.node.wait_tokens(request);
        let msg = BatchMsg {
            instance: self.instance,
            stage: 0,
            sample,
            pos: c.pos,
            seq: c.seq,
            output: c.output,
            tokens: c.tokens,
            hidden: vec![],
            spec: c.spec,
            reply_to: self.node.peer_addr().to_string(),
        };
        let msg = if embed { Message::EmbedForward(msg) } else { Message::Forward(msg) };
        if let Err(e) = self.conns[0].tell(request, &msg).await {
            self.node.forget(request);
            return Err(failed(0, &self.stages[0], e));
        }
        let watch = Watch { node: self.node.clone(), stages: self.stages.clone(), conns: self.conns.clone() };
        Ok((watch, request, rx))
    }
}

impl ClusterChain {
    /// Tokenizes, formats and detokenizes for this pipeline.
    pub fn vocab(&self) -> &StageHandle {
        &self.vocab
    }
}

impl Pipeline for ClusterChain {
    fn info(&self) -> &StageInfo {
        &self.info
    }

    async fn set_sampler(&self, seq: i32, params: SamplingParams, history: Vec<Token>) -> Result<(), PipelineError> {
        let last = self.stages.len() - 1;
        match self.op(last, SeqOp::Sampler { seq, params, history }).await? {
            OpReply::Done => Ok(()),
            r => Err(self.expect(last, r, "done")),
        }
    }

    async fn submit(&self, c: TokenChunk, sample: bool) -> Result<Pending, PipelineError> {
        let (watch, request, rx) = self.send(c, sample, false).await?;
        let last = self.stages.len() - 1;
        Ok(Box::pin(async move {
            match watch.answer(request, rx).await? {
                Answer::Tokens(t) => Ok(t),
                Answer::Embedding(_) => Err(PipelineError::Protocol { index: last, what: "an embedding" }),
            }
        }))
    }

    async fn embed(&self, c: TokenChunk) -> Result<PendingEmbedding, PipelineError> {
        let (watch, request, rx) = self.send(c, false, true).await?;
        let last = self.stages.len() - 1;
        Ok(Box::pin(async move {
            match watch.answer(request, rx).await? {
                Answer::Embedding(v) => Ok(v),
                Answer::Tokens(_) => Err(PipelineError::Protocol { index: last, what: "tokens for an embedding" }),
            }
        }))
    }

    async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, PipelineError> {
        let mut ok = true;
        for i in 0..self.stages.len() {
            match self.op(i, SeqOp::Remove { seq, p0, p1 }).await? {
                OpReply::Removed(r) => ok &= r,
                r => return Err(self.expect(i, r, "removed")),
            }
        }
        Ok(ok)
    }

    async fn report(&self) -> Result<PipelineReport, PipelineError> {
        let mut stages = Vec::with_capacity(self.stages.len());
        for i in 0..self.stages.len() {
            match self.op(i, SeqOp::Stats).await? {
                OpReply::Stats(r) => stages.push(*r),
                r => return Err(self.expect(i, r, "stats")),
            }
        }
        let coordinator = NodeReport {
            node: self.node.hello.node_name.clone(),
            data_bytes_sent: self.node.data_bytes_sent().await,
            peak_rss_bytes: crate::profile::peak_rss_bytes(),
        };
        Ok(PipelineReport { stages, coordinator })
    }
}

impl Drop for ClusterChain {
    fn drop(&mut self) {
        let msg = Message::Unload { instance: self.instance };
        let conns = self.conns.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for c in conns {
                    let _ = c.tell(0, &msg).await;
                }
            });
        }
    }
}
