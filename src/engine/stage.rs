//! A loaded stage on its own OS thread, reached through a cloneable handle over a bounded channel.
//! The thread owns the model and context; llama.cpp is never touched from async code.

use super::batch::RawBatch;
use super::context::{Context, ContextParams};
use super::model::{LayerRange, Model, ModelWindow};
use super::sampler::{Sampler, SamplingParams};
use super::{EngineError, Pooling, Speculation, Token};
use crate::gguf::ModelShape;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Requests queued per stage before senders wait.
const QUEUE: usize = 16;

#[derive(Clone, Debug)]
pub struct StageSpec {
    pub window: ModelWindow,
    pub context: ContextParams,
}

/// What a loaded stage is: fixed for its lifetime, readable without a round trip.
#[derive(Clone, Debug)]
pub struct StageInfo {
    pub range: LayerRange,
    pub n_layer: u32,
    pub n_embd: usize,
    /// Width of the last layer's embeddings (see [`DecodeOutput::Embedding`]).
    pub n_embd_out: usize,
    /// How embeddings of this model are pooled.
    pub pooling: Pooling,
    pub n_vocab: usize,
    pub n_ctx: u32,
    pub n_ctx_train: u32,
    pub context: ContextParams,
    pub eog_tokens: Vec<Token>,
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub chat_template: Option<String>,
    pub shape: ModelShape,
    /// What the layers compute on: "CPU", or the ggml device name(s) ("Vulkan0", "CUDA0").
    pub device: String,
}

impl StageInfo {
    pub fn is_first(&self) -> bool {
        self.range.begin == 0
    }
    pub fn is_last(&self) -> bool {
        self.range.end == self.n_layer
    }
    pub fn is_eog(&self, t: Token) -> bool {
        self.eog_tokens.contains(&t)
    }
}

#[derive(Clone, Debug)]
pub enum BatchInput {
    Tokens(Vec<Token>),
    /// `n_tokens * n_embd` floats, row-major, from the previous stage.
    Hidden(Vec<f32>),
}

/// One decode step: the same positions, sequence ids and output flags go to every stage.
#[derive(Clone, Debug)]
pub struct Batch {
    pub input: BatchInput,
    pub pos: Vec<i32>,
    pub seq: Vec<i32>,
    /// Rows whose logits (last stage) are wanted.
    pub output: Vec<bool>,
    /// Drafted tokens to verify and rejected positions to drop (empty for a plain batch).
    pub spec: Speculation,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.pos.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }
}

#[derive(Clone, Debug)]
pub enum DecodeOutput {
    /// Non-last stage: the residual leaving the window, `n_tokens * n_embd` floats.
    Hidden(Vec<f32>),
    /// Last stage: per output row (in batch order) its logits if asked for, and its sampled
    /// token if sampling was asked for.
    Last { logits: Vec<Vec<f32>>, tokens: Vec<Token> },
    /// Last stage of an embedding batch: the sum of the output rows' embeddings (`n_embd_out`
    /// floats; see [`super::Pooling`]).
    Embedding(Vec<f32>),
}

pub use super::template::TemplateMessage;

