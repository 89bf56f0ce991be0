//! Placement preview for the live cluster (`GET /placements/preview`, `exo plan MODEL`): what
//! this node would load (the load policy's own decision) next to exo's memory-proportional split
//! and the best single node, all priced by the placement cost model, each with the bytes its
//! stages must receive first (from which node, or the hub) and how long that takes. Nothing is
//! loaded.

use super::policy::{self, Ask, View};
use super::{blocking, validate, ModelRef, Runtime, RuntimeError};
use crate::gguf::{ModelFiles, ModelShape};
use crate::placement::{self, baselines, ModelCost, Moves, Options, PlacementError, Plan, Weights};
use crate::store::{self, Resolved, TransferKind, TransferState};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Rows per decode call the runtime loads with unless asked otherwise.
const N_BATCH: u32 = 512;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Preview {
    pub model: String,
    pub n_layer: u32,
    pub weight_bytes: u64,
    /// On this node already (false: a catalog model, downloaded on first use).
    pub local: bool,
    /// Positions per sequence and sequences the KV cache is priced for (the policy's choice).
    pub context_per_sequence: u32,
    pub sequences: u32,
    /// The nodes the placements may use.
    pub nodes: Vec<String>,
    /// exo-rs's placement first, then exo's split, then one node.
    pub candidates: Vec<Candidate>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    /// `exo-rs`, `exo-memory-split` or `one-node`.
    pub strategy: Cow<'static, str>,
    pub description: Cow<'static, str>,
    pub fits: bool,
    pub error: Option<String>,
    pub stages: Vec<Stage>,
    pub predicted_decode_tokens_per_second: Option<f64>,
    pub predicted_ttft_seconds: Option<f64>,
    /// Share of each token's time spent on links.
    pub network_share: Option<f64>,
    /// Bytes the stages must receive before they load, in all.
    pub move_bytes: Option<u64>,
    /// Seconds those transfers take, the stages fetching in parallel (the slowest stage).
    pub move_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stage {
    pub node: String,
    pub begin: u32,
    pub end: u32,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub memory_bytes: u64,
    pub offered_bytes: u64,
    /// Share of each token's time this stage computes.
    pub time_share: f64,
    /// Bytes of its window the node lacks.
    pub move_bytes: u64,
    /// Where they come from: a node holding the whole model, or `hub`; null when the node
    /// lacks nothing.
    pub move_from: Option<String>,
    /// Seconds over the measured link from that node (or at the hub's rate).
    pub move_seconds: f64,
}

fn candidate<E: std::fmt::Display>(
    strategy: &'static str,
    description: &'static str,
    r: Result<Plan, E>,
    moves: impl Fn(&Plan) -> Moves,
) -> Candidate {
    match r {
        Ok(p) => {
            let mv = moves(&p);
            candidate_of(strategy, description, p, mv)
        }
        Err(e) => Candidate {
            strategy: strategy.into(),
            description: description.into(),
            fits: false,
            error: Some(e.to_string()),
            stages: vec![],
            predicted_decode_tokens_per_second: None,
            predicted_ttft_seconds: None,
            network_share: None,
            move_bytes: None,
            move_seconds: None,
        },
    }
}

fn candidate_of(strategy: &'static str, description: &'static str, p: Plan, mv: Moves) -> Candidate {
    Candidate {
        strategy: strategy.into(),
        description: description.into(),
        fits: true,
        error: None,
        stages: p
            .stages
            .iter()
            .zip(&mv.stages)
            .map(|(s, m)| Stage {
                node: s.node.clone(),
                begin: s.begin,
                end: s.end,
                weight_bytes: s.weight_bytes,
                kv_bytes: s.kv_bytes,
                memory_bytes: s.memory_bytes,
                offered_bytes: s.offered_bytes,
                time_share: s.time_per_token / p.time_per_token,
                move_bytes: m.bytes,
                move_from: m.from.as_ref().map(|f| f.to_string()),
                move_seconds: m.seconds,
            })
            .collect(),
        predicted_decode_tokens_per_second: Some(p.tokens_per_second),
        predicted_ttft_seconds: Some(p.ttft),
        network_share: Some(p.network_time_per_token / p.time_per_token),
        move_bytes: Some(mv.bytes),
        move_seconds: Some(mv.seconds),
    }
}

/// The fastest node that holds the whole model; else why the largest cannot.
fn one_node(cost: &ModelCost, view: &View, o: &Options) -> Result<Plan, PlacementError> {
    let mut best: Option<Plan> = None;
    let mut err = None;
    let mut nodes: Vec<_> = view.cluster.nodes.iter().filter(|n| !view.unprofiled.contains(&n.name)).collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.memory));
    for n in nodes {
        match placement::evaluate(cost, &view.cluster, o, &[(n.name.clone(), 0, cost.n_layer)]) {
            Ok(p) if best.as_ref().is_none_or(|b| p.tokens_per_second > b.tokens_per_second) => best = Some(p),
            Ok(_) => {}
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    best.ok_or_else(|| err.unwrap_or(PlacementError::NoNodes))
}

/// The candidates for `cost` over `view`, with the context priced as the load policy would
/// (`ask`), and the bytes each moves given where they are (`weights`).
pub fn candidates(key: &str, cost: &ModelCost, view: &View, weights: &Weights, ask: &Ask, local: bool) -> Preview {
    let n_ctx_seq = ask.n_ctx_seq;
    let ours = policy::decide_cost(key, cost, view, ask);
    let (n_seq, ctx) = match &ours {
        Ok(d) => (d.n_seq, d.n_ctx_seq.saturating_mul(d.n_seq)),
        Err(_) => (1, n_ctx_seq),
    };
    let o = Options { ctx, n_ubatch: ask.n_batch, ..Options::default() };
    let moves = |p: &Plan| placement::moves(cost, &view.cluster, weights, p);
    let candidates = vec![
        candidate(
            "exo-rs",
            "ours: the fastest predicted placement that fits, moving the fewest bytes among the nearly fastest \
             (what a load does now)",
            ours.map(|d| d.plan),
            moves,
        ),
        candidate(
            "exo-memory-split",
            "exo: every node, largest memory first, layers in proportion to memory",
            baselines::exo_memory_weighted(cost, &view.cluster, &o),
            moves,
        ),
        candidate("one-node", "the fastest single node that holds the whole model", one_node(cost, view, &o), moves),
    ];
    Preview {
        model: key.to_string(),
        n_layer: cost.n_layer,
        weight_bytes: cost.total_weight_bytes(),
        local,
        context_per_sequence: n_ctx_seq,
        sequences: n_seq,
        nodes: view.cluster.nodes.iter().map(|n| n.name.clone()).collect(),
        candidates,
    }
}

/// Smallest finished download whose rate says how fast this node pulls from the hub.
const HUB_RATE_MIN_BYTES: u64 = 8 << 20;

/// This node's rate from the hub: its most recent finished download of at least
/// [`HUB_RATE_MIN_BYTES`] (smaller ones are mostly round trips). The peers do not share theirs,
/// so their hub transfers are priced at `placement::DEFAULT_HUB_BANDWIDTH`.
fn hub_rate(store: &crate::store::Store) -> Option<f64> {
    store
        .transfers
        .list()
        .into_iter()
        .find(|t| {
            t.kind == TransferKind::Download
                && t.state == TransferState::Done
                && t.done_bytes >= HUB_RATE_MIN_BYTES
                && t.seconds > 0.0
        })
        .map(|t| t.done_bytes as f64 / t.seconds)
}

/// What placement needs about a model on this machine or in the catalog, and its trained
/// context (0 when unknown).
pub fn cost_of(resolved: &Resolved) -> Result<(ModelCost, u32), RuntimeError> {
    match resolved {
        Resolved::Local(m) => {
            let bad = |e: &dyn std::fmt::Display| super::header::unusable(m, e);
            let files = ModelFiles::open(m.first()).map_err(|e| bad(&e))?;
            let shape = ModelShape::from_files(&files).map_err(|e| bad(&e))?;
            Ok((ModelCost::from_shape(&m.name, &shape), shape.context_length))
        }
        Resolved::Remote(r) => {
            let (card, quant) = r.name.split_once(':').map_or((r.name.as_str(), None), |(c, q)| (c, Some(q)));
            let cost = store::catalog::find(card).and_then(|c| c.model_cost(quant)).ok_or_else(|| {
                RuntimeError::ModelNotFound {
                    name: r.name.clone(),
                    hint: ": it is not on this node and its catalog card lacks the shape or size to plan with".into(),
                }
            })?;
            Ok((cost, 0))
        }
    }
}

impl Runtime {
    /// The placement candidates for `model` on the cluster as it is now.
    pub async fn preview(&self, model: &ModelRef, num_ctx: Option<u32>) -> Result<Preview, RuntimeError> {
        let ModelRef::Name(name) = model else {
            return Err(RuntimeError::InvalidName { name: model.display(), reason: "previews take names".into() });
        };
        let (store, n) = (self.store.clone(), name.clone());
        let (resolved, (cost, train)) = blocking(move || {
            let r = store.resolve_name(&n)?;
            let c = cost_of(&r)?;
            Ok((r, c))
        })
        .await?;
        let n_ctx_seq = validate::num_ctx(num_ctx, self.limits.default_ctx, train)?;
        let key = model.key();
        let view = super::build::view(self, self.registry.held(&key)).await?;
        let local = matches!(&resolved, Resolved::Local(_));
        let size = match &resolved {
            Resolved::Local(m) if m.paths.len() == 1 => Some(m.size),
            _ => None,
        };
        let mut weights = view.weights(&key, &cost, size);
        weights.hub_bandwidth.extend(hub_rate(&self.store).map(|r| (view.here.clone(), r)));
        let ask = Ask {
            n_ctx_seq,
            asked_ctx: num_ctx.is_some(),
            max_seq: self.limits.parallel,
            n_batch: N_BATCH,
            forced: None,
        };
        // several searches: off the async workers
        blocking(move || Ok(candidates(&key, &cost, &view, &weights, &ask, local))).await
    }
}
