//! Embeddings: each input decoded through the instance's pipeline on a sequence lent by its
//! batcher (so generations on the same instance go on, untouched, on theirs), pooled with the
//! model's pooling and normalized as Ollama does.

use super::error::{Field, RuntimeError};
use super::request::{KeepAlive, ModelRef};
use super::tokens::Counted;
use super::{LoadOptions, Runtime};
use crate::engine::{normalize, Pooling, Token};
use crate::pipeline::embed_tokens;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most inputs one request may embed.
pub const MAX_EMBED_INPUTS: usize = 2048;
/// Most tokens one request may embed, all inputs together (after truncation).
pub const MAX_EMBED_TOKENS: usize = 1 << 18;

#[derive(Clone, Debug, PartialEq)]
pub enum EmbedInput {
    Text(String),
    /// Token ids (OpenAI), checked against the vocabulary.
    Tokens(Vec<Token>),
}

#[derive(Clone, Debug)]
pub struct EmbedRequest {
    pub model: ModelRef,
    /// None of them: the model is only loaded (Ollama's way to preload).
    pub inputs: Vec<EmbedInput>,
    /// Cut inputs longer than the context to its length (else they are refused).
    pub truncate: bool,
    /// Keep this many leading components (then normalize again); None: all.
    pub dimensions: Option<i64>,
    pub num_ctx: Option<u32>,
    pub keep_alive: Option<KeepAlive>,
    /// Scale each vector to unit length (Ollama's legacy `/api/embeddings` does not).
    pub normalize: bool,
}

#[derive(Clone, Debug)]
pub struct Embeddings {
    pub model: String,
    /// One vector per input, in order (unit length when asked).
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, all inputs together.
    pub prompt_tokens: usize,
    pub total: Duration,
    pub load: Duration,
}

fn input_error(i: usize, n: usize, reason: impl std::fmt::Display) -> RuntimeError {
    let at = if n > 1 { format!("item {i}: ") } else { String::new() };
    RuntimeError::field(Field::Input, format!("{at}{reason}"))
}

impl Runtime {
    /// Checks, loads, tokenizes, then embeds every input in order on one lent sequence.
    pub async fn embed(self: &Arc<Self>, req: EmbedRequest) -> Result<Embeddings, RuntimeError> {
        let t0 = Instant::now();
        let n = req.inputs.len();
        if n > MAX_EMBED_INPUTS {
            return Err(RuntimeError::field(
                Field::Input,
                format!("{n} inputs; at most {MAX_EMBED_INPUTS} per request"),
            ));
        }
        if let Some(d) = req.dimensions {
            if d < 1 {
                return Err(RuntimeError::field(Field::Dimensions, format!("must be at least 1, got {d}")));
            }
        }
        let opts = LoadOptions { num_ctx: req.num_ctx, ..LoadOptions::default() };
        let (inst, load) = self.instance(&req.model, opts.clone()).await?;
        if let Some(k) = req.keep_alive {
            inst.set_keep_alive(k);
        }
        let name = inst.name().to_string();
        if n == 0 {
            return Ok(Embeddings { model: name, vectors: vec![], prompt_tokens: 0, total: t0.elapsed(), load });
        }
        let info = inst.vocab.info().clone();
        if info.pooling == Pooling::Rank {
            return Err(RuntimeError::field(Field::Model, format!("{name} is a reranker, not an embedding model")));
        }
        let width = info.n_embd_out;
        let dims = match req.dimensions {
            None => width,
            Some(d) if d as u64 <= width as u64 => d as usize,
            Some(d) => {
                return Err(RuntimeError::field(
                    Field::Dimensions,
                    format!("{d} is more than the model's {width} dimensions"),
                ))
            }
        };
        let n_ctx = inst.loaded.n_ctx as usize;
        let mut all = Vec::with_capacity(n);
        let mut total = 0usize;
        for (i, input) in req.inputs.iter().enumerate() {
            let counted = match input {
                // in bounded pieces like a prompt, and no further than truncation keeps
                EmbedInput::Text(t) => inst.tokenize_up_to(t, n_ctx, !req.truncate).await?,
                EmbedInput::Tokens(t) => {
                    if let Some(bad) = t.iter().find(|&&t| t < 0 || t as usize >= info.n_vocab) {
                        let v = info.n_vocab;
                        return Err(input_error(i, n, format!("token id {bad} is outside the vocabulary of {v}")));
                    }
                    Counted { tokens: t.clone(), complete: t.len() <= n_ctx, at_least: t.len() }
                }
            };
            let mut tokens = counted.tokens;
            if counted.at_least == 0 {
                return Err(input_error(i, n, "empty input"));
            }
            if !counted.complete {
                if !req.truncate {
                    let len = counted.at_least;
                    let why = format!(
                        "at least {len} tokens but the context holds {n_ctx}; shorten it, raise num_ctx or allow truncation"
                    );
                    return Err(input_error(i, n, why));
                }
                tokens.truncate(n_ctx);
            }
            total += tokens.len();
            if total > MAX_EMBED_TOKENS {
                return Err(RuntimeError::field(
                    Field::Input,
                    format!("more than {MAX_EMBED_TOKENS} tokens in one request; send fewer inputs at once"),
                ));
            }
            all.push(tokens);
        }
        // a sequence of the instance for this request alone: dropped (and its KV with it) at the end
        let lease = self.lease(&req.model, opts).await?;
        let mut vectors = Vec::with_capacity(n);
        for tokens in &all {
            let pipe = lease.instance.pipe();
            let pooled = embed_tokens(&*pipe, tokens, lease.seq, info.pooling).await?;
            vectors.push(if req.normalize {
                normalize(&pooled, dims)
            } else {
                pooled[..dims].iter().map(|&x| x as f32).collect()
            });
            lease.instance.touch();
        }
        Ok(Embeddings { model: name, vectors, prompt_tokens: total, total: t0.elapsed(), load })
    }
}