enum Cmd {
    /// Decodes on this stage, then hands the hidden state straight to `next[0]` (which gets
    /// `next[1..]`), so consecutive batches stream through the stages in order without a round
    /// trip through async code; the stage without successors answers `reply`. `want_logits` and
    /// `sample` apply on that last stage.
    Decode {
        batch: Batch,
        want_logits: bool,
        sample: bool,
        /// An embedding batch: the last stage answers [`DecodeOutput::Embedding`].
        embed: bool,
        next: Vec<StageHandle>,
        reply: oneshot::Sender<Result<DecodeOutput, EngineError>>,
    },
    SetSampler {
        seq: i32,
        params: SamplingParams,
        history: Vec<Token>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    SeqRm {
        seq: i32,
        p0: i32,
        p1: i32,
        reply: oneshot::Sender<bool>,
    },
    Clear {
        reply: oneshot::Sender<()>,
    },
    SeqPosMax {
        seq: i32,
        reply: oneshot::Sender<i32>,
    },
    Tokenize {
        text: String,
        add_special: bool,
        parse_special: bool,
        reply: oneshot::Sender<Result<Vec<Token>, EngineError>>,
    },
    TokenBytes {
        tokens: Vec<Token>,
        special: bool,
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
    Template {
        messages: Vec<TemplateMessage>,
        add_assistant: bool,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
}

/// Work a stage has done since it was loaded (benchmarks read it before and after a run).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCounters {
    /// Decode calls.
    pub decodes: u64,
    /// Batch rows (tokens or hidden-state rows) decoded.
    pub tokens: u64,
    /// Time on the stage thread inside decode: the graph compute plus reading its output and
    /// sampling, not the time a batch waits in the queue.
    pub compute_ns: u64,
}

impl StageCounters {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &StageCounters) -> StageCounters {
        StageCounters {
            decodes: self.decodes.saturating_sub(before.decodes),
            tokens: self.tokens.saturating_sub(before.tokens),
            compute_ns: self.compute_ns.saturating_sub(before.compute_ns),
        }
    }
}

#[derive(Default)]
struct Counters {
    decodes: AtomicU64,
    tokens: AtomicU64,
    compute_ns: AtomicU64,
}

/// Cloneable handle to a stage thread. The thread exits when the last handle is dropped.
#[derive(Clone)]
pub struct StageHandle {
    tx: mpsc::Sender<Cmd>,
    info: Arc<StageInfo>,
    counters: Arc<Counters>,
}

impl StageHandle {
    /// Loads the window and its context on a new thread; blocks until loaded (call it from
    /// `spawn_blocking` in async code).
    pub fn load(spec: StageSpec) -> Result<StageHandle, EngineError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let r = spec.window.range;
        let name = match r {
            Some(r) => format!("exo-stage-{}-{}", r.begin, r.end),
            None => "exo-stage-full".to_string(),
        };
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let stage = match Stage::load(&spec) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if ready_tx.send(Ok(stage.info.clone())).is_ok() {
                    stage.run(rx, &thread_counters);
                } else {
                    drop(stage);
                }
                // the model and its context are freed: give their pages back
                super::memory::trim();
            })
            .map_err(|e| EngineError::Backend { reason: format!("cannot start a stage thread: {e}") })?;
        let info = ready_rx.recv().map_err(|_| EngineError::StageGone)??;
        Ok(StageHandle { tx, info: Arc::new(info), counters })
    }

    pub fn info(&self) -> &StageInfo {
        &self.info
    }

    /// Decode work done so far (read without a round trip to the stage thread).
    pub fn counters(&self) -> StageCounters {
        StageCounters {
            decodes: self.counters.decodes.load(Ordering::Relaxed),
            tokens: self.counters.tokens.load(Ordering::Relaxed),
            compute_ns: self.counters.compute_ns.load(Ordering::Relaxed),
        }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| EngineError::StageGone)?;
        rx.await.map_err(|_| EngineError::StageGone)
    }

    /// Runs one batch through this stage's layers.
    pub async fn decode(&self, batch: Batch, want_logits: bool, sample: bool) -> Result<DecodeOutput, EngineError> {
        self.call(|reply| Cmd::Decode { batch, want_logits, sample, embed: false, next: Vec::new(), reply }).await?
    }

    /// Runs an embedding batch through this stage (see [`StageHandle::embed_through`]).
    pub async fn embed(&self, batch: Batch) -> Result<DecodeOutput, EngineError> {
        self.call(|reply| Cmd::Decode {
            batch,
            want_logits: false,
            sample: false,
            embed: true,
            next: Vec::new(),
            reply,
        })
        .await?
    }

    /// Like [`StageHandle::decode_through`] for an embedding batch: the last stage answers the
    /// sum of the embeddings of the batch's output rows.
    pub async fn embed_through(
        &self,
        batch: Batch,
        next: Vec<StageHandle>,
    ) -> Result<oneshot::Receiver<Result<DecodeOutput, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Cmd::Decode { batch, want_logits: false, sample: false, embed: true, next, reply };
        self.tx.send(cmd).await.map_err(|_| EngineError::StageGone)?;
        Ok(rx)
    }

    /// Queues one batch for this stage and then `next` in order (each stage thread hands the
    /// hidden state to the next one itself) and returns the last stage's answer as a receiver.
    /// Batches queued one after another reach every stage in that order, so stage k can work on
    /// one while stage k+1 works on the previous one.
    pub async fn decode_through(
        &self,
        batch: Batch,
        next: Vec<StageHandle>,
        want_logits: bool,
        sample: bool,
    ) -> Result<oneshot::Receiver<Result<DecodeOutput, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Decode { batch, want_logits, sample, embed: false, next, reply })
            .await
            .map_err(|_| EngineError::StageGone)?;
        Ok(rx)
    }

    /// Installs the sampler of `seq` on this (last) stage; `history` feeds the repetition penalty.
    pub async fn set_sampler(&self, seq: i32, params: SamplingParams, history: Vec<Token>) -> Result<(), EngineError> {
        self.call(|reply| Cmd::SetSampler { seq, params, history, reply }).await?
    }

    /// Drops positions `[p0, p1)` of `seq` (`p1 = -1`: to the end). False when the memory cannot
    /// drop a partial range.
    pub async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, EngineError> {
        self.call(|reply| Cmd::SeqRm { seq, p0, p1, reply }).await
    }

    /// Drops a whole sequence and its sampler.
    pub async fn remove_seq(&self, seq: i32) -> Result<bool, EngineError> {
        self.seq_rm(seq, -1, -1).await
    }

    /// Drops every sequence.
    pub async fn clear(&self) -> Result<(), EngineError> {
        self.call(|reply| Cmd::Clear { reply }).await
    }

    pub async fn seq_pos_max(&self, seq: i32) -> Result<i32, EngineError> {
        self.call(|reply| Cmd::SeqPosMax { seq, reply }).await
    }

    pub async fn tokenize(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<Token>, EngineError> {
        let text = text.to_string();
        self.call(|reply| Cmd::Tokenize { text, add_special, parse_special, reply }).await?
    }

    /// Bytes of each token (feed them to a [`super::TokenDecoder`] for text).
    pub async fn token_bytes(&self, tokens: Vec<Token>, special: bool) -> Result<Vec<Vec<u8>>, EngineError> {
        self.call(|reply| Cmd::TokenBytes { tokens, special, reply }).await
    }

    /// Formats a conversation with the GGUF's chat template.
    pub async fn apply_template(
        &self,
        messages: Vec<TemplateMessage>,
        add_assistant: bool,
    ) -> Result<String, EngineError> {
        self.call(|reply| Cmd::Template { messages, add_assistant, reply }).await?
    }
}

