//! Speculative decoding (`--draft ngram`) against plain decoding, in one run: two `exo serve`
//! processes (`--exact`), node a with proposals and node b without, each the coordinator of its
//! own instance, so that every ratio compares two coordinators on the same processes, links and
//! model. One node: a alone vs b alone. Two stages: a(0:L/2)+b(L/2:L) vs b(0:L/2)+a(L/2:L), every
//! byte between the nodes through a user-space relay at 0.3, 5 and 25 ms each way (see
//! bench/links.rs). Three chat prompts, greedy: (a) a code edit that repeats most of its input,
//! (b) a summary quoting a given passage, (c) free chat. Decode tok/s from Ollama's
//! eval_count / eval_duration; acceptance and tokens per verify from `/api/ps`.
//!
//! `cargo bench --bench spec` (env: BENCH_MODEL (default: the cached SmolLM2), BENCH_TOKENS=128,
//! BENCH_REPS=3, BENCH_THREADS=2, BENCH_LINKS=0.3,5,25; BENCH_DRAFT=<gguf>: that draft model
//! proposes instead of n-gram lookup).

#[path = "common.rs"]
mod common;

use common::*;

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::TcpListener;

const CODE: &str = "Rename the variable `count` to `total` in this Python code. Reply with the whole code and nothing else.\n\n```python\ndef summarize(items):\n    count = 0\n    for item in items:\n        if item is None:\n            continue\n        count += item.price * item.quantity\n    if count > 1000:\n        count = count * 0.9\n    print(\"The order comes to\", count)\n    return count\n\n\ndef report(orders):\n    for order in orders:\n        count = summarize(order.items)\n        print(order.customer, count)\n```";
const SUMMARY: &str = "Summarize this passage in two sentences, quoting its key sentence word for word.\n\nThe lighthouse at the end of the harbour had been dark for eleven years when Mara climbed its stairs with a box of tools. The town had voted to leave it dark; ships now used satellites, and the council had other things to pay for. But on the night of the storm, when the satellites were useless behind the clouds, the fishing boats came home by the light that Mara had mended. \"A light that nobody needs is still a light,\" she told the council the next morning, and they voted again.";
const CHAT: &str = "What are three good habits for staying healthy while working from home?";

fn model() -> std::path::PathBuf {
    std::env::var("BENCH_MODEL").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
    })
}

