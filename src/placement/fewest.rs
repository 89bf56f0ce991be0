//! The fewest bytes among the nearly fastest placements: the search again with every byte a
//! stage lacks priced in seconds. For exact optima of time + price × bytes, a higher price never
//! gives more bytes nor less time (swap the two optima's inequalities), so the placement within
//! the margin that moves the fewest bytes is the one at the highest price still within it, found
//! by bisection. Only placements on that trade-off curve are found; one off it could move fewer
//! bytes still, at the cost of a search per price of the whole set of plans.

use super::cost::Ctx;
use super::weights::{Pricing, Weights};
use super::{balance, search, Plan, NEAR_FASTEST};

/// Prices as powers of ten of "moving the whole model costs the margin": the tie-breaker
/// between equally fast placements (no time difference that rounding leaves is worth it), the
/// highest tried (any time within the margin is worth a thousandth of the model), and the
/// bisection steps between them (about half a decade apart at the end; 6 searches at most).
const TIE_BREAK: f64 = -6.0;
const HIGHEST: f64 = 3.0;
const STEPS: usize = 4;

/// The plan within [`NEAR_FASTEST`] of `fastest` that moves the fewest bytes (ties: the faster;
/// `fastest` itself when none moves fewer).
pub(super) fn fewer_bytes(
    ctx: &Ctx,
    w: &Weights,
    order: &[usize],
    required: &[usize],
    max_stages: usize,
    fastest: Plan,
) -> Plan {
    let limit = fastest.time_per_token * (1.0 + NEAR_FASTEST);
    let stages: Vec<(usize, u32, u32)> = fastest
        .stages
        .iter()
        .map(|s| (ctx.c.nodes.iter().position(|n| n.name == s.node).expect("a node of the cluster"), s.begin, s.end))
        .collect();
    let whole = ctx.m.total_weight_bytes().saturating_add(w.header_bytes).max(1) as f64;
    let unit = fastest.time_per_token * NEAR_FASTEST / whole;
    let mut best_bytes = Pricing::new(ctx.m, ctx.c, w, 1.0).bytes(&stages);
    if best_bytes == 0 {
        return fastest;
    }
    let mut best = fastest;
    // the search at price 10^e units: whether its plan is within the margin (kept if better)
    let mut within = |e: f64| -> bool {
        let pricing = Pricing::new(ctx.m, ctx.c, w, unit * 10f64.powf(e));
        let Some((_, mut stages)) = search::best_stages(ctx, &pricing, order, required, max_stages) else {
            return false;
        };
        balance(ctx, &mut stages, Some(&pricing));
        let Ok(plan) = ctx.evaluate(&stages) else { return false };
        let bytes = pricing.bytes(&stages);
        let ok = plan.time_per_token <= limit;
        if ok && (bytes < best_bytes || (bytes == best_bytes && plan.time_per_token < best.time_per_token)) {
            (best, best_bytes) = (plan, bytes);
        }
        ok
    };
    if within(TIE_BREAK) && !within(HIGHEST) {
        let (mut lo, mut hi) = (TIE_BREAK, HIGHEST);
        for _ in 0..STEPS {
            let mid = (lo + hi) / 2.0;
            if within(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    best
}
