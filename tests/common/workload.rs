//! The scripted workload the equivalence tests run on every chain (whole model, stages, other
//! devices): a two-sequence prefill over several micro-batches, decode steps, tail removal and
//! re-decode, sequence removal, clear and re-prefill, then greedy and seeded generation.
#![allow(dead_code)]

use exo::engine::{SamplingParams, Token};
use exo::pipeline::{generate, Chain, GenerateRequest};
use std::ops::ControlFlow;

/// Everything a chain produced in the workload.
#[derive(Debug)]
pub struct Trace {
    pub logits: Vec<Vec<f32>>,
    pub greedy: Vec<Token>,
    pub sampled: Vec<Token>,
}

impl Trace {
    /// Largest |Δlogit| against `other`, row by row.
    pub fn max_abs_diff(&self, other: &Trace) -> f32 {
        assert_eq!(self.logits.len(), other.logits.len());
        self.logits.iter().zip(&other.logits).map(|(x, y)| super::max_abs_diff(x, y)).fold(0f32, f32::max)
    }

    /// Largest |Δlogit| relative to the row's largest |logit| in `reference` (worst row).
    pub fn max_rel_diff(&self, reference: &Trace) -> f32 {
        assert_eq!(self.logits.len(), reference.logits.len());
        self.logits
            .iter()
            .zip(&reference.logits)
            .map(|(x, y)| super::max_abs_diff(x, y) / y.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6))
            .fold(0f32, f32::max)
    }

    /// ‖Δlogits‖₂ / ‖logits‖₂ of each row against `reference`.
    pub fn rel_l2_rows(&self, reference: &Trace) -> Vec<f32> {
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        self.logits
            .iter()
            .zip(&reference.logits)
            .map(|(x, y)| {
                (norm(&mut x.iter().zip(y).map(|(a, b)| a - b)) / norm(&mut y.iter().copied()).max(1e-12)) as f32
            })
            .collect()
    }

    /// ‖Δlogits‖₂ / ‖logits‖₂ of the worst row against `reference`.
    pub fn max_rel_l2_diff(&self, reference: &Trace) -> f32 {
        assert_eq!(self.logits.len(), reference.logits.len());
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
        self.logits
            .iter()
            .zip(&reference.logits)
            .map(|(x, y)| {
                let d = norm(&mut x.iter().zip(y).map(|(a, b)| a - b));
                (d / norm(&mut y.iter().copied()).max(1e-12)) as f32
            })
            .fold(0f32, f32::max)
    }

    pub fn scale(&self) -> f32 {
        self.logits.iter().flatten().fold(0f32, |m, x| m.max(x.abs()))
    }
}

pub fn seeded() -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.02,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        seed: 1234,
        banned: vec![],
        logit_bias: vec![],
        draws: 0,
        grammar: None,
        generated: 0,
    }
}

async fn decode(chain: &Chain, toks: &[(Token, i32, i32)], trace: &mut Trace) {
    let n = toks.len();
    let t = toks.iter().map(|x| x.0).collect();
    let p = toks.iter().map(|x| x.1).collect();
    let s = toks.iter().map(|x| x.2).collect();
    let (logits, _) = chain.decode(t, p, s, vec![true; n], true, false).await.unwrap();
    assert_eq!(logits.len(), n);
    trace.logits.extend(logits);
}

/// `n` tokens generated from a cleared chain (end of generation ignored).
pub async fn gen(chain: &Chain, prompt: &[Token], sampling: SamplingParams, n: u32) -> Vec<Token> {
    chain.clear().await.unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        past: vec![],
        seq: 0,
        sampling,
        max_tokens: Some(n),
        ignore_eos: true,
        draft_window: 0,
    };
    generate(chain, req, |t| {
        out.push(t);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(out.len(), n as usize);
    out
}

/// Runs the workload with `gen_tokens` generated per sampling mode.
pub async fn run(chain: &Chain, gen_tokens: u32) -> Trace {
    let mut tr = Trace { logits: vec![], greedy: vec![], sampled: vec![] };
    let first = chain.first();
    let a = first
        .tokenize("Once upon a time there was a little model that ran on every machine.", true, false)
        .await
        .unwrap();
    let b = first.tokenize("What is the capital of France? Paris!", true, false).await.unwrap();
    assert!(a.len() >= 14 && b.len() >= 9, "prompts too short: {} {}", a.len(), b.len());

    // 1. two sequences prefilled in one batch (several ubatches when n_ubatch is small)
    let mut batch: Vec<(Token, i32, i32)> = a.iter().enumerate().map(|(i, &t)| (t, i as i32, 0)).collect();
    batch.extend(b.iter().enumerate().map(|(i, &t)| (t, i as i32, 1)));
    decode(chain, &batch, &mut tr).await;
    let (mut pa, mut pb) = (a.len() as i32, b.len() as i32);

    // 2. decode steps, one token per sequence per step
    for step in 0..4 {
        let ta = a[step % a.len()];
        let tb = b[(step * 3) % b.len()];
        decode(chain, &[(ta, pa, 0), (tb, pb, 1)], &mut tr).await;
        pa += 1;
        pb += 1;
    }

    // 3. drop the last 3 positions of sequence 0 on every stage and decode other tokens there
    assert!(chain.seq_rm(0, pa - 3, -1).await.unwrap());
    pa -= 3;
    let redo: Vec<_> = (0..3).map(|i| (b[i], pa + i as i32, 0)).collect();
    decode(chain, &redo, &mut tr).await;
    pa += 3;

    // 4. drop sequence 1 entirely; sequence 0 goes on
    assert!(chain.remove_seq(1).await.unwrap());
    decode(chain, &[(a[1], pa, 0)], &mut tr).await;

    // 5. clear and prefill again
    chain.clear().await.unwrap();
    let batch: Vec<_> = b.iter().enumerate().map(|(i, &t)| (t, i as i32, 0)).collect();
    decode(chain, &batch, &mut tr).await;

    // 6. generation
    tr.greedy = gen(chain, &a, SamplingParams::greedy(), gen_tokens).await;
    tr.sampled = gen(chain, &a, seeded(), gen_tokens).await;
    tr
}
