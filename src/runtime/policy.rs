//! Load policy: from a model's shape, the cluster's profiles and a request's wishes to the
//! context (per sequence and in all), the number of sequences and the placement. One function
//! for every way a model is loaded (on demand, a forced split, `POST /instances`, `exo run`).

use super::error::{Field, RuntimeError};
use crate::cluster::holdings::Held;
use crate::cluster::{links, PeerStatus};
use crate::engine::LayerRange;
use crate::gguf::ModelShape;
use crate::placement::{
    self, Backend, Cluster, Holds, LinkSpec, ModelCost, NodeSpec, Options, PlacementError, Plan, Weights,
};
use crate::profile::Profile;

/// Estimates for what has not been measured yet (documented in docs/placement.md).
const DEFAULT_GBPS: f64 = 10.0;
const DEFAULT_BANDWIDTH: f64 = 125e6; // 1 Gbit/s
const DEFAULT_RTT_MS: f64 = 1.0;

/// The nodes a placement may use, as placement sees them, with their peer addresses.
#[derive(Clone, Debug)]
pub struct View {
    pub cluster: Cluster,
    pub addrs: Vec<(String, String)>,
    /// This node's name in `cluster`.
    pub here: String,
    /// Peers whose profile has not arrived yet: in `cluster` offering nothing to the placement
    /// search; a forced placement may still name them (the node checks when it loads).
    pub unprofiled: Vec<String>,
    /// Node ids and their names in `cluster`: placements may name a node by either.
    pub ids: Vec<(String, String)>,
    /// What each node holds (models whole, or windows of partial files), by name in `cluster`.
    pub held: Vec<(String, Vec<Held>)>,
}

impl View {
    pub fn addr_of(&self, node: &str) -> Option<&str> {
        self.addrs.iter().find(|(n, _)| n == node).map(|(_, a)| a.as_str())
    }

    /// A node's name in `cluster`, given its name or its id.
    pub fn name_of<'a>(&'a self, node: &'a str) -> &'a str {
        self.ids.iter().find(|(id, _)| id == node).map_or(node, |(_, n)| n.as_str())
    }

    /// With what this node holds (the peers' holdings come with their pongs).
    pub fn with_held_here(mut self, held: Vec<Held>) -> View {
        self.held.retain(|(n, _)| n != &self.here);
        self.held.insert(0, (self.here.clone(), held));
        self
    }

    /// Where `model`'s bytes are: the nodes holding it whole or in windows. Copies are matched
    /// by name and by the size of the file (`size`, else this node's copy, else the first
    /// holder's), so that another file of the same name is not taken for it. The header is
    /// what the file holds beyond the tensors (0 when no node reports the file's size).
    pub fn weights(&self, model: &str, cost: &ModelCost, size: Option<u64>) -> Weights {
        let named = |h: &&Held| h.model == model || h.model.strip_suffix(":latest") == Some(model);
        let size = size.or_else(|| self.held.iter().flat_map(|(_, v)| v.iter().filter(named)).map(|h| h.size).next());
        let Some(size) = size else { return Weights::default() };
        let mut holds = Vec::new();
        for (node, v) in &self.held {
            let mut windows = Vec::new();
            let mut whole = false;
            for h in v.iter().filter(named).filter(|h| h.size == size) {
                whole |= h.whole;
                windows.extend(h.windows.iter().copied());
            }
            // a peer's list sizes the placement's work: at most one window per layer counts
            windows.truncate(cost.n_layer as usize);
            if whole {
                holds.push((node.clone(), Holds::Whole));
            } else if !windows.is_empty() {
                holds.push((node.clone(), Holds::Windows(windows)));
            }
        }
        Weights { header_bytes: size.saturating_sub(cost.total_weight_bytes()), holds, hub_bandwidth: vec![] }
    }
}

fn backend(name: &str) -> Backend {
    match name {
        "cuda" => Backend::Cuda,
        "metal" => Backend::Metal,
        "vulkan" => Backend::Vulkan,
        _ => Backend::Cpu,
    }
}

