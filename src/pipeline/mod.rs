//! Driving a model split into stages: an in-process [`Chain`] of stage handles (hidden states
//! handed over in memory) and the token generation loop over it.

mod bench;
mod chain;
mod embed;
mod generate;
mod lookup;
mod pipe;

pub use crate::transport::{FaultKind, StageFault, StageReport};
pub use bench::{
    median, run_bench, BenchConfig, BenchConfigError, BenchNode, BenchReport, BenchRun, BenchSpeculation, BenchStage,
    BenchTest,
};
pub use chain::{Chain, LOCAL};
pub use embed::{embed_chunk, embed_tokens, MAX_EMBED_ROWS_BYTES};
pub use generate::{generate, DoneReason, GenerateRequest, GenerationStats};
pub use lookup::{ngram, NGRAM_SPAN};
pub use pipe::{BoxFuture, Pipe, Stages};

use crate::engine::{SamplingParams, Speculation, StageInfo, Token};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// The answer to a submitted batch: the tokens sampled at its output rows (empty when it was
/// not sampled).
pub type Pending = Pin<Box<dyn Future<Output = Result<Vec<Token>, PipelineError>> + Send>>;

/// The answer to a submitted embedding batch: the sum of the embeddings of its output rows.
pub type PendingEmbedding = Pin<Box<dyn Future<Output = Result<Vec<f32>, PipelineError>> + Send>>;

/// Token ids for one decode call, with the positions, sequences and output rows every stage uses.
#[derive(Clone, Debug)]
pub struct TokenChunk {
    pub tokens: Vec<Token>,
    pub pos: Vec<i32>,
    pub seq: Vec<i32>,
    pub output: Vec<bool>,
    /// Drafts to verify and rejected positions to drop (see [`Speculation`]).
    pub spec: Speculation,
}

impl TokenChunk {
    /// `tokens` at positions `start..` of `seq`, cut into `n_batch`-token chunks; only the last
    /// row of the last chunk is an output.
    pub fn prompt(tokens: &[Token], start: usize, seq: i32, n_batch: usize) -> Vec<TokenChunk> {
        let n_batch = n_batch.max(1);
        tokens
            .chunks(n_batch)
            .enumerate()
            .map(|(ci, c)| {
                let first = start + ci * n_batch;
                let last_chunk = (ci + 1) * n_batch >= tokens.len();
                TokenChunk {
                    tokens: c.to_vec(),
                    pos: (first..first + c.len()).map(|p| p as i32).collect(),
                    seq: vec![seq; c.len()],
                    output: (0..c.len()).map(|i| last_chunk && i + 1 == c.len()).collect(),
                    spec: Speculation::default(),
                }
            })
            .collect()
    }
}

/// A model split into stages, wherever they run: what generation needs from it.
pub trait Pipeline: Send + Sync {
    /// The model's vocabulary and context settings (n_ctx, n_batch, end-of-generation tokens).
    fn info(&self) -> &StageInfo;
    fn set_sampler(
        &self,
        seq: i32,
        params: SamplingParams,
        history: Vec<Token>,
    ) -> impl Future<Output = Result<(), PipelineError>> + Send;
    /// Queues one batch. Batches reach every stage in the order they were submitted (await each
    /// submit before the next), so several can be in flight: stage k works on one while stage
    /// k+1 works on an earlier one. With `sample`, the last stage samples at the output rows
    /// with each row's sequence sampler.
    fn submit(&self, chunk: TokenChunk, sample: bool) -> impl Future<Output = Result<Pending, PipelineError>> + Send;
    /// Queues one embedding batch (in order with [`Pipeline::submit`]ted ones): every stage
    /// decodes it as usual and the last one answers the sum of the final embeddings (after the
    /// output norm) of the output rows, `n_embd_out` floats.
    fn embed(&self, chunk: TokenChunk) -> impl Future<Output = Result<PendingEmbedding, PipelineError>> + Send;
    /// Decodes the chunks in order (stages may work on consecutive chunks at once) and returns
    /// the tokens sampled at the output rows of the last chunk.
    fn run(&self, chunks: Vec<TokenChunk>) -> impl Future<Output = Result<Vec<Token>, PipelineError>> + Send {
        async move {
            let n = chunks.len();
            let mut pending = Vec::with_capacity(n);
            for (i, c) in chunks.into_iter().enumerate() {
                pending.push(self.submit(c, i + 1 == n).await?);
            }
            let mut last = Vec::new();
            for p in pending {
                last = p.await?;
            }
            Ok(last)
        }
    }
    /// Drops positions `[p0, p1)` of `seq` on every stage (`seq = -1`: all; `p1 = -1`: to the end).
    fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> impl Future<Output = Result<bool, PipelineError>> + Send;
    /// Work counters of every stage and of the nodes involved (for `exo bench`); asked after
    /// the work queued before it.
    fn report(&self) -> impl Future<Output = Result<PipelineReport, PipelineError>> + Send;
}

/// A node taking part in a pipeline without being a stage of it (the coordinator).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub data_bytes_sent: u64,
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineReport {
    pub stages: Vec<StageReport>,
    pub coordinator: NodeReport,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("stage {index} returned {what}, which the chain cannot use")]
    Protocol { index: usize, what: &'static str },
    #[error("the prompt has {prompt} tokens but the context holds {n_ctx}")]
    PromptTooLong { prompt: usize, n_ctx: u32 },
    #[error("empty prompt")]
    EmptyPrompt,
    #[error("stages must cover layers 0..{n_layer} contiguously: {detail}")]
    BadStages { n_layer: u32, detail: String },
    #[error("benchmark: {detail}")]
    Bench { detail: String },
    #[error("benchmark: {0}")]
    BenchConfig(#[from] bench::BenchConfigError),
    /// A stage of a cluster pipeline failed (healing rebuilds without it).
    #[error(transparent)]
    Remote(StageFault),
}

#[cfg(test)]
mod tests {
    use super::TokenChunk;

    #[test]
    fn prompt_chunks_cover_the_positions_with_one_output_at_the_end() {
        let c = TokenChunk::prompt(&[10, 11, 12, 13, 14], 3, 7, 2);
        assert_eq!(c.iter().map(|c| c.tokens.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert_eq!(c.iter().flat_map(|c| c.pos.clone()).collect::<Vec<_>>(), [3, 4, 5, 6, 7]);
        assert!(c.iter().all(|c| c.seq.iter().all(|&s| s == 7)));
        let outputs: Vec<bool> = c.iter().flat_map(|c| c.output.clone()).collect();
        assert_eq!(outputs, [false, false, false, false, true]);
        let even = TokenChunk::prompt(&[1, 2, 3, 4], 0, 0, 2);
        assert_eq!(even[1].output, [false, true]);
    }
}
