//! Batch-invariant execution (`ContextParams::exact`): the logits computed for a token are
//! bit-identical (max |Δlogit| = 0) whether it is decoded alone, beside 1, 2 or 7 other sequences,
//! as part of a prefill chunk of 1, 7, 64 or 512 tokens, or in a replay of its prefix after the
//! KV was dropped; on every generated architecture and on the real SmolLM2 (as shipped, Q4_1,
//! and derived in Q8_0, Q4_0, Q4_K_M and F16), whole and in 2 stages. A negative control shows the comparison has teeth: llama.cpp's default kernels
//! (`exact: false`) do change the real model's logits with the batch shape.

use crate::common;

use exo::engine::{ContextParams, LayerRange, Token};
use exo::pipeline::Chain;
use exo::synth::TEST_PRESETS;
use std::path::Path;

/// Prompt length of the chunking check: one 512-token chunk and a remainder.
const LONG: usize = 530;
const CHUNKS: &[usize] = &[1, 7, 64, 512];

fn ctx(n_seq: u32, exact: bool) -> ContextParams {
    ContextParams { n_ctx: 1024 * n_seq, n_batch: 512, n_ubatch: 512, n_threads: 2, n_seq_max: n_seq, exact }
}

fn load(path: &Path, n_seq: u32, exact: bool, split: Option<u32>) -> Chain {
    let n_layer = {
        let whole = Chain::load(path, None, ctx(1, exact), true).unwrap();
        whole.info().n_layer
    };
    let ranges = split.map(|at| vec![LayerRange { begin: 0, end: at }, LayerRange { begin: at, end: n_layer }]);
    Chain::load(path, ranges.as_deref(), ctx(n_seq, exact), true).unwrap()
}

/// `n` token ids spread over the vocabulary (seeded), after the model's BOS.
fn tokens(chain: &Chain, n: usize, seed: u64) -> Vec<Token> {
    let info = chain.info();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out: Vec<Token> = info.bos.into_iter().collect();
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // ids from the lower part of the vocabulary: ordinary text tokens in a real BPE
        out.push((x % (info.n_vocab as u64).min(20_000)) as Token);
    }
    out
}

/// Logits of every position of `toks` in sequence `seq`, decoded in chunks of `chunk` tokens.
async fn chunked(chain: &Chain, seq: i32, toks: &[Token], chunk: usize) -> Vec<Vec<f32>> {
    chain.remove_seq(seq).await.unwrap();
    let mut out = Vec::with_capacity(toks.len());
    for (c, part) in toks.chunks(chunk).enumerate() {
        let p0 = (c * chunk) as i32;
        let pos = (p0..p0 + part.len() as i32).collect();
        let (logits, _) =
            chain.decode(part.to_vec(), pos, vec![seq; part.len()], vec![true; part.len()], true, false).await.unwrap();
        out.extend(logits);
    }
    out
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "rows compared");
    a.iter().zip(b).map(|(x, y)| common::max_abs_diff(x, y)).fold(0f32, f32::max)
}

fn greedy(rows: &[Vec<f32>]) -> Vec<usize> {
    rows.iter()
        .map(|r| r.iter().enumerate().fold((0, f32::MIN), |m, (i, &v)| if v > m.1 { (i, v) } else { m }).0)
        .collect()
}

/// Prefill chunk sizes and a replayed prefix against one-token-at-a-time decoding.
async fn check_chunks(name: &str, chain: &Chain) {
    let toks = tokens(chain, LONG, 7);
    let solo = chunked(chain, 0, &toks, 1).await;
    for &chunk in &CHUNKS[1..] {
        let got = chunked(chain, 0, &toks, chunk).await;
        let d = max_diff(&got, &solo);
        println!("{name}: prefill chunks of {chunk}: max|dlogit| = {d:e} over {} tokens", toks.len());
        assert_eq!(d, 0.0, "{name}: prefill in chunks of {chunk} changed the logits (max|dlogit| {d})");
    }
    // a replay: keep the first 100 positions, drop the rest, decode them again as one batch
    chain.seq_rm(0, 100, -1).await.unwrap();
    let rest = &toks[100..300];
    let pos = (100..300).collect();
    let (logits, _) =
        chain.decode(rest.to_vec(), pos, vec![0; rest.len()], vec![true; rest.len()], true, false).await.unwrap();
    let d = max_diff(&logits, &solo[100..300]);
    println!("{name}: replayed positions 100..300: max|dlogit| = {d:e}");
    assert_eq!(d, 0.0, "{name}: a replayed suffix changed the logits");
}

