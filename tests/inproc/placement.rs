//! Placement invariants (property tests) and optimality against brute force.

use exo::placement::{
    self, Backend, Cluster, Holds, LinkSpec, ModelCost, NodeSpec, Options, Plan, Weights, NEAR_FASTEST,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

fn seed() -> RngSeed {
    match std::env::var("PROPTEST_RNG_SEED").as_deref() {
        Ok("random") => RngSeed::Random,
        Ok(s) => RngSeed::Fixed(s.parse().expect("PROPTEST_RNG_SEED must be a number or `random`")),
        Err(_) => RngSeed::Fixed(0x5eed),
    }
}

fn model(layer_bytes: Vec<u64>, tied: bool) -> ModelCost {
    let per = layer_bytes.iter().copied().max().unwrap_or(1);
    ModelCost {
        name: "m".into(),
        n_layer: layer_bytes.len() as u32,
        n_embd: 4096,
        n_head: 32,
        n_vocab: 32000,
        embedding_bytes: per * 2,
        output_bytes: per * 2,
        tied_embeddings: tied,
        other_bytes: 1 << 16,
        kv_bytes_per_token_per_layer: 4096,
        n_params: 0,
        layer_bytes,
    }
}

/// A CPU node of `gib` GiB decoding at 10 GB/s.
fn node(name: &str, gib: u64) -> NodeSpec {
    NodeSpec { name: name.into(), memory: gib << 30, backend: Backend::Cpu, decode_gbps: 10.0, prefill_tflops: None }
}

fn opts() -> Options {
    Options { ctx: 2048, prompt_len: 128, n_ubatch: 512, required: vec![], max_stages: None }
}

prop_compose! {
    fn arb_model()(n in 1usize..=40, base in 50u64..400, jitter in proptest::collection::vec(0u64..40, 40), tied in any::<bool>()) -> ModelCost {
        model((0..n).map(|i| (base + jitter[i]) << 20).collect(), tied)
    }
}

prop_compose! {
    /// Up to 5 nodes whose memories are fractions of the model, random speeds and links.
    fn arb_cluster(total: u64)(
        n in 1usize..=5,
        mem in proptest::collection::vec(5u32..150, 5),
        speed in proptest::collection::vec(1u32..500, 5),
        link in proptest::collection::vec((any::<bool>(), 1u32..10_000, 1u32..5_000), 25),
    ) -> Cluster {
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let nodes = (0..n).map(|i| NodeSpec {
            name: names[i].clone(),
            memory: total / 100 * mem[i] as u64,
            backend: Backend::Cpu,
            decode_gbps: speed[i] as f64,
            prefill_tflops: None,
        }).collect();
        let mut links = Vec::new();
        for a in 0..n {
            for b in 0..n {
                let (present, mbps, lat_us) = link[a * 5 + b];
                // most pairs are linked; ~1 in 4 is missing
                if a != b && (present || (mbps % 3 != 0)) {
                    links.push(LinkSpec { from: names[a].clone(), to: names[b].clone(), bandwidth: mbps as f64 * 1e6, latency: lat_us as f64 * 1e-6 });
                }
            }
        }
        Cluster { nodes, links }
    }
}

fn arb_case() -> impl Strategy<Value = (ModelCost, Cluster)> {
    arb_model().prop_flat_map(|m| {
        let total = m.total_weight_bytes() + 2048 * 4096 * m.n_layer as u64;
        (Just(m), arb_cluster(total))
    })
}

fn check_shape(p: &Plan, m: &ModelCost) {
    let mut at = 0;
    for s in &p.stages {
        assert_eq!(s.begin, at, "contiguous");
        assert!(s.end > s.begin, "non-empty");
        assert!(s.memory_bytes <= s.offered_bytes, "memory respected: {s:?}");
        at = s.end;
    }
    assert_eq!(at, m.n_layer, "covers every layer");
    let mut names: Vec<&String> = p.stages.iter().map(|s| &s.node).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), p.stages.len(), "each node at most once");
}

