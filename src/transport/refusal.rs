//! Errors that cross the wire: a node's typed answer to a request it cannot serve (the
//! `Error` message), so the asker acts on the case rather than on text.

use serde::{Deserialize, Serialize};

/// Why a node did not do what a peer asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Load(#[from] LoadRefusal),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("node {node} holds no stage {stage} of instance {instance}")]
    NoStage { node: String, instance: u64, stage: usize },
    /// A stage's engine failed to apply a sequence operation.
    #[error("{detail}")]
    Stage { detail: String },
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
}

/// Why a node refused to load a stage.
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

/// Why a node did not serve bytes of a model file (see [`super::WeightsAsk`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum WeightsError {
    #[error("this node does not have {model}")]
    NotHere { model: String },
    #[error("{model} is a split set here; its windows cannot be sent")]
    SplitSet { model: String },
    #[error("range {start}..{end} is not within the file's {size} bytes")]
    Range { start: u64, end: u64, size: u64 },
    #[error("range {start}..{end} is longer than the {max} bytes hashed at once")]
    TooLong { start: u64, end: u64, max: u64 },
    #[error("len = {len} is outside 1..={max}")]
    Len { len: u32, max: u32 },
    #[error("{len} bytes at {start} run past the file's {size} bytes")]
    PastEnd { start: u64, len: u32, size: u64 },
    #[error("{detail}")]
    Io { detail: String },
    #[error("busy: {max} weight requests are already waiting here")]
    Busy { max: usize },
}