fn spec(name: &str, p: &Profile, memory: u64) -> NodeSpec {
    NodeSpec {
        name: name.to_string(),
        memory,
        backend: backend(&p.backend),
        decode_gbps: p.decode_gbps.filter(|g| g.is_finite() && *g > 0.0).unwrap_or(DEFAULT_GBPS),
        prefill_tflops: None,
    }
}

/// This node (offering what it has minus what its loaded instances already hold, when a limit
/// is set; without one the measured available memory already reflects them) and the peers
/// whose profiles have arrived. Links: measured round trips and bandwidths, else estimates.
pub fn view(here: &str, here_id: &str, here_addr: &str, local: &Profile, held: u64, peers: &[PeerStatus]) -> View {
    let offered = if local.memory_offered < local.memory_available {
        local.memory_offered.saturating_sub(held)
    } else {
        local.memory_offered
    };
    let mut nodes = vec![spec(here, local, offered)];
    let mut addrs = vec![(here.to_string(), here_addr.to_string())];
    let mut unprofiled = Vec::new();
    let mut ids = vec![(here_id.to_string(), here.to_string())];
    let mut held = Vec::new();
    for p in peers {
        ids.push((p.node_id.clone(), p.name.clone()));
        if nodes.iter().any(|n| n.name == p.name) {
            continue; // two nodes with one name cannot be told apart; the first stays
        }
        held.push((p.name.clone(), p.held.clone()));
        match &p.profile {
            Some(prof) => nodes.push(spec(&p.name, prof, prof.memory_offered)),
            None => {
                nodes.push(spec(&p.name, local, 0));
                unprofiled.push(p.name.clone());
            }
        }
        addrs.push((p.name.clone(), p.address.clone()));
    }
    // each direction from what its own end measured, else the other end; else estimates
    let measured = links::pairwise(here_id, here, peers);
    let mut links = Vec::new();
    for a in &nodes {
        for b in &nodes {
            if a.name == b.name {
                continue;
            }
            let m = measured.iter().find(|m| m.from == a.name && m.to == b.name);
            let rtt = m.and_then(|m| m.rtt_ms).unwrap_or(DEFAULT_RTT_MS);
            let bw = m.and_then(|m| m.bandwidth).unwrap_or(DEFAULT_BANDWIDTH);
            links.push(LinkSpec { from: a.name.clone(), to: b.name.clone(), bandwidth: bw, latency: rtt / 2e3 });
        }
    }
    View { cluster: Cluster { nodes, links }, addrs, here: here.to_string(), unprofiled, ids, held }
}

/// A placement given by the caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Forced {
    /// In-process stages on this node (`exo run --split 0:4,4:8`).
    Local(Vec<LayerRange>),
    /// Named nodes (`--split a=0:4,b=4:8`, `POST /instances`).
    Nodes(Vec<(String, LayerRange)>),
}

#[derive(Clone, Debug)]
pub struct Decision {
    /// Sequences decoded side by side.
    pub n_seq: u32,
    /// Positions per sequence; the KV cache holds `n_seq * n_ctx_seq`.
    pub n_ctx_seq: u32,
    pub plan: Plan,
}

impl Decision {
    /// One stage on this node: the model loads in this process.
    pub fn is_local(&self, view: &View) -> bool {
        self.plan.stages.iter().all(|s| s.node == view.here)
    }
}

fn memory_error(e: &PlacementError) -> bool {
    matches!(
        e,
        PlacementError::DoesNotFit { .. }
            | PlacementError::ForcedDoesNotFit { .. }
            | PlacementError::StageTooBig { .. }
            | PlacementError::Infeasible { .. }
    )
}