/// Every ordered choice of distinct nodes and every way to cut the layers, priced by `evaluate`.
fn brute_force(m: &ModelCost, c: &Cluster, o: &Options) -> Option<f64> {
    fn rec(
        m: &ModelCost,
        c: &Cluster,
        o: &Options,
        used: &mut Vec<usize>,
        cuts: &mut Vec<u32>,
        best: &mut Option<f64>,
    ) {
        let at = *cuts.last().unwrap();
        if at == m.n_layer {
            let stages: Vec<(String, u32, u32)> =
                used.iter().enumerate().map(|(i, &n)| (c.nodes[n].name.clone(), cuts[i], cuts[i + 1])).collect();
            if let Ok(p) = placement::evaluate(m, c, o, &stages) {
                if best.is_none_or(|b| p.time_per_token < b) {
                    *best = Some(p.time_per_token);
                }
            }
            return;
        }
        for n in 0..c.nodes.len() {
            if used.contains(&n) {
                continue;
            }
            for end in at + 1..=m.n_layer {
                // prune: a non-last stage that does not fit only grows with `end` (and the last
                // stage needs more still), using the cost model's documented memory formula
                let first = at == 0;
                let w: u64 = m.layer_bytes[at as usize..end as usize].iter().sum::<u64>()
                    + if first { m.embedding_bytes } else { 0 };
                let kv = o.ctx as u64 * m.kv_bytes_per_token_per_layer * (end - at) as u64;
                let compute = (32u64 << 20) + 4 * o.n_ubatch as u64 * 12 * m.n_embd as u64;
                if w + kv + compute > c.nodes[n].memory {
                    break;
                }
                used.push(n);
                cuts.push(end);
                rec(m, c, o, used, cuts, best);
                cuts.pop();
                used.pop();
            }
        }
    }
    let mut best = None;
    rec(m, c, o, &mut vec![], &mut vec![0], &mut best);
    best
}

proptest! {
    // fixed seed: CI runs the same 96 cases every time (PROPTEST_RNG_SEED=random to explore)
    #![proptest_config(ProptestConfig { cases: 96, rng_seed: seed(), ..ProptestConfig::default() })]

    #[test]
    fn chosen_placement_is_the_brute_force_optimum((m, c) in arb_case()) {
        let o = opts();
        let got = placement::place(&m, &c, &o);
        match brute_force(&m, &c, &o) {
            None => prop_assert!(got.is_err(), "brute force found nothing but place() returned {got:?}"),
            Some(best) => {
                if std::env::var_os("PLACEMENT_STATS").is_some() {
                    eprintln!("feasible: {} nodes, {} layers, {} stages", c.nodes.len(), m.n_layer, got.as_ref().map_or(0, |p| p.stages.len()));
                }
                let p = got.expect("brute force found a placement");
                check_shape(&p, &m);
                prop_assert!(p.time_per_token <= best * 1.005, "place() {} vs optimum {best}", p.time_per_token);
                prop_assert!(p.time_per_token >= best * (1.0 - 1e-9), "place() beat brute force: the cost models disagree");
            }
        }
    }

    #[test]
    fn placements_are_valid_and_deterministic((m, c) in arb_case()) {
        let o = opts();
        if let Ok(p) = placement::place(&m, &c, &o) {
            check_shape(&p, &m);
            prop_assert_eq!(placement::place(&m, &c, &o).unwrap(), p.clone());
            // the reported numbers are the evaluation of the chosen stages
            let stages: Vec<_> = p.stages.iter().map(|s| (s.node.clone(), s.begin, s.end)).collect();
            prop_assert_eq!(placement::evaluate(&m, &c, &o, &stages).unwrap(), p);
        }
    }

    #[test]
    fn adding_a_slower_node_never_lowers_tokens_per_second((m, mut c) in arb_case(), mem in 1u32..150, frac in 0.05f64..1.0) {
        let o = opts();
        let before = placement::place(&m, &c, &o);
        let slowest = c.nodes.iter().map(|n| n.decode_gbps).fold(f64::INFINITY, f64::min);
        let name = "slow".to_string();
        for n in c.nodes.clone() {
            c.links.push(LinkSpec { from: n.name.clone(), to: name.clone(), bandwidth: 1e8, latency: 1e-3 });
            c.links.push(LinkSpec { from: name.clone(), to: n.name.clone(), bandwidth: 1e8, latency: 1e-3 });
        }
        c.nodes.push(NodeSpec { name, memory: m.total_weight_bytes() / 100 * mem as u64, backend: Backend::Cpu, decode_gbps: slowest * frac, prefill_tflops: None });
        let after = placement::place(&m, &c, &o);
        if let Ok(b) = before {
            let a = after.expect("a placement that fit still fits");
            prop_assert!(a.tokens_per_second >= b.tokens_per_second * (1.0 - 1e-12), "{} < {}", a.tokens_per_second, b.tokens_per_second);
        }
    }
}