/// Decode tok/s of one greedy chat answer through `base`, and the tokens it generated.
async fn decode(http: &reqwest::Client, base: &str, prompt: &str, tokens: u32) -> (f64, f64) {
    let body = json!({ "model": "bench", "messages": [{ "role": "user", "content": prompt }], "stream": false,
        "options": { "num_predict": tokens, "temperature": 0, "num_ctx": 1024 } });
    let r = http.post(format!("{base}/api/chat")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    let (n, ns) = (v["eval_count"].as_f64().unwrap_or(0.0), v["eval_duration"].as_f64().unwrap_or(0.0));
    ((n - 1.0).max(1.0) / (ns / 1e9), n)
}

async fn place(http: &reqwest::Client, base: &str, placement: &Value) {
    let r = http
        .post(format!("{base}/instances"))
        .json(&json!({ "model": "bench", "placement": placement, "num_ctx": 1024 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
}

async fn spec_stats(http: &reqwest::Client, base: &str) -> Value {
    let v: Value = http.get(format!("{base}/api/ps")).send().await.unwrap().json().await.unwrap();
    v["models"].as_array().and_then(|m| m.first()).map(|m| m["exo_speculation"].clone()).unwrap_or(Value::Null)
}

struct Row {
    setup: String,
    prompt: &'static str,
    plain: Vec<f64>,
    spec: Vec<f64>,
    acceptance: Option<f64>,
    per_verify: Option<f64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (reps, tokens, threads) =
        (env_or("BENCH_REPS", 3usize), env_or("BENCH_TOKENS", 128u32), env_or("BENCH_THREADS", 2u32));
    let links: Vec<f64> = std::env::var("BENCH_LINKS")
        .unwrap_or_else(|_| "0.3,5,25".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_LINKS: milliseconds"))
        .collect();
    let model = model();
    assert!(model.exists(), "{} is missing (scripts/fetch-test-model.sh or BENCH_MODEL)", model.display());
    // BENCH_DRAFT: a draft model (same vocabulary) proposes on node a instead of n-gram lookup
    let draft = std::env::var("BENCH_DRAFT").ok().map(std::path::PathBuf::from);
    let proposer = if draft.is_some() { "bench-draft".to_string() } else { "ngram".to_string() };
    let shape = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(&model).unwrap()).unwrap();
    let l = shape.n_layer;
    let prompts = [("a. code edit", CODE), ("b. summary", SUMMARY), ("c. free chat", CHAT)];
    let mut rows: Vec<Row> = Vec::new();
    for (li, &ms) in links.iter().enumerate() {
        let delay = Duration::from_secs_f64(ms / 1e3);
        let dir = tempfile::tempdir().unwrap();
        link_model(&model, &dir.path().join("bench.gguf"));
        if let Some(d) = &draft {
            link_model(d, &dir.path().join("bench-draft.gguf"));
        }
        let (peer, relays, apis) = ([free_port(), free_port()], [free_port(), free_port()], [free_port(), free_port()]);
        for i in 0..2 {
            let listen = TcpListener::bind(("127.0.0.1", relays[i])).await.unwrap();
            tokio::spawn(relay(listen, format!("127.0.0.1:{}", peer[i]), delay, 125e6));
        }
        let mut kids = Kill(vec![]);
        for i in 0..2 {
            kids.0.push(
                Command::new(env!("CARGO_BIN_EXE_exo"))
                    .args(["serve", "--api-addr", &format!("127.0.0.1:{}", apis[i])])
                    .args(["--peer-addr", &format!("127.0.0.1:{}", peer[i])])
                    .args(["--advertise-addr", &format!("127.0.0.1:{}", relays[i])])
                    .args(["--peers", &format!("127.0.0.1:{}", relays[1 - i])])
                    .args(["--node-name", ["a", "b"][i], "--threads", &threads.to_string(), "--parallel", "1"])
                    .args(["--exact", "--draft", [proposer.as_str(), "none"][i]])
                    .env("EXO_MODELS_DIRS", dir.path())
                    .env("HOME", dir.path())
                    .env("EXO_DECODE_GBPS", "10")
                    .env("EXO_NO_DISCOVERY", "1")
                    .env("EXO_OFFLINE", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            );
        }
        let http = reqwest::Client::new();
        let base = [format!("http://127.0.0.1:{}", apis[0]), format!("http://127.0.0.1:{}", apis[1])];
        for b in &base {
            wait_cluster(
                &http,
                b,
                |v| v["links"].as_array().is_some_and(|l| l.iter().any(|x| x["rtt_ms"].is_f64())),
                "nodes did not join",
            )
            .await;
        }
        let mut setups = vec![];
        if li == 0 {
            let alone = |n: &str| json!([{ "node": n, "begin": 0, "end": l }]);
            setups.push(("1 node".to_string(), alone("a"), alone("b")));
        }
        let two = |x: &str, y: &str| json!([{ "node": x, "begin": 0, "end": l / 2 }, { "node": y, "begin": l / 2, "end": l }]);
        setups.push((format!("2 stages, {ms} ms"), two("a", "b"), two("b", "a")));
        for (setup, spec_placement, plain_placement) in setups {
            place(&http, &base[0], &spec_placement).await;
            place(&http, &base[1], &plain_placement).await;
            for (name, prompt) in prompts {
                // warm-up, then alternate the two coordinators
                decode(&http, &base[0], prompt, 8).await;
                decode(&http, &base[1], prompt, 8).await;
                let before = spec_stats(&http, &base[0]).await;
                let (mut plain, mut spec) = (vec![], vec![]);
                for _ in 0..reps {
                    spec.push(decode(&http, &base[0], prompt, tokens).await.0);
                    plain.push(decode(&http, &base[1], prompt, tokens).await.0);
                }
                let after = spec_stats(&http, &base[0]).await;
                let d = |k: &str| after[k].as_f64().unwrap_or(0.0) - before[k].as_f64().unwrap_or(0.0);
                let (proposed, accepted, windows, emitted) = (d("proposed"), d("accepted"), d("windows"), d("emitted"));
                let row = Row {
                    setup: setup.clone(),
                    prompt: name,
                    plain,
                    spec,
                    acceptance: (proposed > 0.0).then(|| accepted / proposed),
                    per_verify: (windows > 0.0).then(|| emitted / windows),
                };
                eprintln!(
                    "{} {}: plain {:.2} spec {:.2} tok/s",
                    row.setup,
                    row.prompt,
                    median(row.plain.clone()),
                    median(row.spec.clone())
                );
                rows.push(row);
            }
        }
        drop(kids);
    }
    println!("model: {} ({:.0} MB); --exact; greedy, {tokens} tokens per answer; {threads} threads per process; medians of {reps}", model.display(), std::fs::metadata(&model).unwrap().len() as f64 / 1e6);
    println!();
    if let Some(d) = &draft {
        println!("draft model: {}", d.display());
        println!();
    }
    let p = if draft.is_some() { "draft" } else { "ngram" };
    println!("| setup | prompt | plain tok/s | {p} tok/s | {p} runs | speed-up | acceptance | tokens per verify |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (p, s) = (median(r.plain.clone()), median(r.spec.clone()));
        let runs: Vec<String> = r.spec.iter().map(|x| format!("{x:.1}")).collect();
        let pct = |x: Option<f64>| x.map_or("-".into(), |a| format!("{:.0}%", a * 100.0));
        let pv = r.per_verify.map_or("-".into(), |t| format!("{t:.2}"));
        println!(
            "| {} | {} | {p:.2} | {s:.2} | {} | {:.2}x | {} | {pv} |",
            r.setup,
            r.prompt,
            runs.join(", "),
            s / p,
            pct(r.acceptance)
        );
    }
}
