//! A bounded chaos run: four clients stream greedy completions through a coordinator (which
//! holds no layers: --memory-limit) while 20 seeded rounds kill -9, SIGSTOP or SIGTERM one of
//! the three stage nodes and start it again. Every request completes with the text of an
//! uninterrupted run (one node is always left, and it can hold the model, so memory never
//! runs out here), and afterwards nothing leaked: the nodes host exactly the stages of the
//! loaded instance, and the coordinator's memory is back near its baseline.

use crate::common;

use common::procs::Procs;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 20;
const CLIENTS: usize = 4;
const TOKENS: u32 = 60;
const SEED: u64 = 0x5eed_c4a0;
const PROMPTS: [&str; 4] = [
    "Once upon a time, in a cluster of three small machines,",
    "The quick brown fox jumps over the lazy dog and then",
    "It was the best of times, it was the worst of times,",
    "Call me Ishmael. Some years ago, never mind how long precisely,",
];
const STAGE_NODES: [&str; 3] = ["b", "c", "d"];

/// xorshift64*: the rounds are the same in every run (the seed is printed with each action).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The three stage nodes in an order that moves with the round.
fn spread(round: usize) -> Value {
    let n = |i: usize| STAGE_NODES[(round + i) % 3];
    json!([{ "node": n(0), "begin": 0, "end": 3 }, { "node": n(1), "begin": 3, "end": 6 }, { "node": n(2), "begin": 6, "end": 8 }])
}

async fn hosted_total(c: &Procs) -> usize {
    let mut total = 0;
    for (i, n) in c.nodes.iter().enumerate() {
        if n.running() {
            total += c.hosted(i).await;
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_rounds_lose_no_request_and_leak_nothing() {
    let mut c = Procs::start(&[("a", &["--memory-limit", "8MiB"]), ("b", &[]), ("c", &[]), ("d", &[])]).await;
    c.place(spread(0)).await;
    let client = c.client();
    let mut want = HashMap::new();
    for p in PROMPTS {
        want.insert(p, client.stream(p, TOKENS, |_| {}).await.unwrap().text);
    }
    let baseline_rss = c.nodes[0].rss_bytes();

    let stop = Arc::new(AtomicBool::new(false));
    let want = Arc::new(want);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (client, stop, want) = (client.clone(), stop.clone(), want.clone());
            tokio::spawn(async move {
                let (mut done, mut failures) = (0usize, Vec::new());
                let mut i = k;
                while !stop.load(Ordering::Relaxed) {
                    let p = PROMPTS[i % PROMPTS.len()];
                    match client.stream(p, TOKENS, |_| {}).await {
                        Ok(s) if s.text == want[p] => done += 1,
                        Ok(s) => failures.push(format!("{p:?}: {:?} instead of {:?}", s.text, want[p])),
                        Err(e) => failures.push(format!("{p:?}: {e}")),
                    }
                    i += 1;
                }
                (done, failures)
            })
        })
        .collect();

    let mut rng = Rng(SEED);
    let t0 = Instant::now();
    for round in 0..ROUNDS {
        // now and then the instance is spread over all three again (recovery re-places it
        // wherever is fastest, which for this model is one node)
        if round % 4 == 3 {
            c.place(spread(round)).await;
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.below(900))).await;
        let victim = STAGE_NODES[rng.below(3) as usize];
        let action = ["KILL", "STOP", "TERM"][rng.below(3) as usize];
        eprintln!("round {round} at {:.1} s: {action} {victim}", t0.elapsed().as_secs_f64());
        match action {
            "KILL" => c.node(victim).kill(),
            sig => c.node(victim).signal(sig),
        }
        let hit = Instant::now();
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1000))).await;
        // a node leaving hands its stages back first: their coordinator re-places them at once
        if action == "TERM" && !c.node(victim).wait_exit(Duration::from_secs(10).saturating_sub(hit.elapsed())) {
            panic!("{victim} did not leave within 10 s of SIGTERM\n{}", c.logs());
        }
        let old = c.node_id(victim).await;
        c.restart(victim);
        // the stopped process's entry may still be listed for a moment: wait for the new one
        c.wait_rejoined(victim, old.as_deref()).await;
        c.wait_nodes(&["a", "b", "c", "d"]).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut failures) = (0, Vec::new());
    for h in clients {
        let (d, f) = h.await.unwrap();
        done += d;
        failures.extend(f);
    }
    eprintln!("{done} requests completed over {ROUNDS} rounds in {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:#?}\n{}",
        failures.len(),
        done + failures.len(),
        c.logs()
    );
    assert!(done >= ROUNDS, "only {done} requests in {ROUNDS} rounds");

    // nothing leaked: the nodes host the loaded instance's stages and nothing else (orphans of
    // instances replaced or rebuilt go within their grace), and the coordinator's memory is
    // back near where it was
    let v = c.get(&format!("{}/cluster", c.nodes[0].base())).await.unwrap();
    let stages = v["instances"].as_array().map_or(0, |i| i.iter().map(|i| i["stages"].as_array().unwrap().len()).sum());
    let t = Instant::now();
    while hosted_total(&c).await != stages {
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "hosted stages stayed at {} for {stages} placed\n{}",
            hosted_total(&c).await,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss = c.nodes[0].rss_bytes();
    eprintln!("coordinator RSS: {} MiB at the start, {} MiB after the rounds", baseline_rss >> 20, rss >> 20);
    assert!(rss < baseline_rss + (48 << 20), "the coordinator grew from {baseline_rss} to {rss} bytes");
}
