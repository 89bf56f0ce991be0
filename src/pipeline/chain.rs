//! Stages of one model run back to back in this process.

use super::PipelineError;
use crate::engine::{
    Batch, BatchInput, ContextParams, DecodeOutput, EngineError, LayerRange, ModelWindow, StageHandle, StageInfo,
    StageSpec, Token,
};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

#[derive(Clone)]
pub struct Chain {
    stages: Vec<StageHandle>,
    /// Hidden-state bytes handed from stage to stage (what would cross a network).
    handed: Arc<AtomicU64>,
}

impl Chain {
    /// Wraps loaded stages; they must cover `[0, n_layer)` in order.
    pub fn new(stages: Vec<StageHandle>) -> Result<Chain, PipelineError> {
        let n_layer = stages.first().map_or(0, |s| s.info().n_layer);
        LayerRange::tiling(stages.iter().map(|s| s.info().range), n_layer)
            .map_err(|e| PipelineError::BadStages { n_layer, detail: e.to_string() })?;
        Ok(Chain { stages, handed: Arc::default() })
    }

    /// Loads `path` as one full stage (`ranges = None`) or as the given windows, each on its own
    /// thread. Blocking.
    pub fn load(
        path: &Path,
        ranges: Option<&[LayerRange]>,
        context: ContextParams,
        use_mmap: bool,
    ) -> Result<Chain, PipelineError> {
        let windows: Vec<ModelWindow> = match ranges {
            None => vec![ModelWindow { use_mmap, ..ModelWindow::full(path) }],
            Some(rs) => {
                rs.iter().map(|r| ModelWindow { use_mmap, ..ModelWindow::layers(path, r.begin, r.end) }).collect()
            }
        };
        Chain::load_windows(windows, context)
    }

    /// Loads each window (its layers, its device) as a stage on its own thread. Blocking.
    pub fn load_windows(windows: Vec<ModelWindow>, context: ContextParams) -> Result<Chain, PipelineError> {
        let stages = windows
            .into_iter()
            .map(|window| StageHandle::load(StageSpec { window, context }))
            .collect::<Result<Vec<_>, _>>()?;
        Chain::new(stages)
    }

    pub fn stages(&self) -> &[StageHandle] {
        &self.stages
    }

    pub fn first(&self) -> &StageHandle {
        &self.stages[0]
    }

    pub fn last(&self) -> &StageHandle {
        self.stages.last().expect("a chain has stages")
    }

    pub fn info(&self) -> &StageInfo {
        self.first().info()
    }

    /// Runs a token batch through every stage. Returns the last stage's logits (if asked) and
    /// sampled tokens (if asked) for the output rows.
    pub async fn decode(
        &self,
        tokens: Vec<Token>,
        pos: Vec<i32>,
        seq: Vec<i32>,
        output: Vec<bool>,
        want_logits: bool,
        sample: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<Token>), PipelineError> {
        let chunk = super::TokenChunk { tokens, pos, seq, output, spec: Default::default() };
        self.decode_chunk(chunk, want_logits, sample).await
    }

    /// [`Chain::decode`] of a whole chunk, speculation included.
    pub async fn decode_chunk(
        &self,
        chunk: super::TokenChunk,
        want_logits: bool,
        sample: bool,
    ) -> Result<(Vec<Vec<f32>>, Vec<Token>), PipelineError> {
        let rx = self.queue(chunk, want_logits, sample).await?;
        Self::answer(rx, self.stages.len()).await
    }

    /// Hands the batch to the first stage; each stage passes its hidden state to the next.
    async fn queue(
        &self,
        c: super::TokenChunk,
        want_logits: bool,
        sample: bool,
    ) -> Result<oneshot::Receiver<Result<DecodeOutput, EngineError>>, PipelineError> {
        let batch = self.batch(c);
        Ok(self.stages[0].decode_through(batch, self.stages[1..].to_vec(), want_logits, sample).await?)
    }

