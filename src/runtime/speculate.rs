//! Speculative decoding on the coordinator: what to propose after a sequence's last token, and
//! how long a window of proposals is worth sending. The proposals ride in the sequence's next
//! batch; the last stage samples their rows in order and stops at the first miss
//! (`engine::Speculation`), so what a sequence emits is what it would have emitted one token at
//! a time (same logits under `--exact`, same sampler, same random draws).

use serde::{Deserialize, Serialize};

/// Where proposals come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proposer {
    /// No speculation: one token per step.
    #[default]
    None,
    /// The sequence's own prompt and output: the longest recent n-gram that ends like the
    /// sequence proposes what followed it (prompt lookup; no model, no traffic).
    Ngram,
    /// A small model sharing the target's vocabulary, run on the coordinator, proposes greedily
    /// (`Limits::draft_model` names it).
    Model,
}

impl Proposer {
    pub fn name(self) -> &'static str {
        match self {
            Proposer::None => "none",
            Proposer::Ngram => "ngram",
            Proposer::Model => "model",
        }
    }
}

impl std::str::FromStr for Proposer {
    type Err = String;
    fn from_str(s: &str) -> Result<Proposer, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" | "" => Ok(Proposer::None),
            "ngram" => Ok(Proposer::Ngram),
            other => Err(format!("unknown proposer `{other}` (none, ngram, or a model's name)")),
        }
    }
}

/// How a batcher speculates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    pub proposer: Proposer,
    /// Most tokens proposed at once.
    pub max_window: usize,
    /// Sequences decoding side by side beyond which nobody speculates: the batch is already
    /// wide enough that extra rows cost compute instead of riding on a memory-bound step.
    pub max_sequences: usize,
}

impl SpecConfig {
    pub const OFF: SpecConfig = SpecConfig { proposer: Proposer::None, max_window: 0, max_sequences: 0 };

    pub fn new(proposer: Proposer) -> SpecConfig {
        SpecConfig { proposer, max_window: MAX_WINDOW, max_sequences: MAX_SEQUENCES }
    }

    pub fn on(&self) -> bool {
        self.proposer != Proposer::None && self.max_window > 0
    }
}

/// Default longest window.
pub const MAX_WINDOW: usize = 8;
/// Default widest batch that still speculates.
pub const MAX_SEQUENCES: usize = 4;
pub use crate::pipeline::ngram;

/// What a decode step costs, learnt from the steps the batcher sees: `time = fixed + per_row *
/// rows` by least squares over recent steps (older ones weigh less). In one process extra rows
/// cost compute; across slow links the fixed trip dominates and long windows are cheap.
#[derive(Clone, Debug, Default)]
pub struct StepCost {
    n: f64,
    sr: f64,
    st: f64,
    srr: f64,
    srt: f64,
}

/// Weight of the previous steps at each new one.
const COST_DECAY: f64 = 0.97;
/// An extra row's cost relative to a step's fixed part until steps of different widths were seen.
const PRIOR_ROW_SHARE: f64 = 0.2;

impl StepCost {
    /// A step of `rows` rows (no prompt rows) answered after `secs`.
    pub fn observe(&mut self, rows: usize, secs: f64) {
        let r = rows as f64;
        for v in [&mut self.n, &mut self.sr, &mut self.st, &mut self.srr, &mut self.srt] {
            *v *= COST_DECAY;
        }
        self.n += 1.0;
        self.sr += r;
        self.st += secs;
        self.srr += r * r;
        self.srt += r * secs;
    }

    /// (fixed, per_row) in seconds; None before any step.
    pub fn model(&self) -> Option<(f64, f64)> {
        if self.n < 1.0 {
            return None;
        }
        let (mr, mt) = (self.sr / self.n, self.st / self.n);
        let var = self.srr / self.n - mr * mr;
        let per_row = if var > 0.25 {
            ((self.srt / self.n - mr * mt) / var).max(0.0)
        } else {
            mt / (1.0 / PRIOR_ROW_SHARE + mr) // no spread in widths yet: the prior share
        };
        Some(((mt - per_row * mr).max(per_row * 0.1), per_row))
    }
}

/// One sequence's speculation: how likely its proposals are taken, and the window worth that.
#[derive(Clone, Debug)]
pub struct Tuner {
    max: usize,
    /// Proposed tokens taken, and windows that ended on a miss (recent ones weigh more): the
    /// chance a proposal is taken is `taken / (taken + missed)`.
    taken: f64,
    missed: f64,
    /// Plain steps before proposals are tried again (the off-switch), and the next such pause.
    pause: u32,
    backoff: u32,
}

/// Weight of the previous windows at each new one.
const ACCEPT_DECAY: f64 = 0.8;
/// The longest pause (steps) between probes of a sequence whose proposals do not pay.
const MAX_PAUSE: u32 = 64;

impl Tuner {
    pub fn new(max: usize) -> Tuner {
        Tuner { max: max.max(1), taken: 1.0, missed: 1.0, pause: 0, backoff: 4 }
    }

    /// The chance that a proposal is taken (given the ones before it were).
    pub fn acceptance(&self) -> f64 {
        self.taken / (self.taken + self.missed)
    }