fn try_place(
    cost: &ModelCost,
    view: &View,
    weights: &Weights,
    forced: Option<&Forced>,
    ctx: u32,
    n_batch: u32,
) -> Result<Plan, PlacementError> {
    let opts = Options { ctx, n_ubatch: n_batch, ..Options::default() };
    match forced {
        // among the nearly fastest, the one that moves the fewest bytes
        None => placement::place_near(cost, &view.cluster, &opts, weights),
        // in-process stages share this node's memory: priced as one stage holding everything
        Some(Forced::Local(_)) => {
            let one = Cluster { nodes: vec![view.cluster.nodes[0].clone()], links: vec![] };
            placement::evaluate(cost, &one, &opts, &[(view.here.clone(), 0, cost.n_layer)])
        }
        Some(Forced::Nodes(stages)) => {
            let s: Vec<(String, u32, u32)> =
                stages.iter().map(|(n, r)| (view.name_of(n).to_string(), r.begin, r.end)).collect();
            let mut cluster = view.cluster.clone();
            for n in cluster.nodes.iter_mut().filter(|n| view.unprofiled.contains(&n.name)) {
                n.memory = u64::MAX / 4; // unknown yet: the node itself refuses what it cannot hold
            }
            placement::evaluate(cost, &cluster, &opts, &s)
        }
    }
}

/// What a load asks of the placement: how many sequences of how many positions, decoded in
/// batches of what size, and where the stages go when the caller says.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Positions each sequence may use.
    pub n_ctx_seq: u32,
    /// The caller named the context: one that fits only when smaller is an error about it.
    pub asked_ctx: bool,
    /// Most sequences side by side (halved while the KV cache does not fit).
    pub max_seq: u32,
    pub n_batch: u32,
    pub forced: Option<Forced>,
}

/// Chooses sequences and placement: as many sequences as allowed (up to `max_seq`, halved while
/// the KV cache does not fit), each with `n_ctx_seq` positions. A context that fits only when
/// smaller is an error about `num_ctx` when the caller asked for it.
pub fn decide(model: &str, shape: &ModelShape, view: &View, ask: &Ask) -> Result<Decision, RuntimeError> {
    let cost = ModelCost::from_shape(model, shape);
    decide_cost(model, &cost, view, ask)
}

/// [`decide`] on a blocking thread, for async callers: the search (every placement near the
/// fastest, priced in bytes to move) takes up to a second on large clusters.
pub async fn decide_off_worker(
    model: &str,
    shape: &ModelShape,
    view: &View,
    ask: Ask,
) -> Result<Decision, RuntimeError> {
    let (model, shape, view) = (model.to_string(), shape.clone(), view.clone());
    super::blocking(move || decide(&model, &shape, &view, &ask)).await
}