/// The thread-owned state. Field order matters: the context is dropped before the model.
struct Stage {
    samplers: HashMap<i32, Sampler>,
    /// Weight bytes one token streams through on this stage, when it computes on the CPU (its
    /// single-token decodes refine the node's measured decode speed).
    cpu_stream_bytes: Option<u64>,
    /// None for a vocabulary-only stage.
    ctx: Option<Context>,
    model: Model,
    info: StageInfo,
}

impl Stage {
    fn load(spec: &StageSpec) -> Result<Stage, EngineError> {
        let model = Model::load(&spec.window, spec.context.exact)?;
        let ctx = if spec.window.vocab_only {
            None
        } else {
            Some(Context::new(&model, spec.context, model.device != "CPU")?)
        };
        let info = StageInfo {
            range: model.range,
            n_layer: model.n_layer,
            n_embd: model.n_embd(),
            n_embd_out: model.n_embd_out(),
            pooling: model.pooling(),
            n_vocab: model.n_vocab(),
            n_ctx: ctx.as_ref().map_or(spec.context.n_ctx, |c| c.n_ctx()),
            n_ctx_train: model.n_ctx_train(),
            context: spec.context,
            eog_tokens: model.eog_tokens(),
            bos: model.bos(),
            eos: model.eos(),
            chat_template: model.chat_template(),
            shape: model.shape.clone(),
            device: model.device.clone(),
        };
        tracing::debug!(range = %info.range, n_layer = info.n_layer, device = %info.device, "stage loaded");
        let r = info.range;
        let layers: u64 = info.shape.layer_bytes.get(r.begin as usize..r.end as usize).map_or(0, |b| b.iter().sum());
        let head = if info.is_last() { info.shape.output_bytes } else { 0 };
        let cpu_stream_bytes = (info.device == "CPU" && ctx.is_some()).then_some(layers + head);
        Ok(Stage { samplers: HashMap::new(), cpu_stream_bytes, ctx, model, info })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Cmd>, counters: &Counters) {
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                Cmd::Decode { mut batch, want_logits, sample, embed, next, reply } => {
                    let (rows, t0) = (batch.len() as u64, Instant::now());
                    let end = next.is_empty();
                    let out = self.decode(&batch, want_logits && end, sample && end, embed && end);
                    let took = t0.elapsed();
                    counters.compute_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                    if let (Some(bytes), 1, true) = (self.cpu_stream_bytes, rows, out.is_ok()) {
                        super::observe_decode(bytes, took.as_secs_f64());
                    }
                    counters.tokens.fetch_add(rows, Ordering::Relaxed);
                    counters.decodes.fetch_add(1, Ordering::Relaxed);
                    match (out, next.split_first()) {
                        (Ok(DecodeOutput::Hidden(h)), Some((head, rest))) => {
                            batch.input = BatchInput::Hidden(h);
                            let cmd = Cmd::Decode { batch, want_logits, sample, embed, next: rest.to_vec(), reply };
                            // a plain thread, never inside the async runtime: blocking is fine, and
                            // the chain has no cycle, so the last stage always drains
                            if let Err(e) = head.tx.blocking_send(cmd) {
                                if let Cmd::Decode { reply, .. } = e.0 {
                                    let _ = reply.send(Err(EngineError::StageGone));
                                }
                            }
                        }
                        (Ok(DecodeOutput::Last { .. } | DecodeOutput::Embedding(_)), Some(_)) => {
                            let _ = reply.send(Err(EngineError::InvalidBatch {
                                reason: "the last stage of the model was given a successor".into(),
                            }));
                        }
                        (out, _) => {
                            let _ = reply.send(out);
                        }
                    }
                }
                Cmd::SetSampler { seq, params, history, reply } => {
                    let r = Sampler::new(&params, self.info.n_vocab, &history, Some(self.model.vocab())).map(|s| {
                        self.samplers.insert(seq, s);
                    });
                    let _ = reply.send(r);
                }
                Cmd::SeqRm { seq, p0, p1, reply } => {
                    // llama.cpp asserts on a sequence id it does not hold: refuse it here
                    if seq < -1 || seq >= self.info.context.n_seq_max as i32 {
                        let _ = reply.send(false);
                        continue;
                    }
                    if p0 <= 0 && p1 < 0 {
                        if seq < 0 {
                            self.samplers.clear();
                        } else {
                            self.samplers.remove(&seq);
                        }
                    }
                    let _ = reply.send(self.ctx.as_mut().is_some_and(|c| c.seq_rm(seq, p0, p1)));
                }
                Cmd::Clear { reply } => {
                    self.samplers.clear();
                    if let Some(c) = self.ctx.as_mut() {
                        c.clear();
                    }
                    let _ = reply.send(());
                }
                Cmd::SeqPosMax { seq, reply } => {
                    let known = (0..self.info.context.n_seq_max as i32).contains(&seq);
                    let _ = reply.send(self.ctx.as_ref().filter(|_| known).map_or(-1, |c| c.seq_pos_max(seq)));
                }
                Cmd::Tokenize { text, add_special, parse_special, reply } => {
                    let _ = reply.send(self.model.tokenize(&text, add_special, parse_special));
                }
                Cmd::TokenBytes { tokens, special, reply } => {
                    let _ = reply.send(tokens.iter().map(|&t| self.model.token_bytes(t, special)).collect());
                }
                Cmd::Template { messages, add_assistant, reply } => {
                    let _ = reply.send(super::template::apply(
                        self.info.chat_template.as_deref(),
                        &messages,
                        add_assistant,
                    ));
                }
            }
        }
        tracing::debug!(range = %self.info.range, "stage unloaded");
    }

    fn decode(
        &mut self,
        batch: &Batch,
        want_logits: bool,
        sample: bool,
        embed: bool,
    ) -> Result<DecodeOutput, EngineError> {
        let info = &self.info;
        let n = batch.len();
        if n > info.context.n_batch as usize {
            return Err(EngineError::InvalidBatch {
                reason: format!("{n} tokens exceed n_batch {}", info.context.n_batch),
            });
        }
        let raw = match &batch.input {
            BatchInput::Tokens(t) => {
                if !info.is_first() {
                    return Err(EngineError::TokensOnLaterStage { begin: info.range.begin, end: info.range.end });
                }
                if let Some(&bad) = t.iter().find(|&&t| t < 0 || t as usize >= info.n_vocab) {
                    return Err(EngineError::InvalidBatch {
                        reason: format!("token id {bad} is outside the vocabulary"),
                    });
                }
                RawBatch::tokens(t, &batch.pos, &batch.seq, &batch.output)?
            }
            BatchInput::Hidden(h) => {
                if info.is_first() {
                    return Err(EngineError::HiddenOnFirstStage);
                }
                RawBatch::hidden(h, info.n_embd, self.model.n_pos_per_token(), &batch.pos, &batch.seq, &batch.output)?
            }
        };
        batch.spec.check(n, self.info.context.n_seq_max)?;
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(EngineError::InvalidBatch { reason: "this stage holds only the vocabulary".into() });
        };
        // the positions a rejected draft left behind go before anything of this batch is stored
        for &(seq, p0) in &batch.spec.trim {
            ctx.seq_rm(seq, p0, -1);
        }
        if embed && self.info.is_last() {
            return embed_rows(ctx, &raw, &self.model, batch, &self.info);
        }
        ctx.decode(&raw, &self.model)?;
        let ctx = &*ctx;
        if !self.info.is_last() {
            let out = ctx.hidden_output(self.info.n_embd).ok_or_else(|| EngineError::Decode {
                begin: self.info.range.begin,
                end: self.info.range.end,
                code: 0,
                reason: "the stage produced no hidden state".into(),
            })?;
            return Ok(DecodeOutput::Hidden(out.to_vec()));
        }
        let (mut logits, mut tokens) = (Vec::new(), Vec::new());
        // sequences whose draft missed in this batch: their later rows are not sampled
        let mut missed: Vec<i32> = Vec::new();
        for i in (0..n).filter(|&i| batch.output[i]) {
            if sample && missed.contains(&batch.seq[i]) {
                tokens.push(super::UNSAMPLED);
                continue;
            }
            let l = ctx.logits(i, self.info.n_vocab).ok_or_else(|| EngineError::Decode {
                begin: self.info.range.begin,
                end: self.info.range.end,
                code: 0,
                reason: format!("no logits for row {i}"),
            })?;
            if sample {
                let seq = batch.seq[i];
                let s = self.samplers.get_mut(&seq).ok_or_else(|| EngineError::Sampling {
                    reason: format!("no sampler configured for sequence {seq}"),
                })?;
                // a grammar ends its own sequence, not the batch's others
                let t = match s.sample(l) {
                    Err(EngineError::GrammarFault(f)) => f.token(),
                    t => t?,
                };
                // the row after this one was decoded on the guess `draft[i]`: it is only worth
                // sampling when this row's token is that guess
                if batch.spec.draft.get(i).is_some_and(|&d| d != t) || t < 0 {
                    missed.push(seq);
                }
                tokens.push(t);
            }
            if want_logits {
                logits.push(l.to_vec());
            }
        }
        Ok(DecodeOutput::Last { logits, tokens })
    }
}

/// Decodes an embedding batch on the last stage and adds up the embeddings of its output rows.
/// Embeddings are on for this one decode only (the stage thread runs one batch at a time).
fn embed_rows(
    ctx: &mut Context,
    raw: &RawBatch,
    model: &Model,
    batch: &Batch,
    info: &StageInfo,
) -> Result<DecodeOutput, EngineError> {
    ctx.set_embeddings(true);
    let r = ctx.decode(raw, model);
    ctx.set_embeddings(false);
    r?;
    let mut sum = vec![0f64; info.n_embd_out];
    for i in (0..batch.len()).filter(|&i| batch.output[i]) {
        let row = ctx.embeddings(i, info.n_embd_out).ok_or_else(|| EngineError::Decode {
            begin: info.range.begin,
            end: info.range.end,
            code: 0,
            reason: format!("no embedding for row {i}"),
        })?;
        sum.iter_mut().zip(row).for_each(|(s, &x)| *s += x as f64);
    }
    Ok(DecodeOutput::Embedding(sum.into_iter().map(|x| x as f32).collect()))
}
