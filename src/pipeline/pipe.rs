//! A pipeline as its users hold it: object safe, so that an instance runs on stages in this
//! process ([`Chain`]), on stages across the cluster (`cluster::ClusterChain`), or on a scripted
//! fake in tests (`runtime/fake_pipe.rs`); the batcher, healing, `exo bench` and embeddings only
//! ever hold a `dyn Pipe`.

use super::{Chain, Pending, PendingEmbedding, Pipeline, PipelineError, PipelineReport, TokenChunk};
use crate::engine::{LayerRange, SamplingParams, StageInfo, Token};
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the runtime asks of a pipeline (the operations of [`Pipeline`], boxed, and what it
/// shows of its stages).
pub trait Pipe: Send + Sync {
    /// The model's vocabulary and context settings (n_ctx, n_batch, end-of-generation tokens).
    fn info(&self) -> &StageInfo;
    /// (node, layers) of each stage, for `/api/ps` and `/cluster`; `here` names this node.
    fn stages(&self, here: &str) -> Vec<(String, LayerRange)>;
    fn n_stages(&self) -> usize {
        self.stages("").len()
    }
    /// Every stage is up (in-process stages always are).
    fn healthy(&self) -> bool {
        true
    }
    /// Stages run on other nodes: a failed one can be replaced by placing again.
    fn distributed(&self) -> bool {
        false
    }
    fn set_sampler(
        &self,
        seq: i32,
        params: SamplingParams,
        history: Vec<Token>,
    ) -> BoxFuture<'_, Result<(), PipelineError>>;
    /// See [`Pipeline::submit`]: batches reach every stage in submission order.
    fn submit(&self, chunk: TokenChunk, sample: bool) -> BoxFuture<'_, Result<Pending, PipelineError>>;
    fn embed(&self, chunk: TokenChunk) -> BoxFuture<'_, Result<PendingEmbedding, PipelineError>>;
    /// Drops positions `[p0, p1)` of `seq` on every stage (`seq = -1`: all; `p1 = -1`: to the end).
    fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> BoxFuture<'_, Result<bool, PipelineError>>;
    fn report(&self) -> BoxFuture<'_, Result<PipelineReport, PipelineError>>;
}

/// What a pipeline shows of its stages; with [`Pipeline`] it makes a [`Pipe`].
pub trait Stages {
    /// (node, layers) of each stage; `here` names this node.
    fn stage_list(&self, here: &str) -> Vec<(String, LayerRange)>;
    fn all_up(&self) -> bool {
        true
    }
    fn remote(&self) -> bool {
        false
    }
}

impl Stages for Chain {
    fn stage_list(&self, here: &str) -> Vec<(String, LayerRange)> {
        self.stages().iter().map(|s| (here.to_string(), s.info().range)).collect()
    }
}

impl<T: Pipeline + Stages> Pipe for T {
    fn info(&self) -> &StageInfo {
        Pipeline::info(self)
    }
    fn stages(&self, here: &str) -> Vec<(String, LayerRange)> {
        self.stage_list(here)
    }
    fn healthy(&self) -> bool {
        self.all_up()
    }
    fn distributed(&self) -> bool {
        self.remote()
    }
    fn set_sampler(
        &self,
        seq: i32,
        params: SamplingParams,
        history: Vec<Token>,
    ) -> BoxFuture<'_, Result<(), PipelineError>> {
        Box::pin(Pipeline::set_sampler(self, seq, params, history))
    }
    fn submit(&self, chunk: TokenChunk, sample: bool) -> BoxFuture<'_, Result<Pending, PipelineError>> {
        Box::pin(Pipeline::submit(self, chunk, sample))
    }
    fn embed(&self, chunk: TokenChunk) -> BoxFuture<'_, Result<PendingEmbedding, PipelineError>> {
        Box::pin(Pipeline::embed(self, chunk))
    }
    fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> BoxFuture<'_, Result<bool, PipelineError>> {
        Box::pin(Pipeline::seq_rm(self, seq, p0, p1))
    }
    fn report(&self) -> BoxFuture<'_, Result<PipelineReport, PipelineError>> {
        Box::pin(Pipeline::report(self))
    }
}

/// Everything written against [`Pipeline`] (generation, `exo bench`, embeddings) runs on a
/// `dyn Pipe` too.
impl Pipeline for dyn Pipe + '_ {
    fn info(&self) -> &StageInfo {
        Pipe::info(self)
    }
    async fn set_sampler(&self, seq: i32, params: SamplingParams, history: Vec<Token>) -> Result<(), PipelineError> {
        Pipe::set_sampler(self, seq, params, history).await
    }
    async fn submit(&self, chunk: TokenChunk, sample: bool) -> Result<Pending, PipelineError> {
        Pipe::submit(self, chunk, sample).await
    }
    async fn embed(&self, chunk: TokenChunk) -> Result<PendingEmbedding, PipelineError> {
        Pipe::embed(self, chunk).await
    }
    async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, PipelineError> {
        Pipe::seq_rm(self, seq, p0, p1).await
    }
    async fn report(&self) -> Result<PipelineReport, PipelineError> {
        Pipe::report(self).await
    }
}