#[test]
fn one_node_when_the_fastest_node_holds_the_model() {
    let m = model(vec![100 << 20; 32], false);
    let c = Cluster {
        nodes: vec![
            NodeSpec {
                name: "big-fast".into(),
                memory: 64 << 30,
                backend: Backend::Cuda,
                decode_gbps: 900.0,
                prefill_tflops: None,
            },
            NodeSpec {
                name: "other".into(),
                memory: 64 << 30,
                backend: Backend::Cpu,
                decode_gbps: 50.0,
                prefill_tflops: None,
            },
        ],
        links: vec![
            LinkSpec { from: "big-fast".into(), to: "other".into(), bandwidth: 1e10, latency: 1e-6 },
            LinkSpec { from: "other".into(), to: "big-fast".into(), bandwidth: 1e10, latency: 1e-6 },
        ],
    };
    let p = placement::place(&m, &c, &opts()).unwrap();
    assert_eq!(p.stages.len(), 1);
    assert_eq!(p.stages[0].node, "big-fast");
    assert_eq!(p.network_time_per_token, 0.0);
}

#[test]
fn impossible_placements_say_who_lacks_what() {
    let m = model(vec![1 << 30; 10], false);
    let c = Cluster {
        nodes: vec![node("a", 4), node("b", 2)],
        links: vec![
            LinkSpec { from: "a".into(), to: "b".into(), bandwidth: 1e9, latency: 1e-4 },
            LinkSpec { from: "b".into(), to: "a".into(), bandwidth: 1e9, latency: 1e-4 },
        ],
    };
    let e = placement::place(&m, &c, &opts()).unwrap_err().to_string();
    assert!(
        e.contains("does not fit") && e.contains("short by") && e.contains("a lacks") && e.contains("b lacks"),
        "{e}"
    );

    // a forced split names each stage that lacks memory, and the total
    let e = placement::evaluate(&m, &c, &opts(), &[("a".into(), 0, 5), ("b".into(), 5, 10)]).unwrap_err().to_string();
    assert!(
        e.contains("a lacks") && e.contains("layers 0:5") && e.contains("b lacks") && e.contains("short by"),
        "{e}"
    );

    // enough memory in total, but no links
    let c2 = Cluster { nodes: vec![node("a", 8), node("b", 8)], links: vec![] };
    let e = placement::place(&m, &c2, &opts()).unwrap_err().to_string();
    assert!(e.contains("no links"), "{e}");
}

#[test]
fn required_nodes_and_max_stages_are_honoured() {
    let m = model(vec![100 << 20; 16], false);
    let node = |name: &str, speed: f64| NodeSpec {
        name: name.into(),
        memory: 64 << 30,
        backend: Backend::Cpu,
        decode_gbps: speed,
        prefill_tflops: None,
    };
    let mut links = vec![];
    for a in ["x", "y", "z"] {
        for b in ["x", "y", "z"] {
            if a != b {
                links.push(LinkSpec { from: a.into(), to: b.into(), bandwidth: 1e9, latency: 1e-4 });
            }
        }
    }
    let c = Cluster { nodes: vec![node("x", 100.0), node("y", 50.0), node("z", 10.0)], links };
    let o = Options { required: vec!["z".into()], ..opts() };
    let p = placement::place(&m, &c, &o).unwrap();
    assert!(p.stages.iter().any(|s| s.node == "z"), "{p:?}");
    let o = Options { required: vec!["y".into(), "z".into()], max_stages: Some(1), ..opts() };
    assert!(placement::place(&m, &c, &o).is_err());
}

