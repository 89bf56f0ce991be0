//! Decode tok/s of a 2-stage pipeline (two `exo serve` processes) over emulated links, next to
//! placement's prediction. This machine's `tc` has no netem, so each node's peer traffic goes
//! through a user-space relay in this process that delays every byte by the one-way latency and
//! paces it to the link's bandwidth; nodes advertise the relay's address, so heartbeats (RTT) and
//! hidden states both cross it.
//!
//! Then the prefill gain from chunked pipelining: a BENCH_PP-token prompt (512) through
//! `POST /bench` as one undivided batch vs cut into BENCH_CHUNK-token chunks (64) that are all
//! sent at once, so stage b works on chunk i while stage a works on chunk i+1 and the link
//! carries chunk i-1.
//!
//! `cargo bench --bench links` (env: BENCH_TOKENS=32, BENCH_REPS=3, BENCH_THREADS=2,
//! BENCH_MODEL, BENCH_PP, BENCH_CHUNK).

#[path = "common.rs"]
mod common;

use common::*;

use exo::placement::{self, Backend, Cluster, LinkSpec, ModelCost, NodeSpec, Options};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::TcpListener;

async fn decode_rate(http: &reqwest::Client, base: &str, placement: &Value, tokens: u32) -> f64 {
    let r = http
        .post(format!("{base}/instances"))
        .json(&json!({ "model": "bench", "placement": placement, "num_ctx": 512 }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let body = json!({ "model": "bench", "prompt": "Once upon a time there was a little model", "raw": true, "stream": false,
        "options": { "num_predict": tokens, "temperature": 0 } });
    let v: Value = http.post(format!("{base}/api/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    let (n, ns) = (v["eval_count"].as_f64().unwrap_or(0.0), v["eval_duration"].as_f64().unwrap_or(0.0));
    (n - 1.0).max(1.0) / (ns / 1e9)
}

/// Prompt tok/s of one `pp` run through `POST /bench` (its own warm-up first), the prompt cut
/// into `batch`-token chunks that the stages work on side by side.
async fn prefill_rate(http: &reqwest::Client, base: &str, placement: &Value, pp: u32, batch: u32) -> f64 {
    let body =
        json!({ "model": "bench", "placement": placement, "batch_size": batch, "pp": [pp], "tg": 0, "repeat": 1 });
    let r = http.post(format!("{base}/bench")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["tests"][0]["tokens_per_s"].as_f64().unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (reps, tokens, threads) =
        (env_or("BENCH_REPS", 3usize), env_or("BENCH_TOKENS", 32u32), env_or("BENCH_THREADS", 2u32));
    let model = bench_model();
    let shape = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(&model).unwrap()).unwrap();
    let l = shape.n_layer;
    let links = [
        ("1 Gbit/s, 0.3 ms", 125e6, Duration::from_micros(300)),
        ("100 Mbit/s, 5 ms", 12.5e6, Duration::from_millis(5)),
    ];
    println!("model: {} ({:.2} GB); 2 stages a=0:{},b={}:{}; {tokens} greedy tokens, {threads} threads per process, median of {reps}", model.display(), std::fs::metadata(&model).unwrap().len() as f64 / 1e9, l / 2, l / 2, l);
    println!();
    println!(
        "| link (each way) | 1 stage tok/s | 2 stages tok/s (median) | runs | predicted tok/s | measured / predicted |"
    );
    println!("|---|---|---|---|---|---|");
    let mut prefill_rows = Vec::new();
    for (label, bw, delay) in links {
        let dir = tempfile::tempdir().unwrap();
        link_model(&model, &dir.path().join("bench.gguf"));
        let (peer, relays, apis) = ([free_port(), free_port()], [free_port(), free_port()], [free_port(), free_port()]);
        for i in 0..2 {
            let listen = TcpListener::bind(("127.0.0.1", relays[i])).await.unwrap();
            tokio::spawn(relay(listen, format!("127.0.0.1:{}", peer[i]), delay, bw));
        }
        let mut kids = Kill(vec![]);
        for i in 0..2 {
            kids.0.push(
                Command::new(env!("CARGO_BIN_EXE_exo"))
                    .args([
                        "serve",
                        "--api-addr",
                        &format!("127.0.0.1:{}", apis[i]),
                        "--peer-addr",
                        &format!("127.0.0.1:{}", peer[i]),
                    ])
                    .args([
                        "--advertise-addr",
                        &format!("127.0.0.1:{}", relays[i]),
                        "--peers",
                        &format!("127.0.0.1:{}", relays[1 - i]),
                    ])
                    .args(["--node-name", ["a", "b"][i], "--threads", &threads.to_string(), "--parallel", "1"])
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
        let base = format!("http://127.0.0.1:{}", apis[0]);
        let http = reqwest::Client::new();
        wait_cluster(
            &http,
            &base,
            |v| v["links"].as_array().is_some_and(|l| l.iter().any(|x| x["rtt_ms"].is_f64())),
            "nodes did not join",
        )
        .await;
        let one = json!([{ "node": "a", "begin": 0, "end": l }]);
        let two = json!([{ "node": "a", "begin": 0, "end": l / 2 }, { "node": "b", "begin": l / 2, "end": l }]);
        decode_rate(&http, &base, &one, 8).await; // warm-up
        decode_rate(&http, &base, &two, 8).await;
        let (mut r1, mut r2) = (vec![], vec![]);
        for _ in 0..reps {
            r1.push(decode_rate(&http, &base, &one, tokens).await);
            r2.push(decode_rate(&http, &base, &two, tokens).await);
        }
        // the prediction: both nodes at the measured one-stage speed, the emulated link
        let cost = ModelCost::from_shape("bench", &shape);
        let bytes = (cost.layer_bytes.iter().sum::<u64>() + cost.output_bytes + cost.other_bytes) as f64;
        let gbps = bytes * median(r1.clone()) / 1e9;
        let node = |n: &str| NodeSpec {
            name: n.into(),
            memory: 64 << 30,
            backend: Backend::Cpu,
            decode_gbps: gbps,
            prefill_tflops: None,
        };
        let link =
            |a: &str, b: &str| LinkSpec { from: a.into(), to: b.into(), bandwidth: bw, latency: delay.as_secs_f64() };
        let cluster = Cluster { nodes: vec![node("a"), node("b")], links: vec![link("a", "b"), link("b", "a")] };
        let plan = placement::evaluate(
            &cost,
            &cluster,
            &Options { ctx: 512, ..Options::default() },
            &[("a".into(), 0, l / 2), ("b".into(), l / 2, l)],
        )
        .unwrap();
        let m2 = median(r2.clone());
        let runs: Vec<String> = r2.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "| {label} | {:.2} | {m2:.2} | {} | {:.2} | {:.3} |",
            median(r1),
            runs.join(", "),
            plan.tokens_per_second,
            m2 / plan.tokens_per_second
        );
        // prefill: one pp-token prompt in chunks of `chunk` vs undivided
        let (pp, chunk) = (env_or("BENCH_PP", 512u32), env_or("BENCH_CHUNK", 64u32));
        let (mut chunked, mut whole) = (vec![], vec![]);
        for _ in 0..reps {
            chunked.push(prefill_rate(&http, &base, &two, pp, chunk).await);
            whole.push(prefill_rate(&http, &base, &two, pp, pp).await);
        }
        prefill_rows.push(format!(
            "| {label} | {pp} | {:.2} | {:.2} | {:.2}x |",
            median(whole.clone()),
            median(chunked.clone()),
            median(chunked) / median(whole)
        ));
    }
    println!();
    println!("Prefill over the same 2 stages: one prompt undivided vs cut into chunks sent at once (medians):");
    println!();
    println!(
        "| link (each way) | prompt tokens | undivided tok/s | {}-token chunks tok/s | gain |",
        env_or("BENCH_CHUNK", 64u32)
    );
    println!("|---|---|---|---|---|");
    prefill_rows.iter().for_each(|r| println!("{r}"));
}