    /// Tokens to propose this step (0: decode one token plainly): the window that gives the
    /// most tokens per second expected, a window of `k` costing `fixed + per_row * (1 + k)` and
    /// giving `1 + a + a^2 + ... + a^k` tokens. When nothing pays, plain steps for a while, then
    /// one probe.
    pub fn window(&mut self, cost: Option<(f64, f64)>) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return if self.pause == 0 { 1 } else { 0 };
        }
        let a = self.acceptance();
        let (fixed, per_row) = cost.unwrap_or((1.0, PRIOR_ROW_SHARE));
        let rate = |k: usize| {
            let tokens = (0..=k).map(|i| a.powi(i as i32)).sum::<f64>();
            tokens / (fixed + per_row * (1 + k) as f64)
        };
        let best = (0..=self.max).max_by(|&x, &y| rate(x).total_cmp(&rate(y))).unwrap_or(0);
        if best == 0 {
            self.pause = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_PAUSE);
        }
        best
    }

    /// A window of `proposed` tokens had its first `accepted` taken.
    pub fn verified(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        self.taken = self.taken * ACCEPT_DECAY + accepted as f64;
        self.missed = self.missed * ACCEPT_DECAY + (accepted < proposed) as u32 as f64;
        if accepted > 0 {
            self.backoff = 4;
        }
    }
}

/// Totals for `/metrics` and `/api/ps`.
#[derive(Debug, Default)]
pub struct SpecCounters {
    /// Verify steps that carried proposals.
    pub windows: std::sync::atomic::AtomicU64,
    pub proposed: std::sync::atomic::AtomicU64,
    pub accepted: std::sync::atomic::AtomicU64,
    /// Tokens those steps emitted (accepted proposals plus the one sampled after them).
    pub emitted: std::sync::atomic::AtomicU64,
}

/// An instance's speculation as `/api/ps`, `/cluster` and the dashboard show it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecView {
    /// The proposer (`none`, `ngram`).
    pub draft: String,
    #[serde(flatten)]
    pub stats: SpecStats,
    /// Share of proposed tokens accepted (None before any proposal).
    pub acceptance: Option<f64>,
    /// Tokens emitted per verify step that carried proposals.
    pub tokens_per_verify: Option<f64>,
}

impl SpecView {
    pub fn new(proposer: Proposer, stats: SpecStats) -> SpecView {
        SpecView {
            draft: proposer.name().into(),
            acceptance: stats.acceptance(),
            tokens_per_verify: stats.tokens_per_verify(),
            stats,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecStats {
    pub windows: u64,
    pub proposed: u64,
    pub accepted: u64,
    pub emitted: u64,
}

impl SpecStats {
    /// Share of proposed tokens accepted.
    pub fn acceptance(&self) -> Option<f64> {
        (self.proposed > 0).then(|| self.accepted as f64 / self.proposed as f64)
    }
    /// Tokens emitted per verify step.
    pub fn tokens_per_verify(&self) -> Option<f64> {
        (self.windows > 0).then(|| self.emitted as f64 / self.windows as f64)
    }
}

impl SpecCounters {
    pub fn add(&self, proposed: usize, accepted: usize, emitted: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.windows.fetch_add(1, Relaxed);
        self.proposed.fetch_add(proposed as u64, Relaxed);
        self.accepted.fetch_add(accepted as u64, Relaxed);
        self.emitted.fetch_add(emitted as u64, Relaxed);
    }
    pub fn snapshot(&self) -> SpecStats {
        use std::sync::atomic::Ordering::Relaxed;
        SpecStats {
            windows: self.windows.load(Relaxed),
            proposed: self.proposed.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            emitted: self.emitted.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_follows_acceptance_and_the_cost_of_rows() {
        // slow links: a step is mostly its fixed trip, rows are cheap
        let link = Some((0.050, 0.0005));
        // in one process: a row costs a fifth of a step
        let local = Some((0.010, 0.002));
        let mut t = Tuner::new(8);
        for _ in 0..10 {
            t.verified(8, 8);
        }
        assert!(t.acceptance() > 0.9);
        assert_eq!(t.window(link), 8);
        assert!(t.window(local) >= 4);
        // proposals that are often wrong: short windows
        let mut t = Tuner::new(8);
        for _ in 0..10 {
            t.verified(2, 0);
            t.verified(2, 1);
        }
        let a = t.acceptance();
        assert!((0.2..0.5).contains(&a), "{a}");
        assert!((1..=4).contains(&t.window(link)));
        assert_eq!(t.window(local), 1);
        // proposals that are always wrong: not worth a row in one process
        for _ in 0..10 {
            t.verified(2, 0);
        }
        assert_eq!(t.window(local), 0, "not worth it");
        // the off-switch: plain steps, then one probe, with longer pauses while nothing is taken
        assert_eq!((0..3).map(|_| t.window(local)).collect::<Vec<_>>(), [0, 0, 0]);
        assert_eq!(t.window(local), 1, "a probe after the pause");
        t.verified(1, 0);
        assert_eq!(t.window(local), 0);
        assert_eq!((0..7).filter(|_| t.window(local) == 0).count(), 7, "the pause doubled");
        t.verified(0, 0); // nothing proposed: nothing learnt
    }

    #[test]
    fn step_cost_is_fitted_from_steps_of_different_widths() {
        let mut c = StepCost::default();
        assert!(c.model().is_none());
        for rows in [1, 3, 5, 1, 9, 2] {
            c.observe(rows, 0.010 + 0.002 * rows as f64);
        }
        let (fixed, per_row) = c.model().unwrap();
        assert!((fixed - 0.010).abs() < 1e-6 && (per_row - 0.002).abs() < 1e-6, "{fixed} {per_row}");
        // one width only: the prior share
        let mut c = StepCost::default();
        c.observe(1, 0.012);
        let (fixed, per_row) = c.model().unwrap();
        assert!((fixed + per_row - 0.012).abs() < 1e-9 && per_row < fixed);
    }

    #[test]
    fn proposer_names_parse() {
        assert_eq!("ngram".parse::<Proposer>().unwrap(), Proposer::Ngram);
        assert_eq!("NONE".parse::<Proposer>().unwrap(), Proposer::None);
        assert!("llama".parse::<Proposer>().is_err());
    }
}