/// A forced placement may put two stages on one node (b, c, b): they share its memory.
#[test]
fn a_node_hosting_two_stages_needs_memory_for_both() {
    let m = model(vec![1 << 30; 10], false);
    let link = |a: &str, b: &str| LinkSpec { from: a.into(), to: b.into(), bandwidth: 1e9, latency: 1e-4 };
    let stages = [("b".to_string(), 0, 3), ("c".to_string(), 3, 6), ("b".to_string(), 6, 10)];
    let c = Cluster { nodes: vec![node("b", 16), node("c", 16)], links: vec![link("b", "c"), link("c", "b")] };
    let p = placement::evaluate(&m, &c, &opts(), &stages).unwrap();
    assert_eq!(p.stages.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(), ["b", "c", "b"]);
    assert_eq!(p.stages[2].offered_bytes, (16u64 << 30) - p.stages[0].memory_bytes);
    // each of b's stages alone fits in 8 GiB (5.1 and 6.2), both together do not: the
    // second is the one short
    let c = Cluster { nodes: vec![node("b", 8), node("c", 16)], links: c.links };
    let e = placement::evaluate(&m, &c, &opts(), &stages).unwrap_err().to_string();
    assert!(e.contains("b lacks") && e.contains("layers 6:10") && !e.contains("layers 0:3"), "{e}");
}

/// Random holdings over nodes n0..n4 of a model of up to 40 layers: nothing, the whole file,
/// or one or two windows (clamped to the model by `holds_for`).
fn arb_holds() -> impl Strategy<Value = Vec<(u8, u32, u32, u32, u32)>> {
    proptest::collection::vec((0u8..4, 0u32..40, 0u32..40, 0u32..40, 0u32..40), 5)
}

fn holds_for(c: &Cluster, m: &ModelCost, spec: &[(u8, u32, u32, u32, u32)]) -> Weights {
    let n = m.n_layer;
    let w = |a: u32, b: u32| (a.min(b) % n, a.max(b) % n + 1);
    let holds = c
        .nodes
        .iter()
        .zip(spec)
        .filter_map(|(node, &(kind, a, b, x, y))| {
            let h = match kind {
                0 => return None,
                1 => Holds::Whole,
                2 => Holds::Windows(vec![w(a, b)]),
                _ => Holds::Windows(vec![w(a, b), w(x, y)]),
            };
            Some((node.name.clone(), h))
        })
        .collect();
    Weights { header_bytes: 1 << 20, holds, hub_bandwidth: vec![] }
}

fn stages_of(p: &Plan) -> Vec<(String, u32, u32)> {
    p.stages.iter().map(|s| (s.node.clone(), s.begin, s.end)).collect()
}

