//! A scripted pipeline for the batcher's tests: a deterministic "model" whose next token depends
//! on every token in the sequence's KV (in position order), its sampler's seed and how many
//! tokens that sampler drew. A sequence rebuilt with the wrong prompt, positions or draws, a
//! prefix cache trimmed wrong, or KV left behind all change its text or are recorded as
//! violations. Faults are injected by submit count.

use crate::engine::{ContextParams, LayerRange, Pooling, SamplingParams, StageInfo, Token};
use crate::gguf::ModelShape;
use crate::pipeline::{BoxFuture, Pipe};
use crate::pipeline::{
    FaultKind, NodeReport, Pending, PendingEmbedding, PipelineError, PipelineReport, StageFault, TokenChunk,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub const EOG: Token = 2;
pub const VOCAB: usize = 256;

#[derive(Default)]
struct State {
    /// Each sequence's KV: the tokens at positions 0.. (appended in order).
    kv: HashMap<i32, Vec<Token>>,
    /// (seed, draws so far) per sequence, from `set_sampler`; greedy samplers draw nothing.
    sampler: HashMap<i32, (u32, Option<u32>)>,
    submits: usize,
    violations: Vec<String>,
}

pub struct FakePipe {
    info: StageInfo,
    state: Mutex<State>,
    /// The submit (counted from 1) whose answer is a lost stage; later ones fail too.
    fail_at: Option<usize>,
    failed: AtomicBool,
}

impl FakePipe {
    pub fn new(n_ctx: u32, fail_at: Option<usize>) -> FakePipe {
        FakePipe { info: info(n_ctx), state: Mutex::default(), fail_at, failed: AtomicBool::new(false) }
    }

    /// The token the model gives after `context` with a sampler at (seed, draw); greedy
    /// (`draw` None) depends on the context alone.
    pub fn next(context: &[Token], seed: u32, draw: Option<u32>) -> Token {
        let (seed, draw) = draw.map_or((0, 0), |d| (seed, d + 1));
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(seed) ^ (u64::from(draw) << 32);
        for &t in context {
            h = (h ^ t as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // never an end-of-generation token: sequences end by their length
        3 + (h % (VOCAB as u64 - 3)) as Token
    }

    /// What a sequence alone gives: `n` tokens after `prompt` (seed None: greedy).
    pub fn alone(prompt: &[Token], seed: Option<u32>, n: usize) -> Vec<Token> {
        let mut ctx = prompt.to_vec();
        let mut out = Vec::new();
        for d in 0..n as u32 {
            let t = Self::next(&ctx, seed.unwrap_or(0), seed.map(|_| d));
            out.push(t);
            ctx.push(t);
        }
        out
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Positions held for `seq`.
    pub fn kv_len(&self, seq: i32) -> usize {
        self.state.lock().unwrap().kv.get(&seq).map_or(0, Vec::len)
    }

    fn lost(&self) -> PipelineError {
        PipelineError::Remote(StageFault { stage: 1, node: "b".into(), kind: FaultKind::Closed })
    }

    /// Applies a batch as the stages would, in submission order; the sampled tokens of its
    /// output rows.
    fn apply(&self, c: &TokenChunk, sample: bool) -> Vec<Token> {
        let mut st = self.state.lock().unwrap();
        let mut out = Vec::new();
        for i in 0..c.tokens.len() {
            let (seq, pos, tok) = (c.seq[i], c.pos[i], c.tokens[i]);
            let kv = st.kv.entry(seq).or_default();
            if pos as usize != kv.len() {
                let held = kv.len();
                st.violations.push(format!("seq {seq}: a row at position {pos} with {held} positions held"));
                continue;
            }
            kv.push(tok);
            if c.output[i] && sample {
                let ctx = st.kv[&seq].clone();
                let Some((seed, draws)) = st.sampler.get(&seq).copied() else {
                    st.violations.push(format!("seq {seq}: sampled without a sampler"));
                    continue;
                };
                out.push(Self::next(&ctx, seed, draws));
                st.sampler.insert(seq, (seed, draws.map(|d| d + 1)));
            }
        }
        out
    }
}

fn info(n_ctx: u32) -> StageInfo {
    let shape = ModelShape {
        architecture: "fake".into(),
        name: None,
        n_layer: 2,
        n_embd: 8,
        n_head: 1,
        n_head_kv: 1,
        head_dim_k: 8,
        head_dim_v: 8,
        context_length: n_ctx,
        vocab_size: VOCAB as u32,
        chat_template: None,
        layer_bytes: vec![0; 2],
        embedding_bytes: 0,
        output_bytes: 0,
        tied_embeddings: false,
        other_bytes: 0,
        total_weight_bytes: 0,
        n_params: 0,
        n_files: 1,
    };
    StageInfo {
        range: LayerRange { begin: 0, end: 2 },
        n_layer: 2,
        n_embd: 8,
        n_embd_out: 8,
        pooling: Pooling::Last,
        n_vocab: VOCAB,
        n_ctx,
        n_ctx_train: n_ctx,
        context: ContextParams { n_ctx, ..ContextParams::default() },
        eog_tokens: vec![EOG],
        bos: None,
        eos: Some(EOG),
        chat_template: None,
        shape,
        device: "fake".into(),
    }
}

impl Pipe for FakePipe {
    fn info(&self) -> &StageInfo {
        &self.info
    }
    fn stages(&self, here: &str) -> Vec<(String, LayerRange)> {
        vec![(here.to_string(), LayerRange { begin: 0, end: 1 }), ("b".into(), LayerRange { begin: 1, end: 2 })]
    }
    fn healthy(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }
    fn distributed(&self) -> bool {
        true
    }
    fn set_sampler(
        &self,
        seq: i32,
        params: SamplingParams,
        _history: Vec<Token>,
    ) -> BoxFuture<'_, Result<(), PipelineError>> {
        Box::pin(async move {
            if self.failed.load(Ordering::SeqCst) {
                return Err(self.lost());
            }
            let draws = (params.temperature > 0.0).then_some(params.draws);
            self.state.lock().unwrap().sampler.insert(seq, (params.seed, draws));
            Ok(())
        })
    }
    fn submit(&self, chunk: TokenChunk, sample: bool) -> BoxFuture<'_, Result<Pending, PipelineError>> {
        Box::pin(async move {
            let n = {
                let mut st = self.state.lock().unwrap();
                st.submits += 1;
                st.submits
            };
            if self.fail_at.is_some_and(|f| n >= f) {
                self.failed.store(true, Ordering::SeqCst);
                let e = self.lost();
                return Ok(Box::pin(async move { Err(e) }) as Pending);
            }
            let tokens = self.apply(&chunk, sample);
            // answered a moment later, as a pipeline would: other batches get submitted meanwhile
            Ok(Box::pin(async move {
                tokio::task::yield_now().await;
                Ok(tokens)
            }) as Pending)
        })
    }
    fn embed(&self, _chunk: TokenChunk) -> BoxFuture<'_, Result<PendingEmbedding, PipelineError>> {
        Box::pin(async { Err(PipelineError::Bench { detail: "the fake pipeline has no embeddings".into() }) })
    }
    fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> BoxFuture<'_, Result<bool, PipelineError>> {
        Box::pin(async move {
            if self.failed.load(Ordering::SeqCst) {
                return Err(self.lost());
            }
            let mut st = self.state.lock().unwrap();
            let seqs: Vec<i32> = if seq < 0 { st.kv.keys().copied().collect() } else { vec![seq] };
            for s in seqs {
                let kv = st.kv.entry(s).or_default();
                let end = if p1 < 0 { kv.len() } else { (p1 as usize).min(kv.len()) };
                let begin = (p0.max(0) as usize).min(end);
                if end != kv.len() {
                    // a hole in the middle would leave later positions without their context
                    let v = format!("seq {s}: removing {begin}..{end} of {}", kv.len());
                    st.violations.push(v);
                    continue;
                }
                kv.truncate(begin);
            }
            Ok(true)
        })
    }
    fn report(&self) -> BoxFuture<'_, Result<PipelineReport, PipelineError>> {
        Box::pin(async {
            Ok(PipelineReport {
                stages: vec![],
                coordinator: NodeReport { node: "fake".into(), data_bytes_sent: 0, peak_rss_bytes: None },
            })
        })
    }
}
