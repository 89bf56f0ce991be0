//! Cold start on 2 nodes where only node a has the model (~1 GB, TinyLlama-1.1B's shape), over
//! an emulated 1 Gbit/s link (the user-space relay of bench/common.rs: this machine's `tc` has no
//! netem): time from `exo run` (through a's API, `--split b=0:H,a=H:L`) to its first token, and
//! the bytes that crossed, when b fetches only its window vs when b first copies the whole file
//! from the same source (what every node downloading the whole model costs).
//!
//! `cargo bench --bench weights` (env: BENCH_MODEL, BENCH_REPS=3, BENCH_BW=125e6 bytes/s, BENCH_LOGS=DIR
//! to keep the nodes' logs of the last run).

#[path = "common.rs"]
mod common;

use common::*;

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Two nodes behind relays that pace every byte between them to `bw`; a holds the model.
async fn cold_cluster(model: &Path, bw: f64, da: &Path, db: &Path, config: &Path) -> (Kill, String) {
    link_model(model, &da.join("bench.gguf"));
    let (peer, relays, apis) = ([free_port(), free_port()], [free_port(), free_port()], [free_port(), free_port()]);
    for i in 0..2 {
        let listen = TcpListener::bind(("127.0.0.1", relays[i])).await.unwrap();
        tokio::spawn(relay(listen, format!("127.0.0.1:{}", peer[i]), Duration::from_micros(150), bw));
    }
    let mut kids = Kill(vec![]);
    for (i, dir) in [da, db].into_iter().enumerate() {
        kids.0.push(
            Command::new(env!("CARGO_BIN_EXE_exo"))
                .args(["serve", "--api-addr", &format!("127.0.0.1:{}", apis[i])])
                .args(["--peer-addr", &format!("127.0.0.1:{}", peer[i])])
                .args(["--advertise-addr", &format!("127.0.0.1:{}", relays[i])])
                .args(["--peers", &format!("127.0.0.1:{}", relays[1 - i])])
                .args(["--node-name", ["a", "b"][i], "--threads", "2"])
                .env("EXO_MODELS_DIRS", dir)
                .env("HOME", dir)
                .env("EXO_CONFIG_DIR", config)
                .env("EXO_DECODE_GBPS", "10")
                .env("EXO_NO_DISCOVERY", "1")
                .env("EXO_OFFLINE", "1")
                .stdout(Stdio::null())
                .stderr(match std::env::var("BENCH_LOGS") {
                    // each node's log, to see where the time goes
                    Ok(d) => Stdio::from(std::fs::File::create(Path::new(&d).join(["a.log", "b.log"][i])).unwrap()),
                    Err(_) => Stdio::null(),
                })
                .spawn()
                .unwrap(),
        );
    }
    let base = format!("http://127.0.0.1:{}", apis[0]);
    let http = reqwest::Client::new();
    wait_cluster(&http, &base, |v| v["nodes"].as_array().is_some_and(|n| n.len() == 2), "nodes did not join").await;
    (kids, base)
}

/// `exo run bench` through the node at `base` with `split`, one token: seconds until it exits.
fn exo_run(base: &str, split: &str, config: &Path) -> f64 {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args(["run", "bench", "Once upon a time", "--max-tokens", "1", "--temperature", "0", "--split", split])
        .env("EXO_API_ADDR", base.trim_start_matches("http://"))
        .env("EXO_CONFIG_DIR", config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    t.elapsed().as_secs_f64()
}

/// Bytes node b received: the sum of its window transfers as a lists them.
async fn moved_to_b(base: &str) -> u64 {
    let v: Value = reqwest::get(format!("{base}/cluster")).await.unwrap().json().await.unwrap();
    let t = v["transfers"].as_array().cloned().unwrap_or_default();
    t.iter().filter(|t| t["node"] == "b" && t["state"] == "done").filter_map(|t| t["done_bytes"].as_u64()).sum()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (reps, bw) = (env_or("BENCH_REPS", 3usize), env_or("BENCH_BW", 125e6f64));
    let model = bench_model();
    let size = std::fs::metadata(&model).unwrap().len();
    let l = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(&model).unwrap()).unwrap().n_layer;
    let split = format!("b=0:{},a={}:{l}", l / 2, l / 2);
    println!(
        "model: {} ({:.2} GB, {l} layers); split {split}; link {:.0} Mbit/s each way; median of {reps} cold starts",
        model.display(),
        size as f64 / 1e9,
        bw * 8.0 / 1e6
    );
    println!();
    println!("| b gets | exo run to first token (s) | runs (s) | bytes to b (MB) | bytes / link rate (s) |");
    println!("|---|---|---|---|---|");
    let mut medians = vec![];
    for whole in [false, true] {
        let (mut times, mut bytes) = (vec![], 0);
        for _ in 0..reps {
            let (da, db, config) =
                (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (_kids, base) = cold_cluster(&model, bw, da.path(), db.path(), config.path()).await;
            let t = Instant::now();
            if whole {
                // the whole file first, as if b downloaded the model, then the same split
                let one = json!([{ "node": "b", "begin": 0, "end": l }]);
                let r = reqwest::Client::new()
                    .post(format!("{base}/instances"))
                    .json(&json!({ "model": "bench", "placement": one }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
            let (b2, s2, c2) = (base.clone(), split.clone(), config.path().to_path_buf());
            tokio::task::spawn_blocking(move || exo_run(&b2, &s2, &c2)).await.unwrap();
            times.push(t.elapsed().as_secs_f64());
            bytes = moved_to_b(&base).await;
        }
        let m = median(times.clone());
        medians.push(m);
        let runs: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "| {} | {m:.2} | {} | {:.1} | {:.2} |",
            if whole { "the whole file, then its half" } else { "its window only" },
            runs.join(", "),
            bytes as f64 / 1e6,
            bytes as f64 / bw
        );
    }
    println!();
    println!("whole file / window: {:.2}x the time to first token", medians[1] / medians[0]);
}
