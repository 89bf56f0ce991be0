//! A model split into 2, 3 and 4 in-process stages must behave exactly like the whole model:
//! multi-sequence prefill over several ubatches, decode steps, tail removal and re-decode,
//! sequence removal, clear and re-prefill, then 64 generated tokens (greedy and seeded sampling).

mod common;

use exo::engine::{ContextParams, LayerRange, SamplingParams, Token};
use exo::pipeline::{generate, Chain, GenerateRequest};
use exo::synth::TEST_PRESETS;
use std::ops::ControlFlow;

const TOL: f32 = 1e-5;
const GEN: u32 = 64;

const SPLITS: &[&[(u32, u32)]] = &[&[(0, 4), (4, 8)], &[(0, 1), (1, 5), (5, 8)], &[(0, 2), (2, 4), (4, 7), (7, 8)]];

fn ctx() -> ContextParams {
    // n_ubatch 8 splits every prefill into several micro-batches
    ContextParams { n_ctx: 512, n_batch: 64, n_ubatch: 8, n_threads: 2, n_seq_max: 2 }
}

/// Everything a chain produced in the scripted workload.
#[derive(Debug)]
struct Trace {
    logits: Vec<Vec<f32>>,
    greedy: Vec<Token>,
    sampled: Vec<Token>,
}

async fn decode(chain: &Chain, toks: &[(Token, i32, i32)], trace: &mut Trace) {
    let (t, p, s): (Vec<_>, Vec<_>, Vec<_>) = toks.iter().fold((vec![], vec![], vec![]), |mut a, &(t, p, s)| {
        a.0.push(t);
        a.1.push(p);
        a.2.push(s);
        a
    });
    let n = t.len();
    let (logits, _) = chain.decode(t, p, s, vec![true; n], true, false).await.unwrap();
    assert_eq!(logits.len(), n);
    trace.logits.extend(logits);
}

async fn gen(chain: &Chain, prompt: &[Token], sampling: SamplingParams) -> Vec<Token> {
    chain.clear().await.unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt: prompt.to_vec(),
        past: vec![],
        seq: 0,
        sampling,
        max_tokens: Some(GEN),
        ignore_eos: true,
    };
    generate(chain, req, |t| {
        out.push(t);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert_eq!(out.len(), GEN as usize);
    out
}

async fn workload(chain: &Chain) -> Trace {
    let mut tr = Trace { logits: vec![], greedy: vec![], sampled: vec![] };
    let first = chain.first();
    let a = first
        .tokenize("Once upon a time there was a little model that ran on every machine.", true, false)
        .await
        .unwrap();
    let b = first.tokenize("What is the capital of France? Paris!", true, false).await.unwrap();
    assert!(a.len() >= 16 && b.len() >= 9, "prompts too short: {} {}", a.len(), b.len());

    // 1. two sequences prefilled in one batch (several ubatches of 8)
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
    tr.greedy = gen(chain, &a, SamplingParams::greedy()).await;
    let seeded = SamplingParams {
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
    };
    tr.sampled = gen(chain, &a, seeded).await;
    tr
}

async fn check_preset(preset: &str) {
    let path = common::model(preset);
    let full = Chain::load(&path, None, ctx(), true).unwrap();
    let reference = workload(&full).await;
    let scale = reference.logits.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "{preset}: logits are nearly zero ({scale}); the comparison would be meaningless");
    let distinct: std::collections::HashSet<_> = reference.sampled.iter().collect();
    assert!(distinct.len() > 4, "{preset}: sampling produced too few distinct tokens");

    for split in SPLITS {
        let ranges: Vec<LayerRange> = split.iter().map(|&(begin, end)| LayerRange { begin, end }).collect();
        let chain = Chain::load(&path, Some(&ranges), ctx(), true).unwrap();
        let t = workload(&chain).await;
        assert_eq!(t.logits.len(), reference.logits.len());
        let d = t.logits.iter().zip(&reference.logits).map(|(x, y)| common::max_abs_diff(x, y)).fold(0f32, f32::max);
        println!("{preset} {split:?}: {} logit rows, max|dlogit| = {d:e} (max|logit| {scale:.3})", t.logits.len());
        assert!(d <= TOL, "{preset} {split:?}: max|dlogit| = {d}");
        assert_eq!(t.greedy, reference.greedy, "{preset} {split:?}: greedy output differs");
        assert_eq!(t.sampled, reference.sampled, "{preset} {split:?}: sampled output differs");
    }
}

