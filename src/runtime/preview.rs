//! Placement preview for the live cluster (`GET /placements/preview`, `exo plan MODEL`): what
//! this node would load (the load policy's own decision) next to exo's memory-proportional split
//! and the best single node, all priced by the placement cost model. Nothing is loaded.

use super::policy::{self, View};
use super::{blocking, registry, validate, ModelRef, Runtime, RuntimeError};
use crate::gguf::{ModelFiles, ModelShape};
use crate::placement::{self, baselines, ModelCost, Options, PlacementError, Plan};
use crate::store::{self, Resolved};
use serde::Serialize;

/// Rows per decode call the runtime loads with unless asked otherwise.
const N_BATCH: u32 = 512;

#[derive(Clone, Debug, Serialize)]
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

#[derive(Clone, Debug, Serialize)]
pub struct Candidate {
    /// `exo-rs`, `exo-memory-split` or `one-node`.
    pub strategy: &'static str,
    pub description: &'static str,
    pub fits: bool,
    pub error: Option<String>,
    pub stages: Vec<Stage>,
    pub predicted_decode_tokens_per_second: Option<f64>,
    pub predicted_ttft_seconds: Option<f64>,
    /// Share of each token's time spent on links.
    pub network_share: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
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
}

fn candidate(strategy: &'static str, description: &'static str, r: Result<Plan, String>) -> Candidate {
    match r {
        Ok(p) => Candidate {
            strategy,
            description,
            fits: true,
            error: None,
            stages: p
                .stages
                .iter()
                .map(|s| Stage {
                    node: s.node.clone(),
                    begin: s.begin,
                    end: s.end,
                    weight_bytes: s.weight_bytes,
                    kv_bytes: s.kv_bytes,
                    memory_bytes: s.memory_bytes,
                    offered_bytes: s.offered_bytes,
                    time_share: s.time_per_token / p.time_per_token,
                })
                .collect(),
            predicted_decode_tokens_per_second: Some(p.tokens_per_second),
            predicted_ttft_seconds: Some(p.ttft),
            network_share: Some(p.network_time_per_token / p.time_per_token),
        },
        Err(e) => Candidate {
            strategy,
            description,
            fits: false,
            error: Some(e),
            stages: vec![],
            predicted_decode_tokens_per_second: None,
            predicted_ttft_seconds: None,
            network_share: None,
        },
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

/// The candidates for `cost` over `view`, with the context priced as the load policy would.
pub fn candidates(
    key: &str,
    cost: &ModelCost,
    view: &View,
    n_ctx_seq: u32,
    asked_ctx: bool,
    max_seq: u32,
    local: bool,
) -> Preview {
    let ours = policy::decide_cost(key, cost, view, n_ctx_seq, asked_ctx, max_seq, N_BATCH, None);
    let (n_seq, ctx) = match &ours {
        Ok(d) => (d.n_seq, d.n_ctx_seq.saturating_mul(d.n_seq)),
        Err(_) => (1, n_ctx_seq),
    };
    let o = Options { ctx, n_ubatch: N_BATCH, ..Options::default() };
    let str_err = |e: PlacementError| e.to_string();
    let candidates = vec![
        candidate(
            "exo-rs",
            "ours: the fastest predicted placement that fits (what a load does now)",
            ours.map(|d| d.plan).map_err(|e| e.to_string()),
        ),
        candidate(
            "exo-memory-split",
            "exo: every node, largest memory first, layers in proportion to memory",
            baselines::exo_memory_weighted(cost, &view.cluster, &o).map_err(str_err),
        ),
        candidate(
            "one-node",
            "the fastest single node that holds the whole model",
            one_node(cost, view, &o).map_err(str_err),
        ),
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

/// What placement needs about a model on this machine or in the catalog, and its trained
/// context (0 when unknown).
pub fn cost_of(resolved: &Resolved) -> Result<(ModelCost, u32), RuntimeError> {
    match resolved {
        Resolved::Local(m) => {
            let bad = |e: &dyn std::fmt::Display| RuntimeError::Load {
                model: m.first().display().to_string(),
                reason: e.to_string(),
            };
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
        let view = registry::view(self, self.registry.held(&key)).await?;
        let local = matches!(resolved, Resolved::Local(_));
        Ok(candidates(&key, &cost, &view, n_ctx_seq, num_ctx.is_some(), self.limits.parallel, local))
    }
}
