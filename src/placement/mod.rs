//! Placement: which node runs which layers. Pure functions over plain data: no I/O, no clock.
//!
//! [`place`] maximizes predicted decode tokens/s under the memory limits with an exact search
//! (see `search.rs`); [`evaluate`] checks and prices a given placement (a forced `--split`, or a
//! baseline); [`baselines`] reproduces how exo and llama.cpp split models, for comparison.

pub mod baselines;
mod cluster_file;
mod cost;
mod fewest;
mod search;
mod split;
mod types;
pub mod units;
mod weights;

pub use cluster_file::parse_cluster;
pub use cost::{forward_bytes, stage_memory, BACK_BYTES};
pub use search::MAX_SEARCH_NODES;
pub use split::{parse_split, ForcedStage, SplitError};
pub use types::{Backend, Cluster, LinkSpec, ModelCost, NodeSpec, Options, Plan, StagePlan};
pub use weights::{bytes_to_move, moves, source_for, Holds, Moves, Source, StageMove, Weights, DEFAULT_HUB_BANDWIDTH};

use cost::Ctx;
use units::fmt_bytes;
use weights::Pricing;

/// Placements predicted within this share of the fastest one's decode speed count as equally
/// fast, and the one that moves the fewest bytes wins among them. Why 5%: the cost model's own
/// error is larger than that (measured decode speeds vary by several percent from run to run),
/// so a smaller difference is no real reason to copy gigabytes; it stays well under the 20% at
/// which a loaded instance moves to a faster placement (`runtime::heal`), so the choice never
/// makes an instance move.
pub const NEAR_FASTEST: f64 = 0.05;

/// One node's part of a memory shortfall.
#[derive(Clone, Debug, PartialEq)]
pub struct Shortfall {
    pub node: String,
    /// The layers it was asked to hold (forced placements).
    pub layers: Option<(u32, u32)>,
    pub needed: u64,
    pub offered: u64,
}

impl std::fmt::Display for Shortfall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = self.layers.map(|(a, b)| format!(" for layers {a}:{b}")).unwrap_or_default();
        write!(
            f,
            "{} lacks {}{what} (needs {}, offers {})",
            self.node,
            fmt_bytes(self.needed - self.offered),
            fmt_bytes(self.needed),
            fmt_bytes(self.offered)
        )
    }
}

