//! Self-healing with three `exo serve` processes: a forced 3-stage placement streams 200 greedy
//! tokens while a stage node is killed (-9), stopped (SIGSTOP) or asked to leave (SIGTERM); the
//! stream pauses, the runtime re-places the model over the nodes left, replays the tokens so far
//! and completes with exactly the text of an uninterrupted run. A killed coordinator's stages
//! are unloaded by their nodes. An idle instance moves to a clearly faster node that joins.

use crate::common;

use common::procs::Procs;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOKENS: u32 = 200;
const LONG: u32 = 1500;
const PROMPT: &str = "The story of the three machines that shared one model began on a rainy morning, when";

fn three() -> Value {
    json!([{ "node": "a", "begin": 0, "end": 3 }, { "node": "b", "begin": 3, "end": 6 }, { "node": "c", "begin": 6, "end": 8 }])
}

async fn three_nodes() -> Procs {
    Procs::start(&[("a", &[]), ("b", &[]), ("c", &[])]).await
}

/// Streams `PROMPT` with `placement`, doing `disrupt` at about token 50; returns the text and
/// the longest pause.
async fn disrupted(c: &mut Procs, placement: Value, disrupt: impl FnOnce(&mut Procs)) -> (String, Duration) {
    disrupted_long(c, placement, TOKENS, disrupt).await
}

