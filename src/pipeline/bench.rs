//! `exo bench`: prompt processing and generation speed of a pipeline, measured like llama.cpp's
//! `llama-bench` (pp tests decode a prompt of random tokens, tg tests generate from an empty
//! context one token at a time), plus what a split costs: compute time per stage and the bytes
//! that travel between nodes per token.

use super::{generate, GenerateRequest, Pipeline, PipelineError, PipelineReport, TokenChunk};
use crate::engine::{LayerRange, SamplingParams, Token};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchConfig {
    /// Prompt lengths, one pp test each (0 entries: no pp test).
    pub pp: Vec<u32>,
    /// Tokens per tg test (0: no tg test).
    pub tg: u32,
    /// Timed runs per test, after one warm-up run.
    pub repeat: u32,
    /// tg tests decode speculatively with n-gram proposals of up to this many tokens (0: one
    /// token per step, as llama-bench).
    #[serde(default)]
    pub draft_window: u32,
}

/// Most pp tests in one run, most runs per test, longest prompt or generation: bounds what one
/// bench request can ask for (and keeps [`BenchConfig::n_ctx_needed`] from overflowing).
pub const MAX_PP_TESTS: usize = 32;
pub const MAX_REPEAT: u32 = 100;
pub const MAX_BENCH_TOKENS: u32 = 1 << 20;
/// Longest speculative window a bench may ask for.
pub const MAX_DRAFT_WINDOW: u32 = 64;

/// A bench request that asks for nothing, or for more than one request may.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BenchConfigError {
    #[error("--repeat must be at least 1")]
    NoRepeat,
    #[error("nothing to measure: give --pp lengths or a --tg count")]
    Nothing,
    #[error("--pp lengths must be positive")]
    EmptyPrompt,
    #[error("--pp: {n} lengths; at most {MAX_PP_TESTS}")]
    TooManyTests { n: usize },
    #[error("--repeat: {n}; at most {MAX_REPEAT}")]
    TooManyRuns { n: u32 },
    #[error("--pp/--tg: {n} tokens; at most {MAX_BENCH_TOKENS}")]
    TooManyTokens { n: u32 },
    #[error("draft_window: {n}; at most {MAX_DRAFT_WINDOW}")]
    DraftWindow { n: u32 },
}

impl BenchConfig {
    /// Context the tests need: the longest prompt, or the tg run from position 0.
    pub fn n_ctx_needed(&self) -> u32 {
        self.pp.iter().copied().max().unwrap_or(0).max(self.tg + 1) + 1
    }

    pub fn validate(&self) -> Result<(), BenchConfigError> {
        if self.repeat == 0 {
            return Err(BenchConfigError::NoRepeat);
        }
        if self.pp.is_empty() && self.tg == 0 {
            return Err(BenchConfigError::Nothing);
        }
        if self.pp.contains(&0) {
            return Err(BenchConfigError::EmptyPrompt);
        }
        if self.pp.len() > MAX_PP_TESTS {
            return Err(BenchConfigError::TooManyTests { n: self.pp.len() });
        }
        if self.repeat > MAX_REPEAT {
            return Err(BenchConfigError::TooManyRuns { n: self.repeat });
        }
        if let Some(n) = self.pp.iter().copied().chain([self.tg]).find(|n| *n > MAX_BENCH_TOKENS) {
            return Err(BenchConfigError::TooManyTokens { n });
        }
        if self.draft_window > MAX_DRAFT_WINDOW {
            return Err(BenchConfigError::DraftWindow { n: self.draft_window });
        }
        Ok(())
    }
}

/// One timed run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRun {
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// pp: until the token after the prompt is sampled; tg: the first decode.
    pub ttft_ms: f64,
    /// Compute time per stage (same order as the placement).
    pub stage_compute_ms: Vec<f64>,
    /// Inference data sent between nodes during the run (all nodes, frame headers included).
    pub transfer_bytes: u64,
}

