//! A draft model as proposer (`--draft MODEL`): a small model sharing the target's vocabulary,
//! loaded whole on the coordinator. Per sequence its KV follows the tokens the sequence has
//! (prompt and output); each step it catches up on what was accepted since, then proposes greedily.

use super::error::RuntimeError;
use crate::engine::{ContextParams, SamplingParams, StageInfo, Token};
use crate::pipeline::{Chain, Pipeline, PipelineError, TokenChunk};
use std::sync::Arc;

/// The draft model of an instance.
pub(crate) struct Draft {
    pub name: String,
    pub chain: Chain,
}

/// Loads the draft model at `path` for `n_seq` sequences of `n_ctx` positions; its vocabulary
/// must be the target's (same size, same end-of-generation tokens). Blocking.
pub(crate) fn load(
    name: &str,
    path: &std::path::Path,
    target: &StageInfo,
    n_seq: u32,
    n_ctx: u32,
    n_threads: i32,
    exact: bool,
) -> Result<Arc<Draft>, RuntimeError> {
    let context = ContextParams {
        n_ctx: n_ctx.saturating_mul(n_seq).max(64),
        n_batch: 512,
        n_ubatch: 512,
        n_threads,
        n_seq_max: n_seq,
        exact,
    };
    let chain = Chain::load(path, None, context, true)
        .map_err(|e| RuntimeError::Failed { reason: format!("cannot load the draft model {name}: {e}") })?;
    let d = chain.info();
    if d.n_vocab != target.n_vocab || d.eog_tokens != target.eog_tokens {
        return Err(RuntimeError::Failed {
            reason: format!(
                "the draft model {name} does not share the model's vocabulary ({} tokens, end tokens {:?}; the model: {} tokens, {:?})",
                d.n_vocab, d.eog_tokens, target.n_vocab, target.eog_tokens
            ),
        });
    }
    Ok(Arc::new(Draft { name: name.to_string(), chain }))
}

/// What the draft holds for one sequence: the tokens in its KV.
#[derive(Clone, Debug, Default)]
pub(crate) struct DraftKv(pub Vec<Token>);

impl Draft {
    /// Up to `k` greedy proposals after `history` in draft sequence `seq`, whose KV holds `kv`;
    /// returns them and what the KV holds afterwards.
    pub async fn propose(
        &self,
        seq: i32,
        history: Vec<Token>,
        kv: DraftKv,
        k: usize,
    ) -> Result<(Vec<Token>, DraftKv), PipelineError> {
        let chain = &self.chain;
        let n_ctx = (chain.info().n_ctx / chain.info().context.n_seq_max.max(1)) as usize;
        let k = k.min(n_ctx.saturating_sub(history.len() + 1));
        if k == 0 || history.is_empty() {
            return Ok((vec![], kv));
        }
        // keep what still agrees with the sequence (at least one token is decoded again: its
        // logits give the first proposal)
        let common = kv.0.iter().zip(&history).take_while(|(a, b)| a == b).count().min(history.len() - 1);
        if common == 0 {
            // dropping a whole sequence drops its sampler too
            chain.seq_rm(seq, -1, -1).await?;
            chain.last().set_sampler(seq, SamplingParams::greedy(), vec![]).await?;
        } else {
            chain.seq_rm(seq, common as i32, -1).await?;
        }
        let n_batch = chain.info().context.n_batch as usize;
        let chunks = TokenChunk::prompt(&history[common..], common, seq, n_batch);
        let mut next = first(chain.run(chunks).await?)?;
        let mut drafts = vec![next];
        let mut pos = history.len();
        while drafts.len() < k {
            let step = TokenChunk {
                tokens: vec![next],
                pos: vec![pos as i32],
                seq: vec![seq],
                output: vec![true],
                spec: Default::default(),
            };
            next = first(chain.run(vec![step]).await?)?;
            drafts.push(next);
            pos += 1;
        }
        let mut held = history;
        held.extend(&drafts[..drafts.len() - 1]);
        Ok((drafts, DraftKv(held)))
    }
}

fn first(tokens: Vec<Token>) -> Result<Token, PipelineError> {
    tokens.first().copied().filter(|&t| t >= 0).ok_or(PipelineError::Protocol { index: 0, what: "no draft token" })
}
