//! The generation loop: prefill in n_batch chunks, then one token per step, sampled on the last
//! stage and fed back to the first.

use super::{Pipeline, PipelineError, TokenChunk};
use crate::engine::{SamplingParams, Token, NO_DRAFT, UNSAMPLED};
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
    /// Speculative decoding with n-gram proposals of at most this many tokens per step (0:
    /// one token per step). The output is the same (see `engine::Speculation`).
    pub draft_window: usize,
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
    /// Steps that verified proposals, tokens proposed, and proposals taken.
    pub windows: usize,
    pub proposed: usize,
    pub accepted: usize,
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
    chain.set_sampler(req.seq, req.sampling.clone(), history.clone()).await?;

    // prefill
    let t0 = Instant::now();
    let n_batch = info.context.n_batch as usize;
    let mut pos = n_past;
    // all chunks at once: a multi-node pipeline works on consecutive chunks side by side
    let chunks = TokenChunk::prompt(&req.prompt, n_past, req.seq, n_batch);
    pos += req.prompt.len();
    let next = sampled(chain.run(chunks).await?)?;
    let prompt_duration = t0.elapsed();

    // decode: `queue` holds sampled tokens not emitted yet; all but the last were decoded (they
    // are verified proposals), the last is decoded in the next step
    let t1 = Instant::now();
    let (mut generated, mut windows, mut proposed, mut accepted) = (0usize, 0, 0, 0);
    let mut queue = std::collections::VecDeque::from([next]);
    // positions a rejected window left: the next step drops them first
    let mut trim: Option<usize> = None;
    let done_reason = loop {
        let next = queue.pop_front().expect("a sampled token waits");
        if !req.ignore_eos && info.is_eog(next) {
            break DoneReason::Stop;
        }
        generated += 1;
        history.push(next);
        if on_token(next).is_break() {
            break DoneReason::Stop;
        }
        if req.max_tokens.is_some_and(|m| generated >= m as usize) || pos + 1 >= n_ctx {
            break DoneReason::Length;
        }
        if !queue.is_empty() {
            pos += 1; // a taken proposal: decoded already
            continue;
        }
        // proposals never outrun the limits, so a window only ends early on an end token
        let room = req
            .draft_window
            .min(req.max_tokens.map_or(usize::MAX, |m| (m as usize).saturating_sub(generated + 1)))
            .min(n_ctx.saturating_sub(pos + 2));
        let mut drafts = super::ngram(&history, room);
        if let Some(e) = drafts.iter().position(|&t| !req.ignore_eos && info.is_eog(t)) {
            drafts.truncate(e);
        }
        let n = drafts.len() + 1;
        let mut step = TokenChunk {
            tokens: std::iter::once(next).chain(drafts.iter().copied()).collect(),
            pos: (pos..pos + n).map(|p| p as i32).collect(),
            seq: vec![req.seq; n],
            output: vec![true; n],
            spec: Default::default(),
        };
        if !drafts.is_empty() {
            step.spec.draft = drafts.iter().copied().chain([NO_DRAFT]).collect();
        }
        step.spec.trim = trim.take().map(|p| (req.seq, p as i32)).into_iter().collect();
        let toks = chain.run(vec![step]).await?;
        pos += 1;
        let taken: Vec<Token> = toks.into_iter().take_while(|&t| t != UNSAMPLED).collect();
        if taken.is_empty() || taken.len() > n {
            return Err(PipelineError::Protocol { index: 0, what: "no sampled token" });
        }
        if !drafts.is_empty() {
            (windows, proposed, accepted) = (windows + 1, proposed + drafts.len(), accepted + taken.len() - 1);
        }
        // rows past the taken ones hold rejected proposals
        if taken.len() < n {
            trim = Some(pos + taken.len() - 1);
        }
        for t in taken {
            queue.push_back(sampled(vec![t])?);
        }
    };
    // a stop inside a window leaves decoded proposals past the end: drop them
    let n_past = pos;
    if trim.is_some() || !queue.is_empty() {
        chain.seq_rm(req.seq, n_past as i32, -1).await?;
    }
    Ok(GenerationStats {
        prompt_tokens: req.prompt.len(),
        prompt_duration,
        generated_tokens: generated,
        eval_duration: t1.elapsed(),
        done_reason,
        n_past,
        windows,
        proposed,
        accepted,
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
