//! The runtime on its own (no HTTP): continuous batching gives every request the text it gets
//! alone (on the real model too: batch-invariant kernels, greedy and seeded, cold and warm prompt
//! cache, idle and loaded), cancelled sequences are freed at once, concurrent first requests
//! share one load.

use crate::common;

use exo::engine::SamplingParams;
use exo::runtime::{Event, GenRequest, Input, Limits, ModelRef, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A runtime over `tiny-llama-calm`, served as "tiny-llama".
fn runtime(parallel: u32) -> (Arc<Runtime>, tempfile::TempDir) {
    runtime_serving(&common::model("tiny-llama-calm"), "tiny-llama", parallel)
}

/// The real model runs with batch-invariant kernels (what its text comparisons need).
fn runtime_serving(model: &std::path::Path, name: &str, parallel: u32) -> (Arc<Runtime>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    std::fs::hard_link(model, d.path().join(format!("{name}.gguf"))).unwrap();
    let exact = name != "tiny-llama";
    let limits = Limits { parallel, queue: 16, default_ctx: 256, threads: 2, exact, ..Limits::default() };
    (Runtime::new(common::offline_store(d.path()), limits, None), d)
}

fn req(prompt: &str, max: u64, sampling: SamplingParams) -> GenRequest {
    req_for("tiny-llama", prompt, max, sampling)
}

fn req_for(model: &str, prompt: &str, max: u64, sampling: SamplingParams) -> GenRequest {
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
            Event::Thinking(t) => panic!("reasoning from a model that has none: {t}"),
            Event::Done { stats, .. } => {
                assert!(stats.completion_tokens > 0);
                return out;
            }
            Event::Failed(e) => panic!("{e}"),
        }
    }
    panic!("no end")
}

use common::{BATCH_PROMPTS as PROMPTS, BATCH_STEPS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_greedy_requests_give_the_text_each_gives_alone() {
    let (rt, _d) = runtime(8);
    let n = BATCH_STEPS as u64;
    let mut alone = Vec::new();
    for p in PROMPTS {
        alone.push(text(&rt, req(p, n, SamplingParams::greedy())).await);
    }
    // all at once: one batch per decode step, prompts prefilled alongside
    let tasks: Vec<_> = PROMPTS
        .iter()
        .map(|p| {
            let rt = rt.clone();
            let r = req(p, n, SamplingParams::greedy());
            tokio::spawn(async move { text(&rt, r).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), alone[i], "request {i} ({:?})", PROMPTS[i]);
    }
    assert_eq!(rt.loads_started(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_frees_its_sequence_while_the_others_go_on() {
    let (rt, _d) = runtime(2);
    let want = text(&rt, req(PROMPTS[0], 24, SamplingParams::greedy())).await;
    let mut long = rt.generate(req(PROMPTS[1], 200, SamplingParams::greedy())).await.unwrap();
    let keep = {
        let rt = rt.clone();
        tokio::spawn(async move { text(&rt, req(PROMPTS[0], 24, SamplingParams::greedy())).await })
    };
    // read a little of the long one, then leave
    let mut got = 0;
    while got < 3 {
        if let Some(Event::Text(_)) = long.events.recv().await {
            got += 1;
        }
    }
    drop(long);
    let inst = rt.instances().pop().unwrap();
    let t = Instant::now();
    // one sequence left: the cancelled one is gone long before its 200 tokens
    while inst.active() > 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "the cancelled sequence was not freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(keep.await.unwrap(), want, "the other request was disturbed");
    // and its slot serves the next request
    assert_eq!(text(&rt, req(PROMPTS[0], 24, SamplingParams::greedy())).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_first_requests_share_one_load() {
    let (rt, _d) = runtime(4);
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { text(&rt, req(PROMPTS[i], 4, SamplingParams::greedy())).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(rt.loads_started(), 1);
    assert_eq!(rt.instances().len(), 1);
}

/// The real model (near-ties in its greedy text): every request's text equals its solo text
/// whatever else runs beside it, and the same request sent again (its prefix now cached) gives
/// the same text; greedy and seeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_texts_do_not_depend_on_concurrency_or_the_prompt_cache() {
    let Some(model) = common::real::model() else { return };
    let name = common::real::CATALOG_NAME;
    let (rt, _d) = runtime_serving(&model, name, 8);
    let n = 40;
    let sampling = |i: usize| {
        if i % 2 == 0 {
            SamplingParams::greedy()
        } else {
            SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, seed: 11 + i as u32, ..SamplingParams::greedy() }
        }
    };
    // alone, each on a cold cache (a prompt shares no prefix with the one before)
    let mut alone = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        alone.push(text(&rt, req_for(name, p, n, sampling(i))).await);
    }
    // the same request again: its whole prompt is in the cache now
    for (i, p) in PROMPTS.iter().enumerate().take(3) {
        assert_eq!(text(&rt, req_for(name, p, n, sampling(i))).await, alone[i], "request {i} with a warm cache");
    }
    // all eight at once, then four clients sending three each: the texts never change
    let all: Vec<_> = (0..PROMPTS.len())
        .map(|i| {
            let (rt, r) = (rt.clone(), req_for(name, PROMPTS[i], n, sampling(i)));
            tokio::spawn(async move { (i, text(&rt, r).await) })
        })
        .collect();
    for t in all {
        let (i, got) = t.await.unwrap();
        assert_eq!(got, alone[i], "request {i} of 8 concurrent ({:?})", PROMPTS[i]);
    }
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for k in 0..3 {
                    let i = (c * 3 + k) % PROMPTS.len();
                    out.push((i, text(&rt, req_for(name, PROMPTS[i], n, sampling(i))).await));
                }
                out
            })
        })
        .collect();
    for c in clients {
        for (i, got) in c.await.unwrap() {
            assert_eq!(got, alone[i], "request {i} under load");
        }
    }
}
