//! Message kinds and payloads. Control messages are JSON; batches of hidden states are binary
//! (a small header, positions, sequence ids, output flags, then f32 rows) so that a 4-byte float
//! costs 4 bytes on the wire.

use super::TransportError;
use crate::engine::{LayerRange, SamplingParams};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Refused = 3,
    Ping = 4,
    Pong = 5,
    LoadStage = 6,
    Loaded = 7,
    Forward = 8,
    Tokens = 9,
    SeqOp = 10,
    SeqDone = 11,
    Unload = 12,
    Error = 13,
    Bye = 14,
    /// A Noise handshake message (the only bare frames; the first carries the preamble).
    Handshake = 15,
    /// The answer to a handshake from another cluster: the responder's preamble.
    OtherCluster = 16,
    // embeddings (see `EmbeddingMsg` below)
    /// A [`BatchMsg`] of an embedding request: decoded like a `Forward`, but its last stage
    /// answers an [`EmbeddingMsg`] instead of sampling.
    EmbedForward = 17,
    /// The last stage's answer to an `EmbedForward`.
    Embedding = 18,
    /// A request for a model file's bytes ([`WeightsAsk`], JSON).
    WeightsAsk = 19,
    /// The JSON answer to an info or hash [`WeightsAsk`] ([`WeightsMeta`]).
    WeightsMeta = 20,
    /// The answer to a read [`WeightsAsk`]: the bytes, raw.
    WeightsData = 21,
    /// A stage node's progress fetching its window, to the coordinator that asked it to load
    /// ([`LoadProgressMsg`], JSON; no answer).
    LoadProgress = 22,
}

impl Kind {
    pub fn from_u16(v: u16) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Refused,
            4 => Ping,
            5 => Pong,
            6 => LoadStage,
            7 => Loaded,
            8 => Forward,
            9 => Tokens,
            10 => SeqOp,
            11 => SeqDone,
            12 => Unload,
            13 => Error,
            14 => Bye,
            15 => Handshake,
            16 => OtherCluster,
            17 => EmbedForward,
            18 => Embedding,
            19 => WeightsAsk,
            20 => WeightsMeta,
            21 => WeightsData,
            22 => LoadProgress,
            _ => return None,
        })
    }
}

/// Asks a node to load one stage of an instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoadStage {
    pub instance: u64,
    /// Name and total size the coordinator resolved; the stage node must find the same model.
    pub model: String,
    pub model_size: u64,
    pub range: LayerRange,
    pub n_ctx: u32,
    pub n_batch: u32,
    pub n_seq_max: u32,
    /// Batch-invariant kernels (see `engine::ContextParams::exact`); every stage of an instance
    /// computes the same way (older coordinators send none: llama.cpp's fastest kernels).
    #[serde(default)]
    pub exact: bool,
    /// Where this stage's output goes: the next stage (node address, stage index), or `None`
    /// for the last stage, which samples and answers the coordinator.
    pub next: Option<String>,
    pub index: usize,
    /// Peer addresses of nodes holding the whole model: a stage node without it fetches its
    /// window from them (older coordinators send none).
    #[serde(default)]
    pub sources: Vec<String>,
    /// The hub file to fetch the window from when no source can send it (older coordinators
    /// send none).
    #[serde(default)]
    pub hub: Option<crate::store::HubFile>,
}

/// Most transfers one [`LoadProgressMsg`] may carry.
pub const MAX_PROGRESS_ITEMS: usize = 8;

/// A stage node's window transfers for one load, as they stand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadProgressMsg {
    pub instance: u64,
    pub index: usize,
    pub transfers: Vec<ProgressItem>,
}

/// One transfer on the stage node (its own id there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressItem {
    pub id: u64,
    pub model: String,
    pub source: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// "running", "done" or "failed".
    pub state: String,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Asks a peer for bytes of a model file it holds whole, by name (never by path). Each answer
/// is bounded: a read is at most [`MAX_WEIGHTS_READ`] bytes; the asker keeps a few in flight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsAsk {
    /// Size and header length of the file.
    Info { model: String },
    /// SHA-256 of `[start, end)`.
    Hash { model: String, start: u64, end: u64 },
    /// `len` bytes from `start`.
    Read { model: String, start: u64, len: u32 },
}

/// Most bytes one [`WeightsAsk::Read`] may ask for.
pub const MAX_WEIGHTS_READ: u32 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightsMeta {
    Info { size: u64, data_offset: u64 },
    Hash { sha256: String },
}

