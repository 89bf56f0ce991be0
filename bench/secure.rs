//! What encrypting peer traffic costs: a 2-stage pipeline (two `exo serve` processes on
//! loopback, a=0:L/2 on the coordinator, b=L/2:L) with the Noise-encrypted transport vs the same
//! with EXO_UNSAFE_PLAINTEXT_PEERS=1 (bench only: the handshake still runs, records travel
//! unencrypted). Both pairs run side by side in one run, measured alternately (the order flips
//! every round); each measurement is one `POST /bench` (its own warm-up, then a BENCH_PP-token
//! prefill in one batch and BENCH_TG generated tokens). Medians of BENCH_REPS rounds; the
//! markdown goes to stdout and bench/results/secure.md.
//!
//! `cargo bench --bench secure` (env: BENCH_REPS=3, BENCH_TG=64, BENCH_PP=512, BENCH_THREADS=2,
//! BENCH_MODEL).

#[path = "common.rs"]
mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Pair {
    label: &'static str,
    base: String,
    _kids: Kill,
    _dir: tempfile::TempDir,
}

fn pair(label: &'static str, model: &std::path::Path, threads: u32, plaintext: bool) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    link_model(model, &dir.path().join("bench.gguf"));
    let (peer, api) = ([free_port(), free_port()], [free_port(), free_port()]);
    let mut kids = Kill(vec![]);
    for i in 0..2 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_exo"));
        c.args(["serve", "--api-addr", &format!("127.0.0.1:{}", api[i])])
            .args(["--peer-addr", &format!("127.0.0.1:{}", peer[i]), "--peers", &format!("127.0.0.1:{}", peer[1 - i])])
            .args(["--node-name", ["a", "b"][i], "--threads", &threads.to_string(), "--parallel", "1"])
            .env("EXO_MODELS_DIRS", dir.path())
            .env("HOME", dir.path())
            .env("EXO_DECODE_GBPS", "10")
            .env("EXO_NO_DISCOVERY", "1")
            .env("EXO_OFFLINE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if plaintext {
            c.env("EXO_UNSAFE_PLAINTEXT_PEERS", "1");
        }
        kids.0.push(c.spawn().unwrap());
    }
    Pair { label, base: format!("http://127.0.0.1:{}", api[0]), _kids: kids, _dir: dir }
}