fn list(v: &[Shortfall]) -> String {
    v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("; ")
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlacementError {
    #[error("the cluster has no nodes")]
    NoNodes,
    #[error("the model has no layers")]
    NoLayers,
    #[error("node {name:?} is not in the cluster")]
    UnknownNode { name: String },
    #[error("node {name:?}: {reason}")]
    BadNode { name: String, reason: String },
    #[error("no link from {from} to {to}, so they cannot be neighbours in the pipeline")]
    NoLink { from: String, to: String },
    #[error("invalid placement: {detail}")]
    BadStages { detail: String },
    #[error("node {node} lacks {} for layers {begin}:{end} (needs {}, offers {})", fmt_bytes(needed - offered), fmt_bytes(*needed), fmt_bytes(*offered))]
    StageTooBig { node: String, begin: u32, end: u32, needed: u64, offered: u64 },
    #[error("the model does not fit: it needs {} but the nodes offer {} in all, short by {}; {}", fmt_bytes(*needed), fmt_bytes(*offered), fmt_bytes(needed - offered), list(lacking))]
    DoesNotFit { needed: u64, offered: u64, lacking: Vec<Shortfall> },
    #[error("the placement does not fit, short by {} in all: {}", fmt_bytes(*total_shortfall), list(lacking))]
    ForcedDoesNotFit { total_shortfall: u64, lacking: Vec<Shortfall> },
    #[error("no placement: {reason}")]
    Infeasible { reason: String },
}

fn check_cluster(c: &Cluster) -> Result<(), PlacementError> {
    if c.nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    for (i, n) in c.nodes.iter().enumerate() {
        let bad = |reason: &str| Err(PlacementError::BadNode { name: n.name.clone(), reason: reason.to_string() });
        if c.nodes[..i].iter().any(|m| m.name == n.name) {
            return bad("appears twice");
        }
        if !(n.decode_gbps.is_finite() && n.decode_gbps > 0.0) {
            return bad("decode speed must be a positive number of GB/s");
        }
        if n.prefill_tflops.is_some_and(|t| !(t.is_finite() && t > 0.0)) {
            return bad("prefill speed must be a positive number of TFLOP/s");
        }
    }
    Ok(())
}

/// Chooses the placement with the highest predicted decode tokens/s that fits in memory.
pub fn place(m: &ModelCost, c: &Cluster, o: &Options) -> Result<Plan, PlacementError> {
    place_near(m, c, o, &Weights::default())
}

/// [`place`], knowing where the model's bytes are: among the placements predicted within
/// [`NEAR_FASTEST`] of the fastest, the one that moves the fewest bytes (the fastest itself when
/// none moves fewer). Without holdings it is [`place`].
pub fn place_near(m: &ModelCost, c: &Cluster, o: &Options, w: &Weights) -> Result<Plan, PlacementError> {
    check_cluster(c)?;
    if m.layer_bytes.is_empty() {
        return Err(PlacementError::NoLayers);
    }
    let ctx = Ctx::new(m, c, o)?;
    let mut required = Vec::new();
    for r in &o.required {
        required.push(
            c.nodes.iter().position(|n| &n.name == r).ok_or_else(|| PlacementError::UnknownNode { name: r.clone() })?,
        );
    }
    // candidates: required nodes, then the fastest (ties by name, for determinism)
    let mut order: Vec<usize> = (0..c.nodes.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&c.nodes[a], &c.nodes[b]);
        required
            .contains(&b)
            .cmp(&required.contains(&a))
            .then(y.decode_gbps.total_cmp(&x.decode_gbps))
            .then(x.name.cmp(&y.name))
    });
    order.truncate(MAX_SEARCH_NODES.max(required.len()));
    order.sort(); // search in cluster order: ties go to the earlier node
    let max_stages = o.max_stages.unwrap_or(usize::MAX).max(1);
    if required.len() > max_stages {
        return Err(PlacementError::Infeasible {
            reason: format!("{} nodes are required but at most {max_stages} stages are allowed", required.len()),
        });
    }
    let fastest = match search::best_stages(&ctx, &Pricing::time_only(), &order, &required, max_stages) {
        Some((_, mut stages)) => {
            balance(&ctx, &mut stages, None);
            stages
        }
        None => return Err(diagnose(&ctx, &order)),
    };
    let plan = ctx.evaluate(&fastest)?;
    if !w.any_in(c) {
        return Ok(plan);
    }
    Ok(fewest::fewer_bytes(&ctx, w, &order, &required, max_stages, plan))
}

/// Checks and prices a given placement: stages (node name, [begin, end)) in pipeline order.
pub fn evaluate(
    m: &ModelCost,
    c: &Cluster,
    o: &Options,
    stages: &[(String, u32, u32)],
) -> Result<Plan, PlacementError> {
    check_cluster(c)?;
    let ctx = Ctx::new(m, c, o)?;
    let mut idx = Vec::with_capacity(stages.len());
    for (name, a, b) in stages {
        let n = c
            .nodes
            .iter()
            .position(|x| &x.name == name)
            .ok_or_else(|| PlacementError::UnknownNode { name: name.clone() })?;
        idx.push((n, *a, *b));
    }
    // report every stage that lacks memory, not just the first
    let k = idx.len();
    let mut lacking = Vec::new();
    // a node that hosts several stages offers each what the earlier ones left
    let mut used = vec![0u64; c.nodes.len()];
    for (i, &(n, a, b)) in idx.iter().enumerate() {
        if a < b && b <= ctx.n_layer() {
            let (w, kv, cb) = ctx.memory(a, b, i == 0, i + 1 == k);
            let need = w + kv + cb;
            let offered = c.nodes[n].memory.saturating_sub(used[n]);
            if need > offered {
                lacking.push(Shortfall { node: c.nodes[n].name.clone(), layers: Some((a, b)), needed: need, offered });
            }
            used[n] += need.min(offered);
        }
    }
    if !lacking.is_empty() {
        let total_shortfall = lacking.iter().map(|s| s.needed - s.offered).sum();
        return Err(PlacementError::ForcedDoesNotFit { total_shortfall, lacking });
    }
    ctx.evaluate(&idx)
}

