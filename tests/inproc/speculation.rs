//! Speculative decoding (`--draft ngram`): the text of every request is the text it gets without
//! speculation (greedy and seeded, alone and 8 at once, whole and in 2 stages; on the real model
//! where it is cached), a rejected window leaves every stage's KV as if it had never been sent
//! (the next logits are bit-identical), and temperature sampling keeps its distribution
//! (chi-square over 2,000+ seeded draws of a small-vocabulary model).

use crate::common;

use exo::engine::{ContextParams, LayerRange, SamplingParams, Speculation, Token, NO_DRAFT, UNSAMPLED};
use exo::pipeline::{Chain, TokenChunk};
use exo::runtime::speculate::{Proposer, SpecConfig};
use exo::runtime::{Event, Forced, GenRequest, Input, Limits, ModelRef, Runtime};
use std::sync::Arc;

/// Text that repeats itself, so that n-gram proposals are taken often, and text that does not.
const PROMPTS: &[&str] = &[
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef add(",
    "one two three four five, one two three four five, one two three",
    "The cat sat on the mat. The cat sat on the mat. The cat",
    "- apples\n- pears\n- plums\n- apples\n- pears\n-",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 2 + 2?\nA: 4\nQ: What is 3 + 3?\nA: 6\nQ: What is 4 + 4?\nA:",
    "red green blue red green blue red green",
    "To be or not to be, that is the question. To be or not",
];
const STEPS: u64 = 40;

/// The real model where it is cached (exact kernels), else a generated one.
fn model() -> (std::path::PathBuf, &'static str) {
    match common::real::model() {
        Some(p) => (p, "smollm2"),
        None => (common::model("tiny-llama-calm"), "tiny"),
    }
}

fn runtime(path: &std::path::Path, name: &str, draft: Proposer) -> (Arc<Runtime>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    std::fs::hard_link(path, d.path().join(format!("{name}.gguf"))).unwrap();
    let limits = Limits {
        parallel: 8,
        queue: 16,
        default_ctx: 256,
        threads: 2,
        exact: true,
        draft: Some(draft),
        // 8 sequences at once still speculate, so the concurrent case is tested too
        spec_tuning: Some(SpecConfig { proposer: draft, max_window: 6, max_sequences: 8 }),
        ..Limits::default()
    };
    (Runtime::new(common::offline_store(d.path()), limits, None), d)
}

fn req(model: &str, prompt: &str, max: u64, sampling: SamplingParams) -> GenRequest {
    let mut r = GenRequest::new(ModelRef::Name(model.into()), Input::Raw(prompt.into()), sampling);
    r.max_tokens = Some(max);
    r.ignore_eos = true;
    r
}

async fn text(rt: &Arc<Runtime>, r: GenRequest) -> String {
    let mut g = rt.generate(r).await.unwrap();
    let mut out = String::new();
    while let Some(ev) = g.events.recv().await {
        match ev {
            Event::Text(t) => out.push_str(&t),
            Event::Thinking(t) => out.push_str(&t),
            Event::Done { .. } => return out,
            Event::Failed(e) => panic!("{e}"),
        }
    }
    panic!("no end")
}

async fn one_by_one(rt: &Arc<Runtime>, model: &str, sampling: &SamplingParams) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        let s = SamplingParams { seed: sampling.seed + i as u32, ..sampling.clone() };
        out.push(text(rt, req(model, p, STEPS, s)).await);
    }
    out
}