async fn joined(http: &reqwest::Client, base: &str) {
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/cluster")).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if v["links"].as_array().is_some_and(|l| l.iter().any(|x| x["rtt_ms"].is_f64())) {
                    return;
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{base}: the nodes did not join");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (prefill tok/s, decode tok/s, bytes between the nodes per generated token)
async fn measure(http: &reqwest::Client, base: &str, placement: &Value, pp: u32, tg: u32) -> (f64, f64, f64) {
    let body = json!({ "model": "bench", "placement": placement, "batch_size": pp, "pp": [pp], "tg": tg, "repeat": 1 });
    let r = http.post(format!("{base}/bench")).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    let test = |name: &str| v["tests"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone();
    let (p, g) = (test(&format!("pp{pp}")), test(&format!("tg{tg}")));
    (
        p["tokens_per_s"].as_f64().unwrap(),
        g["tokens_per_s"].as_f64().unwrap(),
        g["transfer_bytes_per_token"].as_f64().unwrap(),
    )
}

/// The record layer alone, in memory: MB/s through writer and reader for frames of `size` bytes,
/// encrypted (a real handshake first) or plaintext.
async fn record_layer(size: usize, encrypted: bool) -> f64 {
    use exo::transport::noise::{initiate, respond, Session};
    let (a, b) = if encrypted {
        let keys = |s| {
            let k = exo::secret::NodeKeys::ephemeral(exo::secret::ClusterSecret::from_bytes([s; 32])).unwrap();
            exo::transport::Security::new(std::sync::Arc::new(k))
        };
        let (ka, kb) = (keys(1), keys(1));
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let (i, r) = tokio::join!(initiate(&mut x, &ka), respond(&mut y, &kb));
        (i.unwrap(), r.unwrap())
    } else {
        (Session::plaintext(), Session::plaintext())
    };
    let (rx, tx) = tokio::io::duplex(4 << 20);
    let (_, mut w) = a.split(tokio::io::empty(), tx);
    let (mut rd, _) = b.split(rx, tokio::io::sink());
    let total = 256usize << 20;
    let n = (total / size).max(16);
    let f = exo::transport::Frame { kind: 8, request: 1, payload: vec![7u8; size] };
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..n {
            w.write_frame(&f).await.unwrap();
        }
    });
    for _ in 0..n {
        rd.read_frame().await.unwrap().unwrap();
    }
    writer.await.unwrap();
    (n * size) as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn runs(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (reps, tg, pp, threads) = (
        env_or("BENCH_REPS", 3usize),
        env_or("BENCH_TG", 64u32),
        env_or("BENCH_PP", 512u32),
        env_or("BENCH_THREADS", 2u32),
    );
    let model = bench_model();
    let shape = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(&model).unwrap()).unwrap();
    let l = shape.n_layer;
    let placement = json!([{ "node": "a", "begin": 0, "end": l / 2 }, { "node": "b", "begin": l / 2, "end": l }]);
    let pairs = [
        pair("encrypted (Noise, ChaChaPoly)", &model, threads, false),
        pair("plaintext (bench only)", &model, threads, true),
    ];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(1800)).build().unwrap();
    for p in &pairs {
        joined(&http, &p.base).await;
    }
    let mut res: Vec<Vec<(f64, f64, f64)>> = vec![vec![], vec![]];
    for round in 0..reps {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let m = measure(&http, &pairs[i].base, &placement, pp, tg).await;
            eprintln!("round {round} {}: pp{pp} {:.2} tok/s, tg{tg} {:.2} tok/s", pairs[i].label, m.0, m.1);
            res[i].push(m);
        }
    }
    let col = |i: usize, k: usize| res[i].iter().map(|m| [m.0, m.1, m.2][k]).collect::<Vec<f64>>();
    let mut out = String::new();
    out.push_str(&format!(
        "model: {} ({:.2} GB); 2 stages a=0:{},b={}:{} as two `exo serve` processes on loopback, {threads} threads each; \
         one `POST /bench` per measurement (pp{pp} in one batch, tg{tg}); alternating, median of {reps}\n\n",
        model.display(),
        std::fs::metadata(&model).unwrap().len() as f64 / 1e9,
        l / 2,
        l / 2,
        l
    ));
    out.push_str("| transport | decode tg tok/s | runs | prefill pp tok/s | runs | bytes between nodes / generated token |\n|---|---|---|---|---|---|\n");
    for (i, p) in pairs.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {:.2} | {} | {:.2} | {} | {:.0} |\n",
            p.label,
            median(col(i, 1)),
            runs(&col(i, 1)),
            median(col(i, 0)),
            runs(&col(i, 0)),
            median(col(i, 2))
        ));
    }
    let (dr, pr) = (median(col(0, 1)) / median(col(1, 1)), median(col(0, 0)) / median(col(1, 0)));
    let verdict = |r: f64, t: f64| if r >= t { "met" } else { "MISSED" };
    out.push_str(&format!(
        "\nencrypted / plaintext: decode {dr:.3} (target >= 0.99: {}), prefill {pr:.3} (target >= 0.97: {})\n",
        verdict(dr, 0.99),
        verdict(pr, 0.97)
    ));
    out.push_str("\nThe record layer alone (one process, in memory, writer and reader as two tasks; MB/s of frame payload):\n\n| frame | encrypted MB/s | plaintext MB/s | encryption cost per generated token (8,391 B) |\n|---|---|---|---|\n");
    for (label, size) in
        [("8 KiB (a decode step's hidden state)", 8192usize), ("4 MiB (a 512-token prefill chunk)", 4 << 20)]
    {
        let (mut e, mut p) = (vec![], vec![]);
        for _ in 0..3 {
            e.push(record_layer(size, true).await);
            p.push(record_layer(size, false).await);
        }
        let (e, p) = (median(e), median(p));
        let per_token_us = 8391.0 / (e * 1e6) * 1e6 - 8391.0 / (p * 1e6) * 1e6;
        out.push_str(&format!("| {label} | {e:.0} | {p:.0} | {per_token_us:.1} µs |\n"));
    }
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/secure.md");
    std::fs::write(&path, format!("# Encrypted vs plaintext peer transport (`cargo bench --bench secure`)\n\n{out}"))
        .unwrap();
    eprintln!("written to {}", path.display());
}
