//! One input's embedding through a pipeline: its tokens decoded in chunks on a sequence of its
//! own, every stage as for a prompt, the last stage answering the sum of the rows the pooling
//! wants, then the sequence's KV dropped again.

use super::{Pipeline, PipelineError, TokenChunk};
use crate::engine::{Pooling, StageInfo, Token};

/// While it decodes an embedding batch, llama.cpp's last stage outputs every row, and so keeps
/// logits for every row (`n_vocab` floats each) in a buffer it never shrinks: embedding chunks
/// are cut so that this buffer stays under this many bytes.
pub const MAX_EMBED_ROWS_BYTES: usize = 64 << 20;

/// Rows per embedding batch: `n_batch`, fewer for a large vocabulary (at least 16).
pub fn embed_chunk(info: &StageInfo) -> usize {
    let by_vocab = MAX_EMBED_ROWS_BYTES / (4 * info.n_vocab.max(1));
    (info.context.n_batch as usize).min(by_vocab.max(16)).max(1)
}

/// The pooled (not yet normalized) embedding of `tokens`, decoded on sequence `seq`, which must
/// hold nothing and holds nothing again afterwards (also when this fails).
pub async fn embed_tokens<P: Pipeline + ?Sized>(
    pipe: &P,
    tokens: &[Token],
    seq: i32,
    pooling: Pooling,
) -> Result<Vec<f64>, PipelineError> {
    if tokens.is_empty() {
        return Err(PipelineError::EmptyPrompt);
    }
    let info = pipe.info();
    let n = tokens.len();
    if n > info.n_ctx as usize {
        return Err(PipelineError::PromptTooLong { prompt: n, n_ctx: info.n_ctx });
    }
    let r = pooled(pipe, tokens, seq, pooling).await;
    // queued after every batch of this input on every stage, so it runs once they are done
    let dropped = pipe.seq_rm(seq, -1, -1).await;
    let v = r?;
    dropped?;
    Ok(v)
}

async fn pooled<P: Pipeline + ?Sized>(
    pipe: &P,
    tokens: &[Token],
    seq: i32,
    pooling: Pooling,
) -> Result<Vec<f64>, PipelineError> {
    let info = pipe.info();
    let (n, rows, width) = (tokens.len(), embed_chunk(info), info.n_embd_out);
    let (mut pending, mut failed) = (Vec::with_capacity(n.div_ceil(rows)), None);
    for (ci, c) in tokens.chunks(rows).enumerate() {
        let first = ci * rows;
        let chunk = TokenChunk {
            tokens: c.to_vec(),
            pos: (first..first + c.len()).map(|p| p as i32).collect(),
            seq: vec![seq; c.len()],
            output: (first..first + c.len()).map(|i| pooling.wants_row(i, n)).collect(),
            spec: Default::default(),
        };
        // all chunks at once: the stages of a pipeline work on consecutive chunks side by side
        match pipe.embed(chunk).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    // every answer is awaited, also after a failure: the KV is dropped only once no batch of
    // this input is left on any stage
    let mut sum = match failed {
        Some(e) => Err(e),
        None => Ok(vec![0f64; width]),
    };
    for p in pending {
        let v = p.await;
        if let Ok(acc) = &mut sum {
            match v {
                Ok(v) if v.len() == width => acc.iter_mut().zip(v).for_each(|(s, x)| *s += x as f64),
                Ok(_) => sum = Err(PipelineError::Protocol { index: 0, what: "an embedding of the wrong width" }),
                Err(e) => sum = Err(e),
            }
        }
    }
    Ok(pooling.finish(sum?, n))
}
