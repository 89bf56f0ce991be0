//! The structured payloads of peer messages (JSON on the wire, see [`super::Message`]).

use crate::engine::StageCounters;
use crate::engine::{LayerRange, SamplingParams};
use crate::profile::Profile;
use serde::{Deserialize, Serialize};

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

impl LoadProgressMsg {
    /// Drops the transfers past [`MAX_PROGRESS_ITEMS`].
    pub fn bounded(mut self) -> LoadProgressMsg {
        self.transfers.truncate(MAX_PROGRESS_ITEMS);
        self
    }
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
    /// Answered with the stage's [`OpReply::Stats`] (for `exo bench`).
    Stats,
}

/// A sequence operation for one stage of an instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageOp {
    pub instance: u64,
    pub stage: usize,
    pub op: SeqOp,
}

/// A stage's answer to a [`StageOp`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum OpReply {
    /// Applied (`Clear`, `Sampler`).
    Done,
    /// Whether llama.cpp removed the range (`Remove`).
    Removed(bool),
    Stats(Box<StageReport>),
}

/// Most models a pong may list (a models dir with more is listed in part).
pub const MAX_HELD: usize = 256;
/// Most links a pong may list.
pub const MAX_LINKS: usize = 256;
/// Longest model or node name kept from a pong.
const MAX_NAME: usize = 256;
/// Most windows kept for one held model.
const MAX_WINDOWS: usize = 64;

/// A model a node holds: the whole file (it can send any window), or some layer windows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub model: String,
    /// Bytes of the whole file.
    pub size: u64,
    /// The whole single-file model is on that node.
    pub whole: bool,
    /// Layer windows `[begin, end)` present in a partial file (empty when whole).
    #[serde(default)]
    pub windows: Vec<(u32, u32)>,
}

/// What a node measured to one of its peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkFigure {
    pub node_id: String,
    pub name: String,
    pub rtt_ms: Option<f64>,
    /// Bytes per second.
    pub bandwidth: Option<f64>,
}

/// A pong: the profile (its fields at the top level, as older nodes sent it alone), what the
/// node holds and what it measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pong {
    #[serde(flatten)]
    pub profile: Profile,
    #[serde(default)]
    pub held: Vec<Held>,
    #[serde(default)]
    pub links: Vec<LinkFigure>,
}

impl Pong {
    /// Drops what is past the caps (a hostile peer's pong sizes nothing here beyond them).
    pub fn bounded(mut self) -> Pong {
        self.held.truncate(MAX_HELD);
        self.links.truncate(MAX_LINKS);
        self.held.retain(|h| h.model.len() <= MAX_NAME && h.windows.len() <= MAX_WINDOWS);
        self.links.retain(|l| l.name.len() <= MAX_NAME && l.node_id.len() <= MAX_NAME);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_is_a_profile_with_extras_and_a_bare_profile_still_reads() {
        let p = crate::profile::snapshot(Some(1 << 30), Some(10.0));
        let bare = serde_json::to_vec(&p).unwrap();
        let pong: Pong = serde_json::from_slice(&bare).unwrap();
        assert!(pong.held.is_empty() && pong.links.is_empty());
        let full = Pong {
            profile: p.clone(),
            held: vec![Held { model: "m".into(), size: 9, whole: false, windows: vec![(0, 4)] }],
            links: vec![LinkFigure { node_id: "x".into(), name: "b".into(), rtt_ms: Some(0.2), bandwidth: None }],
        };
        let b = serde_json::to_vec(&full).unwrap();
        // older nodes read a pong as a profile
        let _: Profile = serde_json::from_slice(&b).unwrap();
        let back: Pong = serde_json::from_slice(&b).unwrap();
        assert_eq!((back.held, back.links), (full.held, full.links));
    }

    #[test]
    fn hostile_pongs_are_cut_to_the_caps() {
        let p = crate::profile::snapshot(None, Some(1.0));
        let held = vec![Held { model: "m".into(), size: 1, whole: true, windows: vec![] }; MAX_HELD + 10];
        let links = vec![LinkFigure { node_id: "x".into(), name: "n".into(), rtt_ms: None, bandwidth: None }; 999];
        let b = Pong { profile: p, held, links }.bounded();
        assert_eq!((b.held.len(), b.links.len()), (MAX_HELD, MAX_LINKS));
        let long = Held { model: "x".repeat(MAX_NAME + 1), size: 1, whole: true, windows: vec![] };
        let many = Held { model: "m".into(), size: 1, whole: false, windows: vec![(0, 1); MAX_WINDOWS + 1] };
        let ok = Held { model: "m".into(), size: 1, whole: true, windows: vec![] };
        let p = crate::profile::snapshot(None, Some(1.0));
        let b = Pong { profile: p, held: vec![long, many, ok.clone()], links: vec![] }.bounded();
        assert_eq!(b.held, vec![ok]);
    }
}

/// One stage's counters and its node's, as a stage reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub node: String,
    pub range: LayerRange,
    /// CPU threads the stage computes with.
    pub n_threads: i32,
    pub counters: StageCounters,
    /// Inference data the stage's node has sent to other nodes (all its stages together); for
    /// in-process stages, the hidden-state bytes handed from stage to stage.
    pub node_data_bytes_sent: u64,
    pub node_peak_rss_bytes: Option<u64>,
}

/// What each side says about itself when connecting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub namespace: String,
    pub node_id: String,
    pub node_name: String,
    /// Address peers reach this node's peer port at.
    pub peer_addr: String,
}