/// One test (`pp128`, `tg128`) over its runs; the summary fields are medians.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchTest {
    pub name: String,
    pub n_prompt: u32,
    pub n_gen: u32,
    pub tokens_per_s: f64,
    pub ttft_ms: f64,
    pub stage_compute_ms: Vec<f64>,
    /// Transfer per token processed (prompt tokens for pp, generated tokens for tg).
    pub transfer_bytes_per_token: f64,
    pub runs: Vec<BenchRun>,
    /// A speculative tg test: over its runs, the share of proposals taken and the tokens each
    /// verify step gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speculation: Option<BenchSpeculation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchSpeculation {
    pub proposed: u64,
    pub accepted: u64,
    pub windows: u64,
    /// Tokens generated per decode step (a plain step gives 1).
    pub tokens_per_step: f64,
    pub acceptance: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchStage {
    pub node: String,
    pub range: LayerRange,
    pub n_threads: i32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchNode {
    pub node: String,
    /// The process's resident-memory high-water mark (mapped weights, KV, buffers).
    pub peak_rss_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub n_layer: u32,
    pub n_embd: usize,
    pub n_batch: u32,
    pub repeat: u32,
    pub stages: Vec<BenchStage>,
    pub tests: Vec<BenchTest>,
    pub nodes: Vec<BenchNode>,
}

/// Runs the tests on sequence `seq` (cleared before every run and at the end).
pub async fn run_bench<P: Pipeline + ?Sized>(
    p: &P,
    model: &str,
    seq: i32,
    cfg: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, PipelineError> {
    cfg.validate()?;
    let info = p.info().clone();
    if cfg.n_ctx_needed() > info.n_ctx {
        return Err(PipelineError::PromptTooLong { prompt: cfg.n_ctx_needed() as usize, n_ctx: info.n_ctx });
    }
    let mut rng = SplitMix(0x5eed_0fe0);
    let first = p.report().await?;
    let stages: Vec<BenchStage> = first
        .stages
        .iter()
        .map(|s| BenchStage { node: s.node.clone(), range: s.range, n_threads: s.n_threads })
        .collect();

    progress("warm-up");
    let warm_pp = cfg.pp.first().copied().unwrap_or(16).min(64);
    pp_run(p, seq, warm_pp, &mut rng).await?;
    tg_run(p, seq, cfg.tg.clamp(1, 8), cfg.draft_window).await?;

    let mut tests = Vec::new();
    for &n in &cfg.pp {
        let mut runs = Vec::new();
        for r in 0..cfg.repeat {
            progress(&format!("pp{n} run {}/{}", r + 1, cfg.repeat));
            let before = p.report().await?;
            let (seconds, ttft) = pp_run(p, seq, n, &mut rng).await?;
            let after = p.report().await?;
            runs.push(measured(seconds, ttft, n, &before, &after));
        }
        tests.push(summarize(format!("pp{n}"), n, 0, runs));
    }
    if cfg.tg > 0 {
        let mut runs = Vec::new();
        let (mut proposed, mut accepted, mut windows, mut steps) = (0u64, 0u64, 0u64, 0u64);
        for r in 0..cfg.repeat {
            progress(&format!("tg{} run {}/{}", cfg.tg, r + 1, cfg.repeat));
            let before = p.report().await?;
            let (seconds, ttft, stats) = tg_run(p, seq, cfg.tg, cfg.draft_window).await?;
            let after = p.report().await?;
            runs.push(measured(seconds, ttft, cfg.tg, &before, &after));
            proposed += stats.proposed as u64;
            accepted += stats.accepted as u64;
            windows += stats.windows as u64;
            // every step emits one sampled token plus the proposals it took
            steps += (stats.generated_tokens - stats.accepted) as u64;
        }
        let mut test = summarize(format!("tg{}", cfg.tg), 0, cfg.tg, runs);
        if cfg.draft_window > 0 {
            test.speculation = Some(BenchSpeculation {
                proposed,
                accepted,
                windows,
                tokens_per_step: (cfg.tg as u64 * cfg.repeat as u64) as f64 / steps.max(1) as f64,
                acceptance: (proposed > 0).then(|| accepted as f64 / proposed as f64),
            });
        }
        tests.push(test);
    }
    p.seq_rm(seq, -1, -1).await?;
    let last = p.report().await?;
    Ok(BenchReport {
        model: model.to_string(),
        n_layer: info.n_layer,
        n_embd: info.n_embd,
        n_batch: info.context.n_batch,
        repeat: cfg.repeat,
        stages,
        tests,
        nodes: nodes(&last),
    })
}

/// Greedy, with end-of-generation banned: every tg run generates exactly the asked count.
fn sampling<P: Pipeline + ?Sized>(p: &P) -> SamplingParams {
    SamplingParams { banned: p.info().eog_tokens.clone(), ..SamplingParams::greedy() }
}

/// Decodes `n` random tokens as one prompt (in n_batch chunks, sent at once so stages overlap)
/// and samples the next token. Returns (seconds, seconds) — for a prompt both are the TTFT.
async fn pp_run<P: Pipeline + ?Sized>(
    p: &P,
    seq: i32,
    n: u32,
    rng: &mut SplitMix,
) -> Result<(f64, f64), PipelineError> {
    p.seq_rm(seq, -1, -1).await?;
    p.set_sampler(seq, sampling(p), vec![]).await?;
    let n_vocab = p.info().n_vocab as u64;
    let tokens: Vec<Token> = (0..n).map(|_| (rng.next() % n_vocab) as Token).collect();
    let chunks = TokenChunk::prompt(&tokens, 0, seq, p.info().context.n_batch as usize);
    let t0 = Instant::now();
    let sampled = p.run(chunks).await?;
    let s = t0.elapsed().as_secs_f64();
    if sampled.len() != 1 {
        return Err(PipelineError::Protocol { index: 0, what: "not one sampled token after the prompt" });
    }
    Ok((s, s))
}

/// Generates `n` tokens from an empty context (the first decode is one start token, as in
/// llama-bench). Returns (seconds for all n decodes, seconds for the first).
async fn tg_run<P: Pipeline + ?Sized>(
    p: &P,
    seq: i32,
    n: u32,
    draft_window: u32,
) -> Result<(f64, f64, super::GenerationStats), PipelineError> {
    p.seq_rm(seq, -1, -1).await?;
    let info = p.info();
    let start = info.bos.unwrap_or(0);
    let req = GenerateRequest {
        prompt: vec![start],
        past: vec![],
        seq,
        sampling: sampling(p),
        max_tokens: Some(n),
        ignore_eos: false,
        draft_window: draft_window as usize,
    };
    let stats = generate(p, req, |_| ControlFlow::Continue(())).await?;
    if stats.generated_tokens != n as usize {
        return Err(PipelineError::Bench {
            detail: format!("asked for {n} tokens, generated {}", stats.generated_tokens),
        });
    }
    let first = stats.prompt_duration.as_secs_f64();
    Ok((first + stats.eval_duration.as_secs_f64(), first, stats))
}

fn measured(seconds: f64, ttft: f64, tokens: u32, before: &PipelineReport, after: &PipelineReport) -> BenchRun {
    let stage_compute_ms = after
        .stages
        .iter()
        .zip(&before.stages)
        .map(|(a, b)| a.counters.since(&b.counters).compute_ns as f64 / 1e6)
        .collect();
    let sent = |r: &PipelineReport| -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        let mut note = |node: &str, bytes: u64| {
            let e = m.entry(node.to_string()).or_insert(0);
            *e = (*e).max(bytes); // a node reporting twice (as coordinator and stage) counts once
        };
        note(&r.coordinator.node, r.coordinator.data_bytes_sent);
        r.stages.iter().for_each(|s| note(&s.node, s.node_data_bytes_sent));
        m
    };
    let (b, a) = (sent(before), sent(after));
    let transfer_bytes = a.iter().map(|(k, v)| v.saturating_sub(b.get(k).copied().unwrap_or(0))).sum();
    BenchRun {
        seconds,
        tokens_per_s: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        ttft_ms: ttft * 1e3,
        stage_compute_ms,
        transfer_bytes,
    }
}

fn summarize(name: String, n_prompt: u32, n_gen: u32, runs: Vec<BenchRun>) -> BenchTest {
    let tokens = (n_prompt + n_gen).max(1) as f64;
    let n_stages = runs.first().map_or(0, |r| r.stage_compute_ms.len());
    BenchTest {
        name,
        n_prompt,
        n_gen,
        tokens_per_s: median(runs.iter().map(|r| r.tokens_per_s)),
        ttft_ms: median(runs.iter().map(|r| r.ttft_ms)),
        stage_compute_ms: (0..n_stages).map(|i| median(runs.iter().map(|r| r.stage_compute_ms[i]))).collect(),
        transfer_bytes_per_token: median(runs.iter().map(|r| r.transfer_bytes as f64 / tokens)),
        runs,
        speculation: None,
    }
}

fn nodes(r: &PipelineReport) -> Vec<BenchNode> {
    let mut out: Vec<BenchNode> = Vec::new();
    let all = std::iter::once((&r.coordinator.node, r.coordinator.peak_rss_bytes))
        .chain(r.stages.iter().map(|s| (&s.node, s.node_peak_rss_bytes)));
    for (node, peak) in all {
        match out.iter_mut().find(|n| &n.node == node) {
            Some(n) => n.peak_rss_bytes = n.peak_rss_bytes.max(peak),
            None => out.push(BenchNode { node: node.clone(), peak_rss_bytes: peak }),
        }
    }
    out
}

/// Median (mean of the middle two for an even count); 0 for none.
pub fn median(xs: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Seeded prompt tokens, the same for every run of every configuration.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StageCounters;
    use crate::pipeline::{NodeReport, StageReport};

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }

    fn report(coord: u64, a: (u64, u64), b: (u64, u64)) -> PipelineReport {
        let stage = |node: &str, begin, (ns, bytes): (u64, u64)| StageReport {
            node: node.into(),
            range: LayerRange { begin, end: begin + 1 },
            n_threads: 1,
            counters: StageCounters { decodes: 1, tokens: 1, compute_ns: ns },
            node_data_bytes_sent: bytes,
            node_peak_rss_bytes: Some(bytes * 10),
        };
        PipelineReport {
            stages: vec![stage("a", 0, a), stage("b", 1, b)],
            coordinator: NodeReport { node: "a".into(), data_bytes_sent: coord, peak_rss_bytes: Some(5) },
        }
    }

    #[test]
    fn runs_count_each_node_once_and_stage_time_by_stage() {
        let before = report(100, (1_000_000, 100), (0, 50));
        let after = report(160, (3_000_000, 150), (5_000_000, 90));
        let r = measured(0.5, 0.1, 10, &before, &after);
        assert_eq!(r.tokens_per_s, 20.0);
        assert_eq!(r.ttft_ms, 100.0);
        assert_eq!(r.stage_compute_ms, vec![2.0, 5.0]);
        // node a: max(160, 150) - max(100, 100) = 60; node b: 40
        assert_eq!(r.transfer_bytes, 100);
        let t = summarize("tg10".into(), 0, 10, vec![r.clone(), BenchRun { tokens_per_s: 10.0, ..r.clone() }, r]);
        assert_eq!(t.tokens_per_s, 20.0);
        assert_eq!(t.transfer_bytes_per_token, 10.0);
        let n = nodes(&after);
        assert_eq!(n.len(), 2);
        assert_eq!(n[0].peak_rss_bytes, Some(1500));
    }

    #[test]
    fn config_checks() {
        let c = BenchConfig { pp: vec![128, 512], tg: 128, repeat: 3, draft_window: 0 };
        assert!(BenchConfig { draft_window: 8, ..c.clone() }.validate().is_ok());
        assert!(BenchConfig { draft_window: 65, ..c.clone() }.validate().is_err());
        assert!(c.validate().is_ok());
        assert_eq!(c.n_ctx_needed(), 513);
        assert!(BenchConfig { repeat: 0, ..c.clone() }.validate().is_err());
        assert!(BenchConfig { pp: vec![], tg: 0, ..c.clone() }.validate().is_err());
        assert!(BenchConfig { pp: vec![0], ..c.clone() }.validate().is_err());
        // hostile sizes: refused before anything is sized by them
        assert!(BenchConfig { pp: vec![1; 100_000], ..c.clone() }.validate().is_err());
        assert!(BenchConfig { pp: vec![1; MAX_PP_TESTS], ..c.clone() }.validate().is_ok());
        assert!(BenchConfig { pp: vec![u32::MAX], ..c.clone() }.validate().is_err());
        assert_eq!(
            BenchConfig { tg: u32::MAX, ..c.clone() }.validate(),
            Err(BenchConfigError::TooManyTokens { n: u32::MAX })
        );
        let e = BenchConfig { pp: vec![], tg: 0, ..c.clone() }.validate().unwrap_err();
        assert_eq!(e.to_string(), "nothing to measure: give --pp lengths or a --tg count");
        assert!(BenchConfig { repeat: 1_000_000, ..c }.validate().is_err());
    }
}
