//! A cluster pipeline as a [`Pipe`] (what the runtime holds).

use super::ClusterChain;
use crate::engine::{LayerRange, SamplingParams, StageInfo, Token};
use crate::pipeline::{
    BoxFuture, Pending, PendingEmbedding, Pipe, Pipeline, PipelineError, PipelineReport, TokenChunk,
};

impl Pipe for ClusterChain {
    fn info(&self) -> &StageInfo {
        Pipeline::info(self)
    }
    fn stages(&self, _here: &str) -> Vec<(String, LayerRange)> {
        ClusterChain::stages(self).iter().map(|s| (s.node.clone(), s.range)).collect()
    }
    fn healthy(&self) -> bool {
        ClusterChain::healthy(self)
    }
    fn distributed(&self) -> bool {
        true
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
