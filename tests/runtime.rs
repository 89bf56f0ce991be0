//! The runtime on its own (no HTTP): continuous batching gives every request the text it gets
//! alone, cancelled sequences are freed at once, concurrent first requests share one load.

mod common;

use exo::engine::SamplingParams;
use exo::runtime::{Event, GenRequest, Input, Limits, ModelRef, Runtime};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A runtime over `tiny-llama-calm` (see tests/batching.rs), served as "tiny-llama".
fn runtime(parallel: u32) -> (Arc<Runtime>, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama-calm"), d.path().join("tiny-llama.gguf")).unwrap();
    let limits = Limits { parallel, queue: 16, default_ctx: 256, threads: 2, ..Limits::default() };
    (Runtime::new(common::offline_store(d.path()), limits, None), d)
}

fn req(prompt: &str, max: u64, sampling: SamplingParams) -> GenRequest {
    let mut r = GenRequest::new(ModelRef::Name("tiny-llama".into()), Input::Raw(prompt.into()), sampling);
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