/// Neighbouring stages on equally fast nodes can trade layers without changing the predicted time;
/// even out their memory use so that no node runs needlessly full (never moving more bytes than
/// before, when `bytes` prices them).
fn balance(ctx: &Ctx, stages: &mut [(usize, u32, u32)], bytes: Option<&Pricing>) {
    let k = stages.len();
    let used = |st: &[(usize, u32, u32)], i: usize| {
        let (n, a, b) = st[i];
        let (w, kv, c) = ctx.memory(a, b, i == 0, i + 1 == k);
        (w + kv + c) as f64 / ctx.c.nodes[n].memory as f64
    };
    // each move shrinks the largest gap between two neighbours: bounded by the number of layers
    for _ in 0..ctx.n_layer() as usize * k {
        let mut moved = false;
        for i in 0..k.saturating_sub(1) {
            if ctx.c.nodes[stages[i].0].decode_gbps != ctx.c.nodes[stages[i + 1].0].decode_gbps {
                continue;
            }
            let gap = used(stages, i) - used(stages, i + 1);
            let mut trial = stages.to_vec();
            if gap > 0.0 && stages[i].2 - stages[i].1 > 1 {
                trial[i].2 -= 1;
                trial[i + 1].1 -= 1;
            } else if gap < 0.0 && stages[i + 1].2 - stages[i + 1].1 > 1 {
                trial[i].2 += 1;
                trial[i + 1].1 += 1;
            } else {
                continue;
            }
            let new_gap = used(&trial, i) - used(&trial, i + 1);
            let fits = [i, i + 1].iter().all(|&j| used(&trial, j) <= 1.0);
            let no_more_bytes = bytes.is_none_or(|p| p.bytes(&trial) <= p.bytes(stages));
            if fits && new_gap.abs() < gap.abs() && no_more_bytes {
                stages.copy_from_slice(&trial);
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
}

/// Why nothing fits: total memory, else links or granularity.
fn diagnose(ctx: &Ctx, candidates: &[usize]) -> PlacementError {
    let n_layer = ctx.n_layer();
    let (w, kv, compute) = ctx.memory(0, n_layer, true, true);
    let needed = w + kv + compute;
    let offered: u64 = candidates.iter().map(|&i| ctx.c.nodes[i].memory).sum();
    if needed > offered {
        // what each node would have to hold if the model were spread in proportion to its offer
        let lacking = candidates
            .iter()
            .map(|&i| {
                let node = &ctx.c.nodes[i];
                let share = (needed as f64 * node.memory as f64 / offered.max(1) as f64).ceil() as u64;
                Shortfall {
                    node: node.name.clone(),
                    layers: None,
                    needed: share.max(node.memory),
                    offered: node.memory,
                }
            })
            .filter(|s| s.needed > s.offered)
            .collect();
        return PlacementError::DoesNotFit { needed, offered, lacking };
    }
    let linked = candidates.iter().any(|&a| candidates.iter().any(|&b| a != b && ctx.links[a][b].is_some()));
    let reason = if candidates.len() > 1 && !linked {
        format!(
            "no single node can hold the model ({} needed) and there are no links between the nodes",
            fmt_bytes(needed)
        )
    } else {
        format!(
            "the nodes offer {} in all, enough for the {} the model needs, but no order of linked nodes can \
             hold its layers (each stage also needs its own compute buffers, and layers cannot be divided)",
            fmt_bytes(offered),
            fmt_bytes(needed)
        )
    };
    PlacementError::Infeasible { reason }
}
