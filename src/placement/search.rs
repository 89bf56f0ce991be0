//! The exact search: dynamic programming over (first node, set of used nodes, last node, layers
//! covered). A stage's time is linear in its layer bytes, so for each transition the best start
//! layer is a sliding-window minimum (memory bounds how far back a stage may start), which keeps
//! the search at O(N² · 2^N · N · L) instead of O(... · L²).

use super::cost::{forward_bytes, Ctx, BACK_BYTES};
use super::weights::Pricing;
use std::collections::VecDeque;

/// Larger clusters are searched over their fastest nodes (plus required ones).
pub const MAX_SEARCH_NODES: usize = 10;

const INF: f64 = f64::INFINITY;

/// Stages as (node index, begin, end).
pub(super) type Stages = Vec<(usize, u32, u32)>;

/// The search's table over the states (used candidates as a mask, last candidate, layers
/// covered): the best cost of each and the state it was reached from (previous last
/// candidate, previous layer boundary).
struct Table {
    n: usize,
    l: usize,
    cost: Vec<f64>,
    parent: Vec<(u8, u32)>,
}

impl Table {
    fn new(n: usize, l: usize) -> Table {
        let size = (1usize << n) * n * (l + 1);
        Table { n, l, cost: vec![INF; size], parent: vec![(u8::MAX, 0u32); size] }
    }

    fn idx(&self, mask: usize, last: usize, layer: usize) -> usize {
        (mask * self.n + last) * (self.l + 1) + layer
    }
}

/// A stage added after the states (mask, u, ·): on candidate `v` (node `gv`), `hop` the time of
/// the transfer from `u` to it.
struct Step {
    mask: usize,
    u: usize,
    v: usize,
    gv: usize,
    hop: f64,
}

/// Best stages (node index, begin, end) by predicted time per token plus the priced bytes they
/// move (none for time alone), or None if nothing fits. A stage's bytes are, like its time, a
/// difference of prefix sums plus a constant, so the sliding-window minimum still holds.
pub(super) fn best_stages(
    ctx: &Ctx,
    pricing: &Pricing,
    candidates: &[usize],
    required: &[usize],
    max_stages: usize,
) -> Option<(f64, Stages)> {
    let n = candidates.len();
    let l = ctx.n_layer() as usize;
    if n == 0 || l == 0 {
        return None;
    }
    let full = 1usize << n;
    let req_mask: usize = required
        .iter()
        .map(|r| 1usize << candidates.iter().position(|c| c == r).expect("required is a candidate"))
        .sum();
    let mut t = Table::new(n, l);
    let fwd = forward_bytes(ctx.m);
    let node = |i: usize| candidates[i];
    let mut best: Option<(f64, Stages)> = None;

    for f in 0..n {
        t.cost.fill(INF);
        // first stage [0, b)
        for b in 1..=l {
            let last = b == l;
            if ctx.fits(node(f), 0, b as u32, true, last) {
                let k = t.idx(1 << f, f, b);
                t.cost[k] = ctx.time(node(f), 0, b as u32, last) + pricing.stage(node(f), 0, b as u32);
            }
        }
        for mask in 0..full {
            if mask & (1 << f) == 0 || mask.count_ones() as usize >= max_stages {
                continue;
            }
            for u in (0..n).filter(|&u| mask & (1 << u) != 0) {
                for v in (0..n).filter(|&v| mask & (1 << v) == 0) {
                    let Some(hop) = ctx.hop(node(u), node(v), fwd) else { continue };
                    extend(ctx, pricing, &mut t, Step { mask, u, v, gv: node(v), hop });
                }
            }
        }
        // close the ring and keep the best
        for mask in 0..full {
            if mask & (1 << f) == 0 || mask & req_mask != req_mask || mask.count_ones() as usize > max_stages {
                continue;
            }
            for last in (0..n).filter(|&x| mask & (1 << x) != 0) {
                let c = t.cost[t.idx(mask, last, l)];
                if c == INF {
                    continue;
                }
                let back = if mask == 1 << f {
                    0.0
                } else {
                    match ctx.hop(node(last), node(f), BACK_BYTES) {
                        Some(h) => h,
                        None => continue,
                    }
                };
                let total = c + back;
                if best.as_ref().is_none_or(|(b, _)| total < *b) {
                    // walk the parents back to the first stage
                    let mut stages = Vec::new();
                    let (mut m, mut x, mut e) = (mask, last, l);
                    loop {
                        let (p, a) = t.parent[t.idx(m, x, e)];
                        if p == u8::MAX {
                            stages.push((node(x), 0, e as u32));
                            break;
                        }
                        stages.push((node(x), a, e as u32));
                        m &= !(1 << x);
                        x = p as usize;
                        e = a as usize;
                    }
                    stages.reverse();
                    best = Some((total, stages));
                }
            }
        }
    }
    best
}

/// Adds the stage `s` after the states (mask, u, a), for every a.
fn extend(ctx: &Ctx, pricing: &Pricing, t: &mut Table, s: Step) {
    let Step { mask, u, v, gv, hop } = s;
    let l = t.l;
    let rate = ctx.c.nodes[gv].decode_gbps * 1e9;
    // what a stage ending (or starting) at layer x costs: its layers' time and priced bytes
    let at = |x: usize| ctx.prefix[x] as f64 / rate + pricing.prefix(gv, x);
    let nm = mask | (1 << v);
    // value of starting the new stage at layer a: cost so far + hop − (bytes before a) / rate
    let vals: Vec<f64> = (0..l)
        .map(|a| {
            let c = if a == 0 { INF } else { t.cost[t.idx(mask, u, a)] };
            if c == INF {
                INF
            } else {
                c + hop - at(a)
            }
        })
        .collect();
    if vals.iter().all(|v| *v == INF) {
        return;
    }
    let val = |a: usize| vals[a];
    // middle stages [a, b), b < l: a ranges over [amin(b), b-1]; amin grows with b
    let mut window: VecDeque<usize> = VecDeque::new();
    let mut amin = 1;
    let mut next_a = 1;
    for b in 2..l {
        // admit a = b-1
        while next_a < b {
            let va = val(next_a);
            if va < INF {
                while window.back().is_some_and(|&x| val(x) >= va) {
                    window.pop_back();
                }
                window.push_back(next_a);
            }
            next_a += 1;
        }
        while amin < b && !ctx.fits(gv, amin as u32, b as u32, false, false) {
            amin += 1;
        }
        while window.front().is_some_and(|&x| x < amin) {
            window.pop_front();
        }
        if let Some(&a) = window.front() {
            let c = val(a) + at(b) + pricing.extra(gv, false, false);
            let k = t.idx(nm, v, b);
            if c < t.cost[k] {
                t.cost[k] = c;
                t.parent[k] = (u as u8, a as u32);
            }
        }
    }
    // last stage [a, l): every a that fits
    let mut best: Option<(f64, usize)> = None;
    for a in (1..l).rev() {
        if !ctx.fits(gv, a as u32, l as u32, false, true) {
            break; // fewer layers fit better: nothing earlier fits either
        }
        let va = val(a);
        if va < INF && best.is_none_or(|(b, _)| va <= b) {
            best = Some((va, a));
        }
    }
    if let Some((va, a)) = best {
        let c = va + at(l) + ctx.time(gv, l as u32, l as u32, true) + pricing.extra(gv, false, true);
        let k = t.idx(nm, v, l);
        if c < t.cost[k] {
            t.cost[k] = c;
            t.parent[k] = (u as u8, a as u32);
        }
    }
}