async fn disrupted_long(
    c: &mut Procs,
    placement: Value,
    tokens: u32,
    disrupt: impl FnOnce(&mut Procs),
) -> (String, Duration) {
    c.place(placement).await;
    let client = c.client();
    let mut disrupt = Some(disrupt);
    let s = client
        .stream(PROMPT, tokens, |n| {
            if n == 50 {
                (disrupt.take().unwrap())(c)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    (s.text, s.longest_pause)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hung_and_leaving_stage_nodes_never_lose_the_stream() {
    let mut c = three_nodes().await;
    let (want, _) = disrupted(&mut c, three(), |_| {}).await;
    assert!(want.len() > 100, "{want}");
    // a departing node answers until its stages have moved: a longer stream, so that the move
    // happens in the middle of it
    let (want_long, _) = disrupted_long(&mut c, three(), LONG, |_| {}).await;

    // kill -9 the middle stage at about token 50: same text
    let (got, pause) = disrupted(&mut c, three(), |c| c.node("b").kill()).await;
    assert_eq!(got, want, "middle stage killed");
    eprintln!("middle stage killed: longest pause {pause:?}");
    c.restart("b");
    c.wait_nodes(&["a", "b", "c"]).await;

    // the last stage
    let (got, _) = disrupted(&mut c, three(), |c| c.node("c").kill()).await;
    assert_eq!(got, want, "last stage killed");
    c.restart("c");
    c.wait_nodes(&["a", "b", "c"]).await;

    // a node that hosts two stages (the first and the last)
    let two = json!([{ "node": "b", "begin": 0, "end": 3 }, { "node": "c", "begin": 3, "end": 5 }, { "node": "b", "begin": 5, "end": 8 }]);
    let (got, _) = disrupted(&mut c, two, |c| c.node("b").kill()).await;
    assert_eq!(got, want, "node with two stages killed");
    c.restart("b");
    c.wait_nodes(&["a", "b", "c"]).await;

    // SIGSTOP: the node hangs; failover within 5 s
    let (got, pause) = disrupted(&mut c, three(), |c| c.node("c").signal("STOP")).await;
    assert_eq!(got, want, "stage node stopped");
    eprintln!("stage node stopped: longest pause {pause:?}");
    assert!(pause < Duration::from_secs(5), "failover took {pause:?}");
    let old = c.node_id("c").await;
    c.restart("c");
    // the stopped process's entry may still be listed for a moment: wait for the new one
    c.wait_rejoined("c", old.as_deref()).await;
    c.wait_nodes(&["a", "b", "c"]).await;

    // SIGTERM: the node leaves in order; the pause is no longer than a reload
    let (got, pause) = disrupted_long(&mut c, three(), LONG, |c| c.node("b").signal("TERM")).await;
    assert_eq!(got, want_long, "stage node left");
    eprintln!("stage node left: longest pause {pause:?}");
    assert!(pause < Duration::from_secs(3), "the departure paused the stream for {pause:?}");
    assert!(c.node("b").wait_exit(Duration::from_secs(10)), "b did not hand its stage back and leave within 10 s");

    // the instance says what happened
    let v = c.get(&format!("{}/cluster", c.nodes[0].base())).await.unwrap();
    let r = &v["instances"][0]["recoveries"];
    assert!(r.as_array().is_some_and(|r| !r.is_empty()), "{v}");
    let last = r.as_array().unwrap().last().unwrap();
    assert!(last["rebuilt_unix_ms"].as_u64() >= last["detected_unix_ms"].as_u64(), "{r:#}");
    assert!(last["resumed_unix_ms"].as_u64() >= last["rebuilt_unix_ms"].as_u64(), "{r:#}");
    assert_eq!(last["sequences"], 1, "the stream was not moved while it ran: {r:#}");
    assert!(last["replayed_tokens"].as_u64().unwrap() > 50, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_coordinators_stages_are_unloaded() {
    let mut c = three_nodes().await;
    c.place(three()).await;
    assert_eq!((c.hosted(1).await, c.hosted(2).await), (1, 1));
    c.node("a").kill();
    let t = Instant::now();
    while c.hosted(1).await + c.hosted(2).await > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "stages of a dead coordinator stayed loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stages of the first node's (only) instance, as "node=begin:end".
async fn stages(c: &Procs) -> Vec<String> {
    let v = c.get(&format!("{}/cluster", c.nodes[0].base())).await.unwrap();
    let i = &v["instances"][0]["stages"];
    i.as_array().map_or(vec![], |s| {
        s.iter().map(|s| format!("{}={}:{}", s["node"].as_str().unwrap(), s["begin"], s["end"])).collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_moves_to_a_faster_node_that_joins() {
    // a coordinates only (too little memory for the model): the placement search puts it on b
    let mut c = Procs::start(&[("a", &["--memory-limit", "8MiB"]), ("b", &[])]).await;
    let client = c.client();
    let want = client.stream(PROMPT, 40, |_| {}).await.unwrap().text;
    assert_eq!(stages(&c).await, ["b=0:8"]);
    // c decodes ten times as fast (as measured, here given): the idle instance moves there
    c.join("c", &[], &[("EXO_DECODE_GBPS", "100")]);
    c.wait_nodes(&["a", "b", "c"]).await;
    let t = Instant::now();
    while stages(&c).await != ["c=0:8"] {
        assert!(t.elapsed() < Duration::from_secs(15), "still on {:?}\n{}", stages(&c).await, c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("moved {:?} after c joined", t.elapsed());
    assert_eq!(client.stream(PROMPT, 40, |_| {}).await.unwrap().text, want);
    // b no longer hosts anything
    let t = Instant::now();
    while c.hosted(1).await > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "b kept its stage");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Streams `PROMPT` over the real model's 3 stages; at the 40th piece `victim` gets its signal.
async fn real_run(
    c: &mut Procs,
    sampling: &Value,
    tokens: u32,
    victim: Option<(&'static str, &'static str)>,
) -> String {
    let three = json!([{ "node": "a", "begin": 0, "end": 10 }, { "node": "b", "begin": 10, "end": 20 },
        { "node": "c", "begin": 20, "end": 30 }]);
    c.place(three).await;
    let client = c.client().sampling(sampling.clone());
    let mut hit = victim;
    let s = client
        .stream(PROMPT, tokens, |n| {
            if n == 40 {
                match hit.take() {
                    Some((node, "KILL")) => c.node(node).kill(),
                    Some((node, sig)) => c.node(node).signal(sig),
                    None => {}
                }
            }
        })
        .await;
    s.unwrap_or_else(|e| panic!("{e}\n{}", c.logs())).text
}

/// The same faults on the real model (SmolLM2, 30 layers), whose greedy text has the near-ties
/// that only batch-invariant kernels keep: the replay decodes the prompt and every streamed token
/// as one prefill, and the continued stream is byte-identical to an uninterrupted one, greedy
/// and seeded, after kill -9, SIGSTOP and SIGTERM of a stage node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_streams_continue_byte_for_byte_after_stage_faults() {
    let Some(model) = common::real::model() else { return };
    let mut c = Procs::start_serving(&model, common::real::CATALOG_NAME, &[("a", &[]), ("b", &[]), ("c", &[])]).await;
    let seeded = json!({ "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 7 });
    for (label, sampling) in [("greedy", json!({ "temperature": 0 })), ("seeded", seeded)] {
        let want = real_run(&mut c, &sampling, 160, None).await;
        assert!(want.len() > 200, "{label}: {want}");
        let got = real_run(&mut c, &sampling, 160, Some(("b", "KILL"))).await;
        assert_eq!(got, want, "{label}: middle stage killed");
        c.restart("b");
        c.wait_nodes(&["a", "b", "c"]).await;
        if label == "seeded" {
            continue;
        }
        let got = real_run(&mut c, &sampling, 160, Some(("c", "STOP"))).await;
        assert_eq!(got, want, "{label}: last stage stopped");
        let old = c.node_id("c").await;
        c.restart("c");
        c.wait_rejoined("c", old.as_deref()).await;
        c.wait_nodes(&["a", "b", "c"]).await;
        let want_long = real_run(&mut c, &sampling, 400, None).await;
        let got = real_run(&mut c, &sampling, 400, Some(("b", "TERM"))).await;
        assert_eq!(got, want_long, "{label}: stage node left");
        assert!(c.node("b").wait_exit(Duration::from_secs(10)), "b did not leave within 10 s of SIGTERM");
        c.restart("b");
        c.wait_nodes(&["a", "b", "c"]).await;
    }
}