/// n equal nodes (speed, memory, links) that can each hold the whole model.
fn equal_nodes(n: usize, m: &ModelCost) -> Cluster {
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let memory = (m.total_weight_bytes() + 2048 * 4096 * m.n_layer as u64) * 2 + (1 << 30);
    let nodes = names
        .iter()
        .map(|name| NodeSpec {
            name: name.clone(),
            memory,
            backend: Backend::Cpu,
            decode_gbps: 50.0,
            prefill_tflops: None,
        })
        .collect();
    let mut links = Vec::new();
    for a in &names {
        for b in names.iter().filter(|b| *b != a) {
            links.push(LinkSpec { from: a.clone(), to: b.clone(), bandwidth: 1e9, latency: 1e-4 });
        }
    }
    Cluster { nodes, links }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, rng_seed: seed(), ..ProptestConfig::default() })]

    /// Knowing where bytes are costs at most the margin in predicted speed, never moves more
    /// bytes than the fastest placement would, and gives a valid, self-consistent plan.
    #[test]
    fn fewer_bytes_only_within_the_margin((m, c) in arb_case(), spec in arb_holds()) {
        let o = opts();
        let w = holds_for(&c, &m, &spec);
        let fastest = placement::place(&m, &c, &o);
        let near = placement::place_near(&m, &c, &o, &w);
        match (fastest, near) {
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (Ok(f), Ok(p)) => {
                check_shape(&p, &m);
                prop_assert!(p.time_per_token <= f.time_per_token * (1.0 + NEAR_FASTEST) * (1.0 + 1e-12),
                    "{} vs the fastest {}", p.time_per_token, f.time_per_token);
                let (mf, mp) = (placement::moves(&m, &c, &w, &f), placement::moves(&m, &c, &w, &p));
                prop_assert!(mp.bytes <= mf.bytes, "moves {} where the fastest moves {}", mp.bytes, mf.bytes);
                prop_assert_eq!(placement::evaluate(&m, &c, &o, &stages_of(&p)).unwrap(), p.clone());
                prop_assert_eq!(placement::place_near(&m, &c, &o, &w).unwrap(), p);
            }
            (f, p) => prop_assert!(false, "fits with holdings {:?} but not without {:?}, or the reverse", p, f),
        }
    }

    /// With no holdings (none, only nodes outside the cluster, or every node holding the whole
    /// model so no placement moves anything) the choice is the fastest placement, as before.
    #[test]
    fn without_holdings_the_choice_is_unchanged((m, c) in arb_case(), kind in 0u8..3) {
        let o = opts();
        let w = match kind {
            0 => Weights::default(),
            1 => Weights { header_bytes: 1 << 20, holds: vec![("elsewhere".into(), Holds::Whole)], hub_bandwidth: vec![] },
            _ => Weights { header_bytes: 1 << 20, holds: c.nodes.iter().map(|n| (n.name.clone(), Holds::Whole)).collect(), hub_bandwidth: vec![] },
        };
        prop_assert_eq!(placement::place_near(&m, &c, &o, &w), placement::place(&m, &c, &o));
    }

    /// Equally fast nodes, each able to run the whole model: one node holds it; the others hold
    /// nothing or windows. Every single-node placement is equally fast, and the one on the
    /// holder moves nothing: that one is chosen (the fastest search alone takes the first node).
    #[test]
    fn ties_go_to_the_node_that_holds_the_model(m in arb_model(), n in 2usize..=5, holder in 0usize..5, spec in arb_holds()) {
        let o = opts();
        let c = equal_nodes(n, &m);
        let holder = format!("n{}", holder % n);
        let mut w = holds_for(&c, &m, &spec);
        w.holds.retain(|(x, h)| *x != holder && *h != Holds::Whole);
        w.holds.push((holder.clone(), Holds::Whole));
        let p = placement::place_near(&m, &c, &o, &w).unwrap();
        let f = placement::place(&m, &c, &o).unwrap();
        // the holder, or a node whose windows happen to cover the whole model: nothing moves,
        // where the fastest search alone (the first node) may move it all
        prop_assert_eq!(p.stages.len(), 1);
        prop_assert_eq!(placement::moves(&m, &c, &w, &p).bytes, 0, "{:?} with {:?}", stages_of(&p), w.holds);
        prop_assert!(p.stages[0].node == holder || placement::moves(&m, &c, &w, &f).bytes == 0 || w.holds_of(&p.stages[0].node).is_some());
        prop_assert!((p.time_per_token - f.time_per_token).abs() <= f.time_per_token * 1e-12);
    }
}