/// `n` sequences (prompts of different lengths, prefilled together in one batch, then decoded
/// one token each per step) against each sequence decoded alone in a context of its own.
async fn check_concurrent(name: &str, path: &Path, reference: &Chain, n: u32, split: Option<u32>) {
    let chain = load(path, n, true, split);
    let steps = 12;
    let seqs: Vec<Vec<Token>> = (0..n as usize).map(|s| tokens(reference, 9 + 5 * s + steps, 100 + s as u64)).collect();
    let mut alone = Vec::new();
    for s in &seqs {
        alone.push(chunked(reference, 0, s, 1).await);
    }
    // the prompts: everything but the last `steps` tokens, all sequences in one batch
    let (mut t, mut p, mut q) = (vec![], vec![], vec![]);
    for (i, s) in seqs.iter().enumerate() {
        for (k, &tok) in s[..s.len() - steps].iter().enumerate() {
            t.push(tok);
            p.push(k as i32);
            q.push(i as i32);
        }
    }
    let rows = t.len();
    let (logits, _) = chain.decode(t, p, q.clone(), vec![true; rows], true, false).await.unwrap();
    let mut got: Vec<Vec<Vec<f32>>> = vec![vec![]; n as usize];
    for (row, &i) in logits.into_iter().zip(&q) {
        got[i as usize].push(row);
    }
    // then one token per sequence per step; every third step leaves sequence 1 out, so the
    // batch's sequence ids have a gap
    let mut next: Vec<usize> = seqs.iter().map(|s| s.len() - steps).collect();
    for step in 0..steps * 2 {
        let (mut t, mut p, mut q) = (vec![], vec![], vec![]);
        for (i, s) in seqs.iter().enumerate() {
            if next[i] == s.len() || (i == 1 && step % 3 == 2) {
                continue;
            }
            t.push(s[next[i]]);
            p.push(next[i] as i32);
            q.push(i as i32);
            next[i] += 1;
        }
        if t.is_empty() {
            continue;
        }
        let rows = t.len();
        let (logits, _) = chain.decode(t, p, q.clone(), vec![true; rows], true, false).await.unwrap();
        for (row, &i) in logits.into_iter().zip(&q) {
            got[i as usize].push(row);
        }
    }
    let mut worst = 0f32;
    for (i, (g, a)) in got.iter().zip(&alone).enumerate() {
        let d = max_diff(g, a);
        assert_eq!(d, 0.0, "{name}: sequence {i} of {n} concurrent differs from alone (max|dlogit| {d})");
        assert_eq!(greedy(g), greedy(a));
        worst = worst.max(d);
    }
    println!("{name}: {n} concurrent sequences (split {split:?}): max|dlogit| = {worst:e}");
}

async fn check_model(name: &str, path: &Path, split: u32) {
    let reference = load(path, 1, true, None);
    let scale =
        chunked(&reference, 0, &tokens(&reference, 8, 1), 1).await.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 0.1, "{name}: logits are nearly zero ({scale}); the comparison would be meaningless");
    check_chunks(name, &reference).await;
    for n in [1, 2, 3, 8] {
        check_concurrent(name, path, &reference, n, None).await;
    }
    check_concurrent(name, path, &reference, 3, Some(split)).await;
    // 2 stages, in prefill chunks: the hidden state handed over is the same bits too
    let staged = load(path, 1, true, Some(split));
    let toks = tokens(&reference, 80, 3);
    let d = max_diff(&chunked(&staged, 0, &toks, 7).await, &chunked(&reference, 0, &toks, 1).await);
    assert_eq!(d, 0.0, "{name}: 2 stages in chunks of 7 differ from the whole model token by token");
}

#[tokio::test]
async fn generated_architectures_are_batch_invariant() {
    for preset in TEST_PRESETS {
        check_model(preset, &common::model(preset), 3).await;
    }
}

#[tokio::test]
async fn real_model_is_batch_invariant() {
    let Some(path) = common::real::model() else { return };
    check_model("smollm2-135m", &path, 13).await;
}

/// A real model with sliding-window attention (Gemma 3 270M: 5 of every 6 layers attend to the
/// last 512 positions; Q4_K_M; 262,144-token vocabulary): the 530-token prompt crosses the
/// window, whose cells a ring-buffer cache would reuse out of order (exact mode keeps them all).
#[tokio::test]
async fn sliding_window_real_model_is_batch_invariant() {
    let Some(path) = common::real::swa_model() else { return };
    let name = "gemma-3-270m";
    let reference = load(&path, 1, true, None);
    check_chunks(name, &reference).await;
    check_concurrent(name, &path, &reference, 3, None).await;
    check_concurrent(name, &path, &reference, 2, Some(9)).await;
}

/// Every weight type the cost table measures (bench/results/exact.md), derived from the real
/// model: Q8_0, Q4_0 and F16 go through llamafile's sgemm for any batch size in exact mode,
/// Q4_K_M through the reference vec_dot.
#[tokio::test]
async fn real_model_weight_types_are_batch_invariant() {
    for t in ["q8_0", "q4_0", "q4_k_m", "f16"] {
        let Some(path) = common::real::variant(t) else { return };
        let name = format!("smollm2-135m {t}");
        let reference = load(&path, 1, true, None);
        check_chunks(&name, &reference).await;
        check_concurrent(&name, &path, &reference, 3, None).await;
    }
}

/// The negative control: llama.cpp's default kernels pick other reduction orders by batch shape,
/// so the same real-model tokens prefilled in chunks of 64 do not give the token-by-token logits.
#[tokio::test]
async fn default_kernels_depend_on_the_batch_shape() {
    let Some(path) = common::real::model() else { return };
    let chain = load(&path, 1, false, None);
    let toks = tokens(&chain, LONG, 7);
    let solo = chunked(&chain, 0, &toks, 1).await;
    let batched = chunked(&chain, 0, &toks, 64).await;
    let d = max_diff(&batched, &solo);
    println!("default kernels, chunks of 64 vs 1: max|dlogit| = {d:e}");
    assert!(d > 0.0, "the default kernels gave identical logits: this test no longer shows anything");
}