#[tokio::test]
async fn llama_untied_stages_match_whole_model() {
    check_preset(TEST_PRESETS[0]).await;
}

#[tokio::test]
async fn llama_tied_stages_match_whole_model() {
    check_preset(TEST_PRESETS[1]).await;
}

#[tokio::test]
async fn qwen2_stages_match_whole_model() {
    check_preset(TEST_PRESETS[2]).await;
}

#[tokio::test]
async fn qwen3moe_stages_match_whole_model() {
    check_preset(TEST_PRESETS[3]).await;
}

/// Negative control: a chain whose hidden state is nudged must not pass the comparison.
#[tokio::test]
async fn perturbed_hidden_state_changes_logits() {
    use exo::engine::{Batch, BatchInput, DecodeOutput};
    let path = common::model("tiny-llama");
    let ranges = [LayerRange { begin: 0, end: 4 }, LayerRange { begin: 4, end: 8 }];
    let chain = Chain::load(&path, Some(&ranges), ctx(), true).unwrap();
    let toks = chain.first().tokenize("Hello world, this is a test.", true, false).await.unwrap();
    let n = toks.len();
    let pos: Vec<i32> = (0..n as i32).collect();
    let run = |delta: f32| {
        let chain = chain.clone();
        let (toks, pos) = (toks.clone(), pos.clone());
        async move {
            chain.clear().await.unwrap();
            let st = chain.stages();
            let b = Batch { input: BatchInput::Tokens(toks), pos: pos.clone(), seq: vec![0; n], output: vec![true; n] };
            let DecodeOutput::Hidden(mut h) = st[0].decode(b, false, false).await.unwrap() else {
                panic!("expected hidden")
            };
            h[0] += delta;
            let b = Batch { input: BatchInput::Hidden(h), pos, seq: vec![0; n], output: vec![true; n] };
            let DecodeOutput::Last { logits, .. } = st[1].decode(b, true, false).await.unwrap() else {
                panic!("expected logits")
            };
            logits
        }
    };
    let base = run(0.0).await;
    let same = run(0.0).await;
    let nudged = run(1e-3).await;
    let d0 = base.iter().zip(&same).map(|(x, y)| common::max_abs_diff(x, y)).fold(0f32, f32::max);
    let d1 = base.iter().zip(&nudged).map(|(x, y)| common::max_abs_diff(x, y)).fold(0f32, f32::max);
    assert_eq!(d0, 0.0);
    assert!(d1 > TOL, "a 1e-3 nudge changed the logits by only {d1}");
}

/// A model stored as a split set (several files) loads and splits into stages like the single file.
#[tokio::test]
async fn split_set_files_match_single_file() {
    let single = common::model("tiny-qwen2");
    let dir = tempfile::tempdir().unwrap();
    let spec = exo::synth::preset("tiny-qwen2").unwrap();
    let paths = exo::synth::make_split_model(&spec, dir.path(), "tiny-qwen2", 3).unwrap();
    let reference = workload(&Chain::load(&single, None, ctx(), true).unwrap()).await;
    let whole = workload(&Chain::load(&paths[0], None, ctx(), true).unwrap()).await;
    let ranges = [LayerRange { begin: 0, end: 3 }, LayerRange { begin: 3, end: 8 }];
    let staged = workload(&Chain::load(&paths[0], Some(&ranges), ctx(), false).unwrap()).await;
    for t in [&whole, &staged] {
        let d = t.logits.iter().zip(&reference.logits).map(|(x, y)| common::max_abs_diff(x, y)).fold(0f32, f32::max);
        assert!(d <= TOL, "max|dlogit| = {d}");
        assert_eq!(t.greedy, reference.greedy);
        assert_eq!(t.sampled, reference.sampled);
    }
}