/// [`decide`] for a model known by its cost alone (a catalog model not on this node yet).
pub fn decide_cost(model: &str, cost: &ModelCost, view: &View, ask: &Ask) -> Result<Decision, RuntimeError> {
    let weights = view.weights(model, cost, None);
    let (n_ctx_seq, forced) = (ask.n_ctx_seq, ask.forced.as_ref());
    let place = |ctx: u32| try_place(cost, view, &weights, forced, ctx, ask.n_batch);
    let mut n_seq = ask.max_seq.max(1);
    loop {
        match place(n_ctx_seq.saturating_mul(n_seq)) {
            Ok(plan) => return Ok(Decision { n_seq, n_ctx_seq, plan }),
            Err(e) if memory_error(&e) && n_seq > 1 => n_seq /= 2,
            Err(e) if memory_error(&e) => {
                let small = n_ctx_seq.min(256);
                if ask.asked_ctx && small < n_ctx_seq && place(small).is_ok() {
                    return Err(RuntimeError::field(
                        Field::NumCtx,
                        format!("a context of {n_ctx_seq} tokens does not fit in the memory offered: {e}"),
                    ));
                }
                return Err(RuntimeError::DoesNotFit { model: model.to_string(), reason: e.to_string() });
            }
            Err(e) => return Err(RuntimeError::BadPlacement { reason: e.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::holdings::LinkFigure;

    fn shape() -> ModelShape {
        ModelShape {
            architecture: "llama".into(),
            n_layer: 8,
            n_embd: 256,
            n_head: 4,
            n_head_kv: 4,
            head_dim_k: 64,
            head_dim_v: 64,
            context_length: 8192,
            vocab_size: 1000,
            chat_template: None,
            name: None,
            layer_bytes: vec![10 << 20; 8],
            embedding_bytes: 1 << 20,
            output_bytes: 1 << 20,
            tied_embeddings: false,
            other_bytes: 0,
            total_weight_bytes: 82 << 20,
            n_params: 80 << 20,
            n_files: 1,
        }
    }

    fn profile(memory: u64) -> Profile {
        Profile {
            memory_total: memory,
            memory_available: memory,
            memory_offered: memory,
            backend: "cpu".into(),
            devices: vec![],
            threads: 2,
            decode_gbps: Some(10.0),
        }
    }

    fn ask(n_ctx_seq: u32, asked_ctx: bool, max_seq: u32) -> Ask {
        Ask { n_ctx_seq, asked_ctx, max_seq, n_batch: 512, forced: None }
    }

    #[test]
    fn sequences_shrink_before_the_context_is_refused() {
        let v = view("me", "id0", "127.0.0.1:1", &profile(1 << 30), 0, &[]);
        let d = decide("m", &shape(), &v, &ask(4096, false, 4)).unwrap();
        assert_eq!((d.n_seq, d.n_ctx_seq), (4, 4096));
        assert!(d.is_local(&v));
        // 8 layers * 2 KiB per token: 100k tokens need ~1.6 GB of KV
        let v = view("me", "id0", "127.0.0.1:1", &profile(600 << 20), 0, &[]);
        let d = decide("m", &shape(), &v, &ask(16384, false, 4)).unwrap();
        assert!(d.n_seq < 4, "{}", d.n_seq);
        let e = decide("m", &shape(), &v, &ask(100_000, true, 4)).unwrap_err();
        assert!(matches!(e, RuntimeError::InvalidField { field: Field::NumCtx, .. }), "{e}");
        let tiny = view("me", "id0", "127.0.0.1:1", &profile(10 << 20), 0, &[]);
        let e = decide("m", &shape(), &tiny, &ask(512, false, 1)).unwrap_err();
        assert!(matches!(e, RuntimeError::DoesNotFit { .. }), "{e}");
    }

    #[test]
    fn held_memory_counts_against_a_limit() {
        let mut p = profile(1 << 30);
        p.memory_offered = 200 << 20;
        let v = view("me", "id0", "a", &p, 150 << 20, &[]);
        assert_eq!(v.cluster.nodes[0].memory, 50 << 20);
    }

    fn peer(id: &str, name: &str, rtt: Option<f64>, bw: Option<f64>, links: Vec<LinkFigure>) -> PeerStatus {
        PeerStatus {
            node_id: id.into(),
            name: name.into(),
            address: format!("{name}:1"),
            rtt_ms: rtt,
            bandwidth: bw,
            last_seen_ms_ago: 0,
            profile: Some(profile(1 << 30)),
            held: vec![],
            links,
            key: String::new(),
        }
    }

    fn fig(id: &str, name: &str, rtt: f64, bw: Option<f64>) -> LinkFigure {
        LinkFigure { node_id: id.into(), name: name.into(), rtt_ms: Some(rtt), bandwidth: bw }
    }

    /// Three nodes whose figures differ: every directed link is what its own end measured,
    /// else what the other end measured, else the estimate; never this node's link to one end.
    #[test]
    fn links_are_pairwise_from_each_nodes_own_figures() {
        let peers = vec![
            // b measured: to me 4 ms at 50 MB/s, to c 20 ms at 1 MB/s
            peer(
                "B",
                "b",
                Some(2.0),
                Some(100e6),
                vec![fig("M", "me", 4.0, Some(50e6)), fig("C", "c", 20.0, Some(1e6))],
            ),
            // c measured only its round trip to b; me never measured c
            peer("C", "c", None, None, vec![fig("B", "b", 30.0, None)]),
        ];
        let v = view("me", "M", "me:1", &profile(1 << 30), 0, &peers);
        let link = |a: &str, b: &str| {
            let l = v.cluster.links.iter().find(|l| l.from == a && l.to == b).unwrap();
            (l.latency * 2e3, l.bandwidth)
        };
        let close = |x: (f64, f64), y: (f64, f64)| (x.0 - y.0).abs() < 1e-9 && (x.1 - y.1).abs() < 1e-3;
        assert!(close(link("me", "b"), (2.0, 100e6)), "{:?}", link("me", "b"));
        assert!(close(link("b", "me"), (4.0, 50e6)), "{:?}", link("b", "me"));
        assert!(close(link("b", "c"), (20.0, 1e6)), "{:?}", link("b", "c"));
        // c's own figure has no bandwidth: the estimate, not b's reverse figure nor mine to b
        assert!(close(link("c", "b"), (30.0, DEFAULT_BANDWIDTH)), "{:?}", link("c", "b"));
        // nobody measured me <-> c: estimates both ways (before, my link to b stood in for b <-> c)
        assert!(close(link("me", "c"), (DEFAULT_RTT_MS, DEFAULT_BANDWIDTH)), "{:?}", link("me", "c"));
        assert!(close(link("c", "me"), (DEFAULT_RTT_MS, DEFAULT_BANDWIDTH)));
        assert_eq!(v.cluster.links.len(), 6);
    }

    fn held(model: &str, size: u64, whole: bool, windows: Vec<(u32, u32)>) -> Held {
        Held { model: model.into(), size, whole, windows }
    }

    /// Copies are matched by name and size (another file of the same name is not the model);
    /// this node's holdings count; the header is the file beyond its tensors.
    #[test]
    fn weights_match_the_model_by_name_and_size() {
        let cost = ModelCost::from_shape("m", &shape());
        let size = cost.total_weight_bytes() + 4096;
        let mut b = peer("B", "b", Some(1.0), Some(1e9), vec![]);
        b.held = vec![held("m", size, false, vec![(0, 4)]), held("other", 9, true, vec![])];
        let mut c = peer("C", "c", Some(1.0), Some(1e9), vec![]);
        c.held = vec![held("m", size + 1, true, vec![])]; // another file called m
        let v = view("me", "M", "me:1", &profile(1 << 30), 0, &[b, c]).with_held_here(vec![held(
            "m:latest",
            size,
            true,
            vec![],
        )]);
        let w = v.weights("m", &cost, None);
        assert_eq!(w.header_bytes, 4096);
        assert_eq!(w.holds, vec![("me".to_string(), Holds::Whole), ("b".to_string(), Holds::Windows(vec![(0, 4)]))]);
        // nobody holds an unknown model: nothing to price
        assert_eq!(v.weights("nope", &cost, None), Weights::default());
        // a hostile peer's endless window list counts one window per layer at most
        let mut d = peer("D", "d", None, None, vec![]);
        d.held = vec![held("m", size, false, vec![(1, 2); 100_000])];
        let v = view("me", "M", "me:1", &profile(1 << 30), 0, &[d]);
        assert!(matches!(&v.weights("m", &cost, Some(size)).holds[0].1, Holds::Windows(w) if w.len() == 8));
    }

    /// Two equally fast nodes, the peer holding the model: the decision runs it there, where
    /// without holdings this node (the first) would get it.
    #[test]
    fn decisions_prefer_the_node_holding_the_model() {
        let cost = ModelCost::from_shape("m", &shape());
        let mut b = peer("B", "b", Some(1.0), Some(1e9), vec![]);
        b.held = vec![held("m", cost.total_weight_bytes() + 4096, true, vec![])];
        let mut bare = b.clone();
        bare.held.clear();
        let on = |p: PeerStatus| {
            let v = view("me", "M", "me:1", &profile(1 << 30), 0, &[p]).with_held_here(vec![]);
            let d = decide("m", &shape(), &v, &ask(2048, false, 1)).unwrap();
            d.plan.stages.iter().map(|s| s.node.clone()).collect::<Vec<_>>()
        };
        assert_eq!(on(bare), ["me"]);
        assert_eq!(on(b), ["b"]);
    }
}
