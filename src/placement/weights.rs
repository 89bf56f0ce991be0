//! Where a model's bytes are, as plain data: what each node holds of it (the whole file, or
//! complete layer windows of a partial file) and how fast bytes reach each node, so that a
//! placement can be priced in bytes to move and seconds to move them.
//!
//! A stage's window is what `store::partial::window_ranges` fetches: the header (and
//! vocabulary), the stage's layers, the token embedding on a first stage, the head on a last
//! stage (the embedding when tied), and the small global tensors (norms, rope factors) on every
//! stage. A node holding window `[b, e)` holds all of that for `[b, e)`.

use super::types::{Cluster, ModelCost, Plan};
use serde::Serialize;

/// Bytes per second from the hub to a node that has not measured its own downloads: a guess at
/// a common broadband line (100 Mbit/s), shown as an estimate wherever it is used.
pub const DEFAULT_HUB_BANDWIDTH: f64 = 12.5e6;

/// What a node holds of the model being placed.
#[derive(Clone, Debug, PartialEq)]
pub enum Holds {
    /// The whole file: any window loads at once, and the node can send any window to others.
    Whole,
    /// Complete layer windows `[begin, end)` of a partial file.
    Windows(Vec<(u32, u32)>),
}

/// Where the model's bytes are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Weights {
    /// The GGUF header and vocabulary: every stage's file starts with them.
    pub header_bytes: u64,
    /// Nodes that hold some of the model; the others hold nothing.
    pub holds: Vec<(String, Holds)>,
    /// Measured download rates from the hub (bytes/s) for the nodes that have one; the others
    /// use [`DEFAULT_HUB_BANDWIDTH`].
    pub hub_bandwidth: Vec<(String, f64)>,
}

impl Weights {
    pub fn holds_of(&self, node: &str) -> Option<&Holds> {
        self.holds.iter().find(|(n, _)| n == node).map(|(_, h)| h)
    }

    /// Whether any node of `c` holds anything of the model (else every placement downloads it
    /// all, and where bytes are makes no difference).
    pub fn any_in(&self, c: &Cluster) -> bool {
        self.holds
            .iter()
            .any(|(n, h)| c.nodes.iter().any(|x| &x.name == n) && !matches!(h, Holds::Windows(w) if w.is_empty()))
    }

    fn hub_rate(&self, node: &str) -> f64 {
        self.hub_bandwidth
            .iter()
            .find(|(n, b)| n == node && b.is_finite() && *b > 0.0)
            .map_or(DEFAULT_HUB_BANDWIDTH, |(_, b)| *b)
    }
}

/// What one node lacks of the model, in a form the search prices in O(1) per stage.
#[derive(Clone, Debug)]
pub(super) struct Lacking {
    /// Prefix sums of the layer bytes it lacks.
    layers: Vec<u64>,
    /// Header and global tensors (every stage).
    base: u64,
    /// The token embedding (a first stage).
    embedding: u64,
    /// The head (a last stage): the embedding when tied.
    head: u64,
    /// Counted twice when one stage is first and last with tied embeddings.
    overlap: u64,
}

impl Lacking {
    pub(super) fn of(m: &ModelCost, w: &Weights, node: &str) -> Lacking {
        let n = m.layer_bytes.len() as u32;
        let windows: &[(u32, u32)] = match w.holds_of(node) {
            Some(Holds::Whole) => {
                return Lacking { layers: vec![0; n as usize + 1], base: 0, embedding: 0, head: 0, overlap: 0 }
            }
            Some(Holds::Windows(v)) => v,
            None => &[],
        };
        // a hostile or stale window past the model's layers holds only what is in range
        let has_layer = |i: u32| windows.iter().any(|&(b, e)| b <= i && i < e.min(n));
        let has_last = windows.iter().any(|&(b, e)| b < e && e >= n);
        let has_first = windows.iter().any(|&(b, e)| b == 0 && e > 0);
        let mut layers = vec![0u64; n as usize + 1];
        for i in 0..n {
            layers[i as usize + 1] = layers[i as usize] + if has_layer(i) { 0 } else { m.layer_bytes[i as usize] };
        }
        let base = if windows.is_empty() { w.header_bytes + m.other_bytes } else { 0 };
        let (embedding, head, overlap) = if m.tied_embeddings {
            let e = if has_first || has_last { 0 } else { m.embedding_bytes };
            (e, e, e)
        } else {
            (if has_first { 0 } else { m.embedding_bytes }, if has_last { 0 } else { m.output_bytes }, 0)
        };
        Lacking { layers, base, embedding, head, overlap }
    }

    /// Bytes of the window `[a, b)` this node lacks.
    pub(super) fn bytes(&self, a: u32, b: u32) -> u64 {
        let n = self.layers.len() - 1;
        self.prefix(b as usize) - self.prefix(a as usize) + self.extra(a == 0, b as usize >= n)
    }

    /// Prefix sum of the layer bytes it lacks, up to layer `x`.
    pub(super) fn prefix(&self, x: usize) -> u64 {
        self.layers[x]
    }

