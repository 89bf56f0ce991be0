//! A model split into 2, 3 and 4 in-process stages must behave exactly like the whole model:
//! multi-sequence prefill over several ubatches, decode steps, tail removal and re-decode,
//! sequence removal, clear and re-prefill, then 64 generated tokens (greedy and seeded sampling).

use crate::common;

use common::workload::{self, Trace};
use exo::engine::{ContextParams, LayerRange};
use exo::pipeline::Chain;
use exo::synth::TEST_PRESETS;

const TOL: f32 = 1e-5;
const GEN: u32 = 64;

const SPLITS: &[&[(u32, u32)]] = &[&[(0, 4), (4, 8)], &[(0, 1), (1, 5), (5, 8)], &[(0, 2), (2, 4), (4, 7), (7, 8)]];

fn ctx() -> ContextParams {
    // n_ubatch 8 splits every prefill into several micro-batches
    ContextParams { n_ctx: 512, n_batch: 64, n_ubatch: 8, n_threads: 2, n_seq_max: 2, exact: false }
}

async fn trace(chain: &Chain) -> Trace {
    workload::run(chain, GEN).await
}

async fn check_preset(preset: &str) {
    let path = common::model(preset);
    let full = Chain::load(&path, None, ctx(), true).unwrap();
    let reference = trace(&full).await;
    let scale = reference.scale();
    assert!(scale > 0.1, "{preset}: logits are nearly zero ({scale}); the comparison would be meaningless");
    let distinct: std::collections::HashSet<_> = reference.sampled.iter().collect();
    assert!(distinct.len() > 4, "{preset}: sampling produced too few distinct tokens");

    for split in SPLITS {
        let ranges: Vec<LayerRange> = split.iter().map(|&(begin, end)| LayerRange { begin, end }).collect();
        let chain = Chain::load(&path, Some(&ranges), ctx(), true).unwrap();
        let t = trace(&chain).await;
        let d = t.max_abs_diff(&reference);
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
            let b = Batch {
                input: BatchInput::Tokens(toks),
                pos: pos.clone(),
                seq: vec![0; n],
                output: vec![true; n],
                spec: Default::default(),
            };
            let DecodeOutput::Hidden(mut h) = st[0].decode(b, false, false).await.unwrap() else {
                panic!("expected hidden")
            };
            h[0] += delta;
            let b = Batch {
                input: BatchInput::Hidden(h),
                pos,
                seq: vec![0; n],
                output: vec![true; n],
                spec: Default::default(),
            };
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
    let reference = trace(&Chain::load(&single, None, ctx(), true).unwrap()).await;
    let whole = trace(&Chain::load(&paths[0], None, ctx(), true).unwrap()).await;
    let ranges = [LayerRange { begin: 0, end: 3 }, LayerRange { begin: 3, end: 8 }];
    let staged = trace(&Chain::load(&paths[0], Some(&ranges), ctx(), false).unwrap()).await;
    for t in [&whole, &staged] {
        let d = t.max_abs_diff(&reference);
        assert!(d <= TOL, "max|dlogit| = {d}");
        assert_eq!(t.greedy, reference.greedy);
        assert_eq!(t.sampled, reference.sampled);
    }
}
