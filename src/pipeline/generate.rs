//! The generation loop: prefill in n_batch chunks, then one token per step, sampled on the last
//! stage and fed back to the first.

use super::{Pipeline, PipelineError, TokenChunk};
use crate::engine::{SamplingParams, Token};
use serde::Serialize;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Tokens to decode, following the `n_past` positions already in this sequence's KV.
    pub prompt: Vec<Token>,
    /// Tokens already in the KV (their history feeds the repetition penalty).
    pub past: Vec<Token>,
    pub seq: i32,
    pub sampling: SamplingParams,
    /// Stop after this many generated tokens (None: until end of generation or a full context).
    pub max_tokens: Option<u32>,
    /// Keep going past end-of-generation tokens (benchmarks, equivalence tests).
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DoneReason {
    /// An end-of-generation token (not emitted) or the caller stopped.
    Stop,
    /// max_tokens reached, or the context is full.
    Length,
}

#[derive(Clone, Debug)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_duration: Duration,
    pub generated_tokens: usize,
    /// From the first sampled token to the last.
    pub eval_duration: Duration,
    pub done_reason: DoneReason,
    /// Positions of this sequence now in the KV cache (the last token emitted before a length
    /// stop is not decoded).
    pub n_past: usize,
}

/// Generates into `req.seq`; `on_token` gets each generated token (not end-of-generation ones)
/// and may stop early with `ControlFlow::Break`.
pub async fn generate<P: Pipeline + ?Sized>(
    chain: &P,
    req: GenerateRequest,
    mut on_token: impl FnMut(Token) -> ControlFlow<()>,
) -> Result<GenerationStats, PipelineError> {
    if req.prompt.is_empty() {
        return Err(PipelineError::EmptyPrompt);
    }
    let info = chain.info().clone();
    let n_ctx = info.n_ctx as usize;
    let n_past = req.past.len();
    if n_past + req.prompt.len() >= n_ctx {
        return Err(PipelineError::PromptTooLong { prompt: n_past + req.prompt.len(), n_ctx: info.n_ctx });
    }
    let mut history = req.past.clone();
    history.extend_from_slice(&req.prompt);
    chain.set_sampler(req.seq, req.sampling.clone(), history).await?;

    // prefill
    let t0 = Instant::now();
    let n_batch = info.context.n_batch as usize;
    let mut pos = n_past;
    // all chunks at once: a multi-node pipeline works on consecutive chunks side by side
    let chunks = TokenChunk::prompt(&req.prompt, n_past, req.seq, n_batch);
    pos += req.prompt.len();
    let mut next = sampled(chain.run(chunks).await?)?;
    let prompt_duration = t0.elapsed();

    // decode
    let t1 = Instant::now();
    let mut generated = 0usize;
    let done_reason = loop {
        if !req.ignore_eos && info.is_eog(next) {
            break DoneReason::Stop;
        }
        generated += 1;
        if on_token(next).is_break() {
            break DoneReason::Stop;
        }
        if req.max_tokens.is_some_and(|m| generated >= m as usize) || pos + 1 >= n_ctx {
            break DoneReason::Length;
        }
        let step = TokenChunk {
            tokens: vec![next],
            pos: vec![pos as i32],
            seq: vec![req.seq],
            output: vec![true],
            spec: Default::default(),
        };
        let toks = chain.run(vec![step]).await?;
        pos += 1;
        next = sampled(toks)?;
    };
    Ok(GenerationStats {
        prompt_tokens: req.prompt.len(),
        prompt_duration,
        generated_tokens: generated,
        eval_duration: t1.elapsed(),
        done_reason,
        n_past: pos,
    })
}

/// The one token a step sampled, or why the sequence's grammar ended it.
fn sampled(tokens: Vec<Token>) -> Result<Token, PipelineError> {
    let t = *tokens.first().ok_or(PipelineError::Protocol { index: 0, what: "no sampled token" })?;
    match crate::engine::GrammarFault::of_token(t) {
        Some(f) => Err(PipelineError::Engine(f.into())),
        None => Ok(t),
    }
}