    fn batch(&self, c: super::TokenChunk) -> Batch {
        let rows = c.pos.len() as u64;
        let n_embd = self.info().n_embd as u64;
        // what would cross a network: one hidden row per token per cut
        self.handed.fetch_add(4 * n_embd * rows * (self.stages.len() as u64 - 1), Ordering::Relaxed);
        Batch { input: BatchInput::Tokens(c.tokens), pos: c.pos, seq: c.seq, output: c.output, spec: c.spec }
    }

    async fn answer(
        rx: oneshot::Receiver<Result<DecodeOutput, EngineError>>,
        n_stages: usize,
    ) -> Result<(Vec<Vec<f32>>, Vec<Token>), PipelineError> {
        match rx.await.map_err(|_| EngineError::StageGone)?? {
            DecodeOutput::Last { logits, tokens } => Ok((logits, tokens)),
            DecodeOutput::Hidden(_) => Err(PipelineError::Protocol { index: n_stages - 1, what: "hidden states" }),
            DecodeOutput::Embedding(_) => Err(PipelineError::Protocol { index: n_stages - 1, what: "an embedding" }),
        }
    }

    /// Drops `[p0, p1)` of `seq` on every stage (all are asked even if one refuses).
    pub async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, PipelineError> {
        let mut ok = true;
        for s in &self.stages {
            ok &= s.seq_rm(seq, p0, p1).await?;
        }
        Ok(ok)
    }

    pub async fn remove_seq(&self, seq: i32) -> Result<bool, PipelineError> {
        self.seq_rm(seq, -1, -1).await
    }

    pub async fn clear(&self) -> Result<(), PipelineError> {
        for s in &self.stages {
            s.clear().await?;
        }
        Ok(())
    }
}

impl Chain {
    /// Tokenizes, formats and detokenizes (the first stage's handle).
    pub fn vocab(&self) -> &StageHandle {
        self.first()
    }
}

impl super::Pipeline for Chain {
    fn info(&self) -> &StageInfo {
        self.first().info()
    }

    async fn set_sampler(
        &self,
        seq: i32,
        params: crate::engine::SamplingParams,
        history: Vec<Token>,
    ) -> Result<(), PipelineError> {
        Ok(self.last().set_sampler(seq, params, history).await?)
    }

    async fn submit(&self, chunk: super::TokenChunk, sample: bool) -> Result<super::Pending, PipelineError> {
        let rx = self.queue(chunk, false, sample).await?;
        let n = self.stages.len();
        Ok(Box::pin(async move { Chain::answer(rx, n).await.map(|(_, tokens)| tokens) }))
    }

    async fn embed(&self, chunk: super::TokenChunk) -> Result<super::PendingEmbedding, PipelineError> {
        let batch = self.batch(chunk);
        let rx = self.stages[0].embed_through(batch, self.stages[1..].to_vec()).await?;
        let last = self.stages.len() - 1;
        Ok(Box::pin(async move {
            match rx.await.map_err(|_| EngineError::StageGone)?? {
                DecodeOutput::Embedding(v) => Ok(v),
                _ => Err(PipelineError::Protocol { index: last, what: "no embedding" }),
            }
        }))
    }

    async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, PipelineError> {
        Chain::seq_rm(self, seq, p0, p1).await
    }

    async fn report(&self) -> Result<super::PipelineReport, PipelineError> {
        // callers ask after their batches have answered, so nothing is in flight
        let (handed, peak) = (self.handed.load(Ordering::Relaxed), crate::profile::peak_rss_bytes());
        let stages = self
            .stages
            .iter()
            .map(|s| super::StageReport {
                node: LOCAL.into(),
                range: s.info().range,
                n_threads: s.info().context.n_threads,
                counters: s.counters(),
                node_data_bytes_sent: handed,
                node_peak_rss_bytes: peak,
            })
            .collect();
        let coordinator = super::NodeReport { node: LOCAL.into(), data_bytes_sent: handed, peak_rss_bytes: peak };
        Ok(super::PipelineReport { stages, coordinator })
    }
}

/// The node name in-process stages report.
pub const LOCAL: &str = "local";