/// Why a node refused to load a stage, typed across the wire (the `Error` answer to a
/// [`LoadStage`] carries it as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum LoadRefusal {
    #[error("node {node} does not have model {model:?}")]
    NoModel { node: String, model: String },
    #[error("node {node} has a different {model:?}: {here} bytes here, {theirs} bytes on the coordinator")]
    ModelSize { node: String, model: String, here: u64, theirs: u64 },
    #[error("node {node}: layers {begin}..{end} are not within the model's {n_layer}")]
    Layers { node: String, begin: u32, end: u32, n_layer: u32 },
    #[error("node {node}: {field} = {value} is outside 1..={max}")]
    Limit { node: String, field: String, value: u64, max: u64 },
    #[error("node {node} offers {offered} bytes of memory; layers {begin}..{end} need {needed} (weights {weights}, KV cache {kv}, compute {compute})")]
    Memory { node: String, begin: u32, end: u32, needed: u64, offered: u64, weights: u64, kv: u64, compute: u64 },
    #[error("node {node}: {detail}")]
    Failed { node: String, detail: String },
    #[error("node {node} does not have model {model:?} and cannot fetch its window: {}", tried.join("; "))]
    Unobtainable { node: String, model: String, tried: Vec<String> },
}

/// A KV or sampler operation applied identically on every stage.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SeqOp {
    Remove {
        seq: i32,
        p0: i32,
        p1: i32,
    },
    Clear,
    Sampler {
        seq: i32,
        params: SamplingParams,
        history: Vec<i32>,
    },
    /// Answered with the stage's [`crate::pipeline::StageReport`] as JSON (for `exo bench`).
    Stats,
}

/// One decode step for a stage: tokens (first stage) or hidden states (later stages).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMsg {
    pub instance: u64,
    /// Stage index this batch is for.
    pub stage: u32,
    /// Sample at the output rows when it reaches the last stage.
    pub sample: bool,
    pub pos: Vec<i32>,
    pub seq: Vec<i32>,
    pub output: Vec<bool>,
    pub tokens: Vec<i32>,
    /// `pos.len() * n_embd` floats, or empty for a token batch.
    pub hidden: Vec<f32>,
    /// Where the last stage sends the sampled tokens (the coordinator's peer address).
    pub reply_to: String,
}

impl BatchMsg {
    pub fn encode(&self) -> Vec<u8> {
        let n = self.pos.len();
        let reply = self.reply_to.as_bytes();
        let mut b = Vec::with_capacity(32 + n * 9 + self.tokens.len() * 4 + self.hidden.len() * 4 + reply.len());
        b.extend_from_slice(&self.instance.to_le_bytes());
        b.extend_from_slice(&self.stage.to_le_bytes());
        b.push(self.sample as u8);
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&(self.tokens.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.hidden.len() as u32).to_le_bytes());
        b.extend_from_slice(&(reply.len() as u32).to_le_bytes());
        b.extend_from_slice(reply);
        self.pos.iter().for_each(|p| b.extend_from_slice(&p.to_le_bytes()));
        self.seq.iter().for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
        self.output.iter().for_each(|o| b.push(*o as u8));
        self.tokens.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        self.hidden.iter().for_each(|h| b.extend_from_slice(&h.to_le_bytes()));
        b
    }

    pub fn decode(b: &[u8]) -> Result<BatchMsg, TransportError> {
        let bad = |d: &str| TransportError::Malformed { what: "batch", detail: d.to_string() };
        let mut r = Reader { b, at: 0 };
        let instance = r.u64().ok_or_else(|| bad("short header"))?;
        let stage = r.u32().ok_or_else(|| bad("short header"))?;
        let sample = r.u8().ok_or_else(|| bad("short header"))? != 0;
        let n = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nt = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nh = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nr = r.u32().ok_or_else(|| bad("short header"))? as usize;
        // every count is bounded by the bytes actually present before anything is allocated
        let need = nr
            .checked_add(n.checked_mul(9).ok_or_else(|| bad("count overflow"))?)
            .and_then(|x| x.checked_add(nt.checked_mul(4)?))
            .and_then(|x| x.checked_add(nh.checked_mul(4)?))
            .ok_or_else(|| bad("count overflow"))?;
        if need != b.len() - r.at {
            return Err(bad(&format!("declares {need} bytes of data but carries {}", b.len() - r.at)));
        }
        let reply_to = String::from_utf8(r.take(nr).to_vec()).map_err(|_| bad("reply address is not UTF-8"))?;
        let pos = (0..n).map(|_| r.i32().expect("length checked")).collect();
        let seq = (0..n).map(|_| r.i32().expect("length checked")).collect();
        let output = (0..n).map(|_| r.u8().expect("length checked") != 0).collect();
        let tokens = (0..nt).map(|_| r.i32().expect("length checked")).collect();
        let hidden = (0..nh).map(|_| f32::from_le_bytes(r.take(4).try_into().expect("4 bytes"))).collect();
        Ok(BatchMsg { instance, stage, sample, pos, seq, output, tokens, hidden, reply_to })
    }
}

