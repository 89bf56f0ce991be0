//! Speculative decoding on the coordinator: what to propose after a sequence's last token, and
//! how long a window of proposals is worth sending. The proposals ride in the sequence's next
//! batch; the last stage samples their rows in order and stops at the first miss
//! (`engine::Speculation`), so what a sequence emits is what it would have emitted one token at
//! a time (same logits under `--exact`, same sampler, same random draws).

use crate::engine::Token;
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
}

impl Proposer {
    pub fn name(self) -> &'static str {
        match self {
            Proposer::None => "none",
            Proposer::Ngram => "ngram",
        }
    }
}

impl std::str::FromStr for Proposer {
    type Err = String;
    fn from_str(s: &str) -> Result<Proposer, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "off" | "" => Ok(Proposer::None),
            "ngram" => Ok(Proposer::Ngram),
            other => Err(format!("unknown draft `{other}` (none or ngram)")),
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
/// Longest n-gram looked up, and shortest.
const NGRAM_MAX: usize = 4;
const NGRAM_MIN: usize = 2;
/// Tokens of history searched (the most recent ones): bounds the lookup's cost per step.
const NGRAM_SPAN: usize = 8192;

/// Up to `k` tokens that followed the most recent earlier occurrence of the longest suffix of
/// `history` (NGRAM_MAX down to NGRAM_MIN tokens); empty when none recurs.
pub fn ngram(history: &[Token], k: usize) -> Vec<Token> {
    if k == 0 {
        return Vec::new();
    }
    let h = &history[history.len().saturating_sub(NGRAM_SPAN)..];
    for n in (NGRAM_MIN..=NGRAM_MAX.min(h.len().saturating_sub(1))).rev() {
        let tail = &h[h.len() - n..];
        // the latest match whose continuation is not the tail itself
        if let Some(at) = (0..h.len() - n).rev().find(|&j| &h[j..j + n] == tail) {
            let from = at + n;
            return h[from..(from + k).min(h.len())].to_vec();
        }
    }
    Vec::new()
}

/// One sequence's speculation: the window it is worth now, learnt from what was accepted.
#[derive(Clone, Debug)]
pub struct Tuner {
    window: usize,
    max: usize,
    /// Windows in a row that proposed something and had nothing accepted.
    misses: u32,
    /// Steps to decode plainly before proposing again (the off-switch), and the next pause.
    pause: u32,
    backoff: u32,
}

/// Misses in a row that pause speculation, and the longest pause (steps).
const MISSES_TO_PAUSE: u32 = 2;
const MAX_PAUSE: u32 = 64;

impl Tuner {
    pub fn new(max: usize) -> Tuner {
        Tuner { window: max.min(4).max(1), max: max.max(1), misses: 0, pause: 0, backoff: 4 }
    }

    /// Tokens to propose this step (0: decode one token plainly).
    pub fn window(&mut self) -> usize {
        if self.pause > 0 {
            self.pause -= 1;
            return 0;
        }
        self.window
    }

    /// A window of `proposed` tokens had its first `accepted` taken.
    pub fn verified(&mut self, proposed: usize, accepted: usize) {
        if proposed == 0 {
            return;
        }
        if accepted == proposed {
            self.window = (self.window * 2).min(self.max);
        } else {
            self.window = (accepted + 1).clamp(1, self.max);
        }
        if accepted == 0 {
            self.misses += 1;
            if self.misses >= MISSES_TO_PAUSE {
                self.pause = self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_PAUSE);
                self.misses = 0;
            }
        } else {
            self.misses = 0;
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
    fn ngram_proposes_what_followed_the_latest_match() {
        // "1 2 3 9 | 1 2 3 7 8 | 1 2 3": the latest "1 2 3" was followed by 7 8
        let h = [1, 2, 3, 9, 1, 2, 3, 7, 8, 1, 2, 3];
        assert_eq!(ngram(&h, 2), [7, 8]);
        assert_eq!(ngram(&h, 10), [7, 8, 1, 2, 3]);
        assert!(ngram(&h, 0).is_empty());
        // nothing recurs
        assert!(ngram(&[1, 2, 3, 4, 5], 4).is_empty());
        // a single token never matches on its own (too noisy)
        assert!(ngram(&[5, 1, 6, 5], 4).is_empty());
        assert!(ngram(&[], 4).is_empty());
        assert!(ngram(&[1], 4).is_empty());
        // a run repeats itself
        assert_eq!(ngram(&[4, 4, 4, 4], 3), [4]);
    }

    #[test]
    fn the_tuner_grows_on_acceptance_and_pauses_on_misses() {
        let mut t = Tuner::new(8);
        assert_eq!(t.window(), 4);
        t.verified(4, 4);
        assert_eq!(t.window(), 8);
        t.verified(8, 8);
        assert_eq!(t.window(), 8, "capped");
        t.verified(8, 2);
        assert_eq!(t.window(), 3);
        t.verified(3, 0);
        t.verified(1, 0);
        // two misses in a row: plain steps for a while, then proposals again
        let paused = (0..4).map(|_| t.window()).collect::<Vec<_>>();
        assert_eq!(paused, [0, 0, 0, 0]);
        assert_eq!(t.window(), 1);
        // missing again doubles the pause
        t.verified(1, 0);
        t.verified(1, 0);
        assert_eq!((0..8).filter(|_| t.window() == 0).count(), 8);
        assert_eq!(t.window(), 1);
        t.verified(0, 0); // nothing proposed: nothing learnt
        assert_eq!(t.window(), 1);
    }

    #[test]
    fn proposer_names_parse() {
        assert_eq!("ngram".parse::<Proposer>().unwrap(), Proposer::Ngram);
        assert_eq!("NONE".parse::<Proposer>().unwrap(), Proposer::None);
        assert!("llama".parse::<Proposer>().is_err());
    }
}