    /// What a stage lacks besides its layers.
    pub(super) fn extra(&self, first: bool, last: bool) -> u64 {
        let mut v = self.base;
        if first {
            v += self.embedding;
        }
        if last {
            v += self.head;
        }
        if first && last {
            v -= self.overlap;
        }
        v
    }
}

/// Bytes node `node` would have to receive to run layers `[begin, end)` of `m`.
pub fn bytes_to_move(m: &ModelCost, w: &Weights, node: &str, begin: u32, end: u32) -> u64 {
    let n = m.layer_bytes.len() as u32;
    let (begin, end) = (begin.min(n), end.min(n).max(begin.min(n)));
    Lacking::of(m, w, node).bytes(begin, end)
}

/// Where a node's missing bytes come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A node holding the whole model (the fastest link from one to the stage's node).
    Node(String),
    /// No node holds the model: it is downloaded.
    Hub,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Node(n) => f.write_str(n),
            Source::Hub => f.write_str("hub"),
        }
    }
}

/// The best source for `node` and its rate (bytes/s): the holder of the whole model with the
/// fastest link to it (what the stage's fetch tries first), else the hub.
pub fn source_for(c: &Cluster, w: &Weights, node: &str) -> (Source, f64) {
    let best = w
        .holds
        .iter()
        .filter(|(h, holds)| h != node && *holds == Holds::Whole)
        .filter_map(|(h, _)| {
            let l = c.links.iter().find(|l| &l.from == h && l.to == node)?;
            (l.bandwidth.is_finite() && l.bandwidth > 0.0).then(|| (h.clone(), l.bandwidth))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
    match best {
        Some((h, bw)) => (Source::Node(h), bw),
        None => (Source::Hub, w.hub_rate(node)),
    }
}

/// One stage's transfer before it can load.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageMove {
    pub node: String,
    pub begin: u32,
    pub end: u32,
    /// Bytes of its window the node lacks.
    pub bytes: u64,
    /// Where they come from; `None` when the node lacks nothing.
    pub from: Option<Source>,
    /// Seconds at the source's rate (a link as measured, or the hub's).
    pub seconds: f64,
}

/// What a placement moves before it can load.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Moves {
    pub stages: Vec<StageMove>,
    /// In all.
    pub bytes: u64,
    /// The stages fetch in parallel: the slowest stage's seconds.
    pub seconds: f64,
}

/// The bytes each stage of `plan` must receive, from where, and how long that takes.
pub fn moves(m: &ModelCost, c: &Cluster, w: &Weights, plan: &Plan) -> Moves {
    let stages: Vec<StageMove> = plan
        .stages
        .iter()
        .map(|s| {
            let bytes = bytes_to_move(m, w, &s.node, s.begin, s.end);
            let (from, seconds) = if bytes == 0 {
                (None, 0.0)
            } else {
                let (src, rate) = source_for(c, w, &s.node);
                (Some(src), bytes as f64 / rate)
            };
            StageMove { node: s.node.clone(), begin: s.begin, end: s.end, bytes, from, seconds }
        })
        .collect();
    Moves {
        bytes: stages.iter().map(|s| s.bytes).sum(),
        seconds: stages.iter().map(|s| s.seconds).fold(0.0, f64::max),
        stages,
    }
}

/// Bytes priced into the search, as seconds per byte moved (`lambda`; 0: time alone).
pub(super) struct Pricing {
    pub lambda: f64,
    /// Per node of the cluster, in order.
    pub lacking: Vec<Lacking>,
}

impl Pricing {
    /// Time alone: the search as it is without holdings.
    pub fn time_only() -> Pricing {
        Pricing { lambda: 0.0, lacking: vec![] }
    }

    pub fn new(m: &ModelCost, c: &Cluster, w: &Weights, lambda: f64) -> Pricing {
        Pricing { lambda, lacking: c.nodes.iter().map(|n| Lacking::of(m, w, &n.name)).collect() }
    }

    /// Priced bytes of window `[a, b)` on node `n` (exactly 0.0 for time alone).
    pub fn stage(&self, n: usize, a: u32, b: u32) -> f64 {
        if self.lambda == 0.0 {
            return 0.0;
        }
        self.lambda * self.lacking[n].bytes(a, b) as f64
    }

    /// Priced lacking layer bytes of node `n` before layer `x`.
    pub fn prefix(&self, n: usize, x: usize) -> f64 {
        if self.lambda == 0.0 {
            return 0.0;
        }
        self.lambda * self.lacking[n].prefix(x) as f64
    }

    /// Priced bytes a stage on node `n` lacks besides its layers.
    pub fn extra(&self, n: usize, first: bool, last: bool) -> f64 {
        if self.lambda == 0.0 {
            return 0.0;
        }
        self.lambda * self.lacking[n].extra(first, last) as f64
    }

    /// Bytes stages (node index, begin, end) lack in all.
    pub fn bytes(&self, stages: &[(usize, u32, u32)]) -> u64 {
        stages.iter().map(|&(n, a, b)| self.lacking.get(n).map_or(0, |l| l.bytes(a, b))).sum()
    }
}