// ---- embeddings -------------------------------------------------------------------------------

/// The last stage's answer to an embedding batch: the sum of the embeddings of its output rows,
/// or why it failed. Binary: a tag byte (0: floats, 1: error text), a u32 count, then that many
/// f32 (little-endian) or UTF-8 bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingMsg(pub Result<Vec<f32>, String>);

/// Widest embedding a peer may send (far above any model's width).
pub const MAX_EMBEDDING: usize = 1 << 20;

impl EmbeddingMsg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(5 + self.0.as_ref().map_or_else(|e| e.len(), |v| v.len() * 4));
        match &self.0 {
            Ok(v) => {
                b.push(0);
                b.extend_from_slice(&(v.len() as u32).to_le_bytes());
                v.iter().for_each(|x| b.extend_from_slice(&x.to_le_bytes()));
            }
            Err(e) => {
                b.push(1);
                b.extend_from_slice(&(e.len() as u32).to_le_bytes());
                b.extend_from_slice(e.as_bytes());
            }
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<EmbeddingMsg, TransportError> {
        let bad = |d: &str| TransportError::Malformed { what: "embedding", detail: d.to_string() };
        let mut r = Reader { b, at: 0 };
        let tag = r.u8().ok_or_else(|| bad("short header"))?;
        let n = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let rest = b.len() - r.at;
        match tag {
            0 => {
                // checked against the bytes present before anything is allocated
                if n > MAX_EMBEDDING || n * 4 != rest {
                    return Err(bad(&format!("declares {n} floats but carries {rest} bytes")));
                }
                Ok(EmbeddingMsg(Ok((0..n).map(|_| f32::from_le_bytes(r.get().expect("length checked"))).collect())))
            }
            1 if n == rest => {
                Ok(EmbeddingMsg(Err(String::from_utf8(r.take(n).to_vec()).map_err(|_| bad("error is not UTF-8"))?)))
            }
            1 => Err(bad(&format!("declares {n} bytes of error text but carries {rest}"))),
            t => Err(bad(&format!("unknown tag {t}"))),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn get<const N: usize>(&mut self) -> Option<[u8; N]> {
        (self.b.len() - self.at >= N).then(|| self.take(N).try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Option<u8> {
        self.get::<1>().map(|x| x[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.get().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.get().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.get().map(u64::from_le_bytes)
    }
}

pub fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serializes")
}

pub fn from_json<T: for<'de> Deserialize<'de>>(what: &'static str, b: &[u8]) -> Result<T, TransportError> {
    serde_json::from_slice(b).map_err(|e| TransportError::Malformed { what, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_and_corruption() {
        let m = BatchMsg {
            instance: 9,
            stage: 2,
            sample: true,
            pos: vec![0, 1],
            seq: vec![3, 3],
            output: vec![false, true],
            tokens: vec![],
            hidden: vec![0.5, -1.25, 3.0, 4.0],
            reply_to: "127.0.0.1:1".into(),
        };
        let b = m.encode();
        assert_eq!(BatchMsg::decode(&b).unwrap(), m);
        assert!(BatchMsg::decode(&b[..b.len() - 1]).is_err());
        assert!(BatchMsg::decode(&b[..10]).is_err());
        let mut huge = b.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes()); // n
        assert!(BatchMsg::decode(&huge).is_err());
    }

    #[test]
    fn embedding_roundtrip_and_corruption() {
        for m in [EmbeddingMsg(Ok(vec![0.5, -1.25, f32::MIN_POSITIVE])), EmbeddingMsg(Err("no stage".into()))] {
            let b = m.encode();
            assert_eq!(EmbeddingMsg::decode(&b).unwrap(), m);
            assert!(EmbeddingMsg::decode(&b[..b.len() - 1]).is_err());
            assert!(EmbeddingMsg::decode(&b[..3]).is_err());
        }
        let mut huge = EmbeddingMsg(Ok(vec![1.0])).encode();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(EmbeddingMsg::decode(&huge).is_err());
        assert!(EmbeddingMsg::decode(&[7, 0, 0, 0, 0]).is_err());
        assert!(EmbeddingMsg::decode(&[1, 1, 0, 0, 0, 0xff]).is_err());
    }
}