/// A clearly faster placement is never traded for bytes: the node holding the model runs it
/// only when it is within the margin of the fastest.
#[test]
fn a_clearly_faster_node_wins_over_the_holder() {
    let m = model(vec![100 << 20; 16], false);
    let mut c = equal_nodes(2, &m);
    let w = Weights { header_bytes: 1 << 20, holds: vec![("n1".into(), Holds::Whole)], hub_bandwidth: vec![] };
    let on = |c: &Cluster| placement::place_near(&m, c, &opts(), &w).unwrap().stages[0].node.clone();
    // n1 holds the model and is 3% slower: within the margin, it runs the model
    c.nodes[1].decode_gbps = c.nodes[0].decode_gbps * 0.97;
    assert_eq!(on(&c), "n1");
    // 10% slower: n0 is clearly faster and gets it, bytes and all
    c.nodes[1].decode_gbps = c.nodes[0].decode_gbps * 0.90;
    assert_eq!(on(&c), "n0");
    let p = placement::place_near(&m, &c, &opts(), &w).unwrap();
    let mv = placement::moves(&m, &c, &w, &p);
    assert_eq!(mv.stages[0].from, Some(placement::Source::Node("n1".into())));
    assert_eq!(mv.bytes, m.total_weight_bytes() + (1 << 20));
    assert!((mv.seconds - mv.bytes as f64 / 1e9).abs() < 1e-9, "over the n1 -> n0 link");
}

/// A model too big for one node: between two equally fast nodes, the split that moves the
/// fewest bytes gives the node without the model as few layers as memory allows; with a
/// window already on that node, the split reuses it.
#[test]
fn splits_lean_on_what_nodes_hold() {
    let m = model(vec![100 << 20; 20], false);
    let o = opts();
    let c = Cluster {
        nodes: vec![node("a", 2), node("b", 2)],
        links: vec![
            LinkSpec { from: "a".into(), to: "b".into(), bandwidth: 1e9, latency: 1e-4 },
            LinkSpec { from: "b".into(), to: "a".into(), bandwidth: 1e9, latency: 1e-4 },
        ],
    };
    let fastest = placement::place(&m, &c, &o).unwrap();
    assert_eq!(fastest.stages.len(), 2);
    // a holds the whole model: b gets the fewest layers that still fit next to a's
    let w = Weights { header_bytes: 1 << 20, holds: vec![("a".into(), Holds::Whole)], hub_bandwidth: vec![] };
    let p = placement::place_near(&m, &c, &o, &w).unwrap();
    let on_b = |p: &Plan| p.stages.iter().filter(|s| s.node == "b").map(|s| s.end - s.begin).sum::<u32>();
    assert!(on_b(&p) < on_b(&fastest), "b runs {} layers, {} before", on_b(&p), on_b(&fastest));
    assert!(placement::moves(&m, &c, &w, &p).bytes < placement::moves(&m, &c, &w, &fastest).bytes);
    // whatever a cannot hold must go to b: a's stage is as large as a's memory allows
    let a = p.stages.iter().find(|s| s.node == "a").unwrap();
    let mut grown: Vec<_> = stages_of(&p);
    let i = grown.iter().position(|s| s.0 == "a").unwrap();
    if i == 0 {
        grown[0].2 += 1;
        grown[1].1 += 1;
    } else {
        grown[0].2 -= 1;
        grown[1].1 -= 1;
    }
    assert!(placement::evaluate(&m, &c, &o, &grown).is_err(), "a could hold more than {}:{}", a.begin, a.end);
    // b holds a window from an earlier split: the placement takes it again, moving nothing
    let win = (fastest.stages[1].begin, fastest.stages[1].end);
    let w2 = Weights {
        header_bytes: 1 << 20,
        holds: vec![("a".into(), Holds::Whole), (fastest.stages[1].node.clone(), Holds::Windows(vec![win]))],
        hub_bandwidth: vec![],
    };
    let p2 = placement::place_near(&m, &c, &o, &w2).unwrap();
    assert_eq!(placement::moves(&m, &c, &w2, &p2).bytes, 0, "{:?}", stages_of(&p2));
}