async fn all_at_once(rt: &Arc<Runtime>, model: &str, sampling: &SamplingParams) -> Vec<String> {
    let tasks: Vec<_> = PROMPTS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (rt, s) = (rt.clone(), SamplingParams { seed: sampling.seed + i as u32, ..sampling.clone() });
            let r = req(model, p, STEPS, s);
            tokio::spawn(async move { text(&rt, r).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn seeded() -> SamplingParams {
    SamplingParams { temperature: 0.7, top_k: 40, top_p: 0.95, seed: 7, ..SamplingParams::greedy() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_leaves_greedy_and_seeded_text_unchanged_alone_and_eight_at_once() {
    let (path, name) = model();
    let (plain, _a) = runtime(&path, name, Proposer::None);
    let (spec, _b) = runtime(&path, name, Proposer::Ngram);
    for sampling in [SamplingParams::greedy(), seeded()] {
        let want = one_by_one(&plain, name, &sampling).await;
        assert_eq!(one_by_one(&spec, name, &sampling).await, want, "alone, {sampling:?}");
        assert_eq!(all_at_once(&spec, name, &sampling).await, want, "8 at once, {sampling:?}");
    }
    let v = spec.instances()[0].speculation();
    assert_eq!(v.draft, "ngram");
    assert!(v.stats.accepted > 20, "speculation hardly ran: {v:?}");
    assert!(v.tokens_per_verify.unwrap() > 1.0, "{v:?}");
    assert_eq!(plain.instances()[0].speculation().stats.windows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_over_two_stages_leaves_the_text_unchanged() {
    let (path, name) = model();
    let (plain, _a) = runtime(&path, name, Proposer::None);
    let (spec, _b) = runtime(&path, name, Proposer::Ngram);
    let n_layer =
        Chain::load(&path, None, ContextParams { n_ctx: 64, ..Default::default() }, true).unwrap().info().n_layer;
    let split = vec![LayerRange { begin: 0, end: n_layer / 2 }, LayerRange { begin: n_layer / 2, end: n_layer }];
    for rt in [&plain, &spec] {
        let inst = rt.place(&ModelRef::Name(name.into()), Forced::Local(split.clone()), Some(256), None).await.unwrap();
        assert_eq!(inst.pipe().n_stages(), 2);
    }
    let greedy = SamplingParams::greedy();
    let want = one_by_one(&plain, name, &greedy).await;
    assert_eq!(one_by_one(&spec, name, &greedy).await, want);
    assert_eq!(all_at_once(&spec, name, &greedy).await, want);
    assert_eq!(spec.instances()[0].pipe().n_stages(), 2, "the placed instance served the requests");
    assert!(spec.instances()[0].speculation().stats.accepted > 0);
}

// ---- a rejected window, at the level of the stages --------------------------------------------

fn exact_ctx() -> ContextParams {
    ContextParams { n_ctx: 512, n_batch: 64, n_ubatch: 64, n_threads: 2, n_seq_max: 1, exact: true }
}

fn chunk(tokens: &[Token], p0: usize, draft: Vec<Token>, trim: Vec<(i32, i32)>) -> TokenChunk {
    let n = tokens.len();
    TokenChunk {
        tokens: tokens.to_vec(),
        pos: (p0..p0 + n).map(|p| p as i32).collect(),
        seq: vec![0; n],
        output: vec![true; n],
        spec: Speculation { draft, trim },
    }
}

/// Logits of every row of `tokens` decoded plainly after `prefix` (a fresh sequence).
async fn reference(chain: &Chain, prefix: &[Token], tokens: &[Token]) -> Vec<Vec<f32>> {
    chain.remove_seq(0).await.unwrap();
    chain.decode_chunk(chunk(prefix, 0, vec![], vec![]), false, false).await.unwrap();
    chain.decode_chunk(chunk(tokens, prefix.len(), vec![], vec![]), true, false).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_window_leaves_every_stage_as_if_it_was_never_sent() {
    let (path, _) = model();
    let whole = Chain::load(&path, None, exact_ctx(), true).unwrap();
    let n_layer = whole.info().n_layer;
    let at = n_layer / 2;
    let ranges = [LayerRange { begin: 0, end: at }, LayerRange { begin: at, end: n_layer }];
    let split = Chain::load(&path, Some(&ranges), exact_ctx(), true).unwrap();
    let vocab = whole.info().n_vocab as Token;
    let prefix: Vec<Token> = (0..24).map(|i| (i * 37 + 11) % vocab.min(5000)).collect();
    let t = prefix[5];
    // what greedy decoding gives after the prefix and t, token by token
    let greedy = |rows: &[Vec<f32>]| -> Token {
        let last = rows.last().unwrap();
        (0..last.len()).max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a))).unwrap() as Token
    };
    let g1 = greedy(&reference(&whole, &prefix, &[t]).await);
    let g2 = greedy(&reference(&whole, &prefix, &[t, g1]).await);
    let wrong = |g: Token| (g + 1) % vocab;
    for chain in [&whole, &split] {
        for (drafts, accepted) in [(vec![wrong(g1), 3, 4], 0), (vec![g1, wrong(g2), 5], 1)] {
            chain.remove_seq(0).await.unwrap();
            chain.last().set_sampler(0, SamplingParams::greedy(), vec![]).await.unwrap();
            chain.decode_chunk(chunk(&prefix, 0, vec![], vec![]), false, false).await.unwrap();
            let mut rows = vec![t];
            rows.extend(&drafts);
            let mut draft = drafts.clone();
            draft.push(NO_DRAFT);
            let (_, got) = chain.decode_chunk(chunk(&rows, prefix.len(), draft, vec![]), false, true).await.unwrap();
            // the rows after the first miss are not sampled
            let want: Vec<Token> = [g1, g2].iter().take(accepted + 1).copied().collect();
            assert_eq!(&got[..=accepted], &want[..]);
            assert!(got[accepted + 1..].iter().all(|&x| x == UNSAMPLED), "{got:?}");
            // the next batch drops the rejected positions first: its logits are those of the
            // plain sequence, bit for bit
            let keep = prefix.len() + 1 + accepted;
            let next = *got.get(accepted).unwrap();
            let (after, _) =
                chain.decode_chunk(chunk(&[next], keep, vec![], vec![(0, keep as i32)]), true, false).await.unwrap();
            for s in chain.stages() {
                assert_eq!(s.seq_pos_max(0).await.unwrap() as usize, keep, "no position past the window's end");
            }
            let mut plain: Vec<Token> = vec![t];
            plain.extend(&want[..accepted]);
            plain.push(next);
            let reference = reference(&whole, &prefix, &plain).await;
            assert_eq!(common::max_abs_diff(&after[0], reference.last().unwrap()), 0.0, "accepted {accepted}");
        }
    }
}

// ---- the distribution of sampled tokens -------------------------------------------------------

/// p-value of a chi-square statistic with `k` degrees of freedom (Wilson-Hilferty).
fn chi_square_p(x: f64, k: f64) -> f64 {
    let z = ((x / k).powf(1.0 / 3.0) - (1.0 - 2.0 / (9.0 * k))) / (2.0 / (9.0 * k)).sqrt();
    // 1 - Phi(z) by erfc (Abramowitz-Stegun 7.1.26)
    let t = 1.0 / (1.0 + 0.3275911 * z.abs() / 2f64.sqrt());
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    let erfc = poly * (-(z * z) / 2.0).exp();
    if z >= 0.0 {
        erfc / 2.0
    } else {
        1.0 - erfc / 2.0
    }
}

/// The last byte of the text of each of `seeds` requests: one independent draw per request
/// (tokens within one text are not independent of each other).
async fn draws(rt: &Arc<Runtime>, seeds: std::ops::Range<u32>) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in seeds.collect::<Vec<_>>().chunks(8) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&seed| {
                let rt = rt.clone();
                let s = SamplingParams { temperature: 1.0, seed, ..SamplingParams::greedy() };
                let r = req("tiny", "a b a b a b a b", 12, s);
                tokio::spawn(async move { text(&rt, r).await })
            })
            .collect();
        for t in tasks {
            out.push(*t.await.unwrap().as_bytes().last().expect("some text"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temperature_sampling_keeps_its_distribution_under_speculation() {
    let path = common::model("tiny-llama-peaked");
    let (plain, _a) = runtime(&path, "tiny", Proposer::None);
    let (spec, _b) = runtime(&path, "tiny", Proposer::Ngram);
    // different seeds on each side: the test is about distributions, not identical streams
    let a = draws(&plain, 0..2000).await;
    let b = draws(&spec, 10_000..12_000).await;
    assert!(a.len() >= 2000 && b.len() >= 2000, "{} and {} draws", a.len(), b.len());
    let v = spec.instances()[0].speculation();
    assert!(v.stats.accepted > 500, "speculation hardly ran: {v:?}");
    // bytes of the text as categories; rare ones pooled so every expected count is >= 5
    let (mut ca, mut cb) = ([0f64; 256], [0f64; 256]);
    a.iter().for_each(|&t| ca[t as usize] += 1.0);
    b.iter().for_each(|&t| cb[t as usize] += 1.0);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut cats, mut pool) = (Vec::new(), (0.0, 0.0));
    for i in 0..256 {
        let tot = ca[i] + cb[i];
        if tot == 0.0 {
            continue;
        }
        if tot * na.min(nb) / (na + nb) >= 5.0 {
            cats.push((ca[i], cb[i]));
        } else {
            pool = (pool.0 + ca[i], pool.1 + cb[i]);
        }
    }
    if pool.0 + pool.1 > 0.0 {
        cats.push(pool);
    }
    let x: f64 = cats
        .iter()
        .map(|&(oa, ob)| {
            let tot = oa + ob;
            let (ea, eb) = (tot * na / (na + nb), tot * nb / (na + nb));
            (oa - ea).powi(2) / ea + (ob - eb).powi(2) / eb
        })
        .sum();
    let k = (cats.len() - 1) as f64;
    let p = chi_square_p(x, k);
    eprintln!("chi-square {x:.1} k {k} p {p:.4}");
    assert!(p > 0.01, "chi-square {x:.1} over {k} degrees of freedom: p = {p:.4}");
    // the test has teeth: a biased sampler (one that takes every proposal) is rejected
    assert!(chi_square_p(3.0 * k + 60.0, k) < 0.01);
}

// ---- a draft model ------------------------------------------------------------------------------

/// SmolLM2 in Q4_1 (as shipped) drafting for SmolLM2 in Q8_0 (derived with llama.cpp's quantizer):
/// the text is the Q8_0's own, greedy and seeded, alone and 8 at once; most proposals are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_model_leaves_the_text_unchanged() {
    let (Some(draft), Some(target)) = (common::real::model(), common::real::variant("q8_0")) else {
        return common::skip("the real model is not cached");
    };
    let serve = |proposer: Proposer| {
        let d = tempfile::tempdir().unwrap();
        std::fs::hard_link(&target, d.path().join("target.gguf")).unwrap();
        std::fs::hard_link(&draft, d.path().join("draft.gguf")).unwrap();
        let limits = Limits {
            parallel: 8,
            queue: 16,
            default_ctx: 256,
            threads: 2,
            exact: true,
            draft: Some(proposer),
            draft_model: Some("draft".into()),
            spec_tuning: Some(SpecConfig { proposer, max_window: 6, max_sequences: 8 }),
            ..Limits::default()
        };
        (Runtime::new(common::offline_store(d.path()), limits, None), d)
    };
    let (plain, _a) = serve(Proposer::None);
    let (spec, _b) = serve(Proposer::Model);
    for sampling in [SamplingParams::greedy(), seeded()] {
        let want = one_by_one(&plain, "target", &sampling).await;
        assert_eq!(one_by_one(&spec, "target", &sampling).await, want, "alone, {sampling:?}");
        assert_eq!(all_at_once(&spec, "target", &sampling).await, want, "8 at once, {sampling:?}");
    }
    let v = spec.instances()[0].speculation();
    assert_eq!(v.draft, "draft");
    assert!(v.acceptance.unwrap() > 0.5, "a Q4_1 of the same model mostly agrees: {v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_model_with_another_vocabulary_is_refused_at_load() {
    let Some(real) = common::real::model() else { return common::skip("the real model is not cached") };
    let d = tempfile::tempdir().unwrap();
    std::fs::hard_link(&real, d.path().join("target.gguf")).unwrap();
    std::fs::hard_link(common::model("tiny-llama"), d.path().join("tiny.gguf")).unwrap();
    let limits = Limits {
        default_ctx: 256,
        threads: 2,
        draft: Some(Proposer::Model),
        draft_model: Some("tiny".into()),
        ..Limits::default()
    };
    let rt = Runtime::new(common::offline_store(d.path()), limits, None);
    let mut g = match rt.generate(req("target", "hi", 4, SamplingParams::greedy())).await {
        Err(e) => {
            assert!(e.to_string().contains("vocabulary"), "{e}");
            return;
        }
        Ok(g) => g,
    };
    panic!("loaded with a foreign draft: {:?}", g.events.recv().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draft_model_that_is_not_here_is_named_in_the_error() {
    let d = tempfile::tempdir().unwrap();
    std::fs::hard_link(common::model("tiny-llama"), d.path().join("tiny.gguf")).unwrap();
    let limits = Limits {
        default_ctx: 256,
        threads: 2,
        draft: Some(Proposer::Model),
        draft_model: Some("no-such-model".into()),
        ..Limits::default()
    };
    let rt = Runtime::new(common::offline_store(d.path()), limits, None);
    match rt.generate(req("tiny", "hi", 4, SamplingParams::greedy())).await {
        Err(e) => assert!(e.to_string().contains("no-such-model") && e.to_string().contains("not on this node"), "{e}"),
        Ok(_) => panic!("loaded without its draft model"),
    }
}

// ---- the generation loop (`exo bench --draft ngram`) -------------------------------------------

/// `pipeline::generate` with n-gram windows gives the tokens of one-token steps, whole and in 2
/// stages, and leaves exactly the emitted tokens' positions in the KV (a stop inside a window
/// drops the proposals past it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generation_loop_speculates_with_the_same_tokens() {
    use exo::pipeline::{generate, GenerateRequest};
    let (path, _) = model();
    let ctx = ContextParams { n_ctx: 1024, n_batch: 64, n_ubatch: 64, n_threads: 2, n_seq_max: 1, exact: true };
    let whole = Chain::load(&path, None, ctx, true).unwrap();
    let n_layer = whole.info().n_layer;
    let ranges = [LayerRange { begin: 0, end: n_layer / 2 }, LayerRange { begin: n_layer / 2, end: n_layer }];
    let split = Chain::load(&path, Some(&ranges), ctx, true).unwrap();
    let mut windows = 0;
    for prompt in &PROMPTS[..4] {
        let tokens = whole.vocab().tokenize(prompt, true, false).await.unwrap();
        let run = |chain: &Chain, draft_window: usize, max: u32| {
            let req = GenerateRequest {
                prompt: tokens.clone(),
                past: vec![],
                seq: 0,
                sampling: SamplingParams::greedy(),
                max_tokens: Some(max),
                ignore_eos: true,
                draft_window,
            };
            let chain = chain.clone();
            async move {
                chain.remove_seq(0).await.unwrap();
                let mut out = Vec::new();
                let stats = generate(&chain, req, |t| {
                    out.push(t);
                    std::ops::ControlFlow::Continue(())
                })
                .await
                .unwrap();
                let kv = chain.stages().last().unwrap().seq_pos_max(0).await.unwrap();
                (out, stats, kv)
            }
        };
        let (want, plain, _) = run(&whole, 0, 48).await;
        assert_eq!(plain.windows, 0);
        for chain in [&whole, &split] {
            let (got, stats, kv) = run(chain, 8, 48).await;
            assert_eq!(got, want, "{prompt:?}");
            assert_eq!(stats.n_past, plain.n_past);
            assert_eq!(kv as usize + 1, stats.n_past, "the KV holds exactly the decoded positions");
            windows += stats.windows;
        }
        // a caller that stops early (a stop sequence): the KV still ends at what was decoded
        let stop_at = 5;
        let req = GenerateRequest {
            prompt: tokens.clone(),
            past: vec![],
            seq: 0,
            sampling: SamplingParams::greedy(),
            max_tokens: Some(48),
            ignore_eos: true,
            draft_window: 8,
        };
        whole.remove_seq(0).await.unwrap();
        let mut n = 0;
        let stats = generate(&whole, req, |_| {
            n += 1;
            if n == stop_at {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
        .await
        .unwrap();
        let kv = whole.stages()[0].seq_pos_max(0).await.unwrap();
        assert_eq!(kv as usize + 1, stats.n_past, "{prompt:?}: stopped at {stop_at}");
    }
    assert!(windows > 4, "the prompts repeat themselves: proposals were verified");
}
