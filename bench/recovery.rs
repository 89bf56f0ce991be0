//! Recovery time: a stage node is killed (-9) or stopped (SIGSTOP) in the middle of a stream
//! over a forced 3-stage placement of three `exo serve` processes; the time from the failure to
//! the next token at the client, against model size and the number of tokens to replay, split
//! into detecting (failure → the coordinator notices), loading (→ the new placement is loaded)
//! and replaying (→ the first token after it is sent). The split comes from the coordinator's
//! recovery records (`/cluster`, wall-clock milliseconds beside this process's own "killed at").
//!
//! `cargo bench --bench recovery` (BENCH_REPS=3 per row, medians; BENCH_SMALL=1: only the
//! small models). Models: the generated tiny-llama-calm, the real SmolLM2-135M when
//! EXO_TEST_REAL_MODEL or .test-models/ has it, and the generated 1 GB tinyllama-1b.

#[path = "common.rs"]
mod common;

use common::{bench_model, env_or, free_port, link_model, median};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NAMES: [&str; 3] = ["a", "b", "c"];
/// Tokens generated before the failure.
const BEFORE: usize = 8;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

struct Node {
    name: &'static str,
    api: u16,
    peer: u16,
    peers: Vec<u16>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, dir: &Path) {
        let peers: Vec<String> = self.peers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_exo"))
                .args(["serve", "--api-addr", &format!("127.0.0.1:{}", self.api)])
                .args(["--peer-addr", &format!("127.0.0.1:{}", self.peer), "--node-name", self.name])
                .args(["--threads", "1", "--peers", &peers.join(",")])
                .env("EXO_DECODE_GBPS", "10")
                .env("EXO_NO_DISCOVERY", "1")
                .env("EXO_MODELS_DIRS", dir)
                .env("HOME", dir)
                .env("EXO_OFFLINE", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
    n_layer: u32,
    eos: u64,
}

impl Cluster {
    async fn start(model: &Path) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        link_model(model, &dir.path().join("bench-model.gguf"));
        let g = exo::gguf::GgufFile::open(model).unwrap();
        let eos = g.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()).unwrap_or(0);
        let files = exo::gguf::ModelFiles::open(model).unwrap();
        let n_layer = exo::gguf::ModelShape::from_files(&files).unwrap().n_layer;
        let ports: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
        let nodes = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| Node {
                name,
                api: free_port(),
                peer: ports[i],
                peers: ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect(),
                child: None,
            })
            .collect();
        let mut c = Cluster { dir, nodes, http: reqwest::Client::new(), n_layer, eos };
        for n in &mut c.nodes {
            n.start(c.dir.path());
        }
        c.wait_all().await;
        c
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.nodes[0].api)
    }

    async fn cluster(&self) -> Option<Value> {
        self.http.get(format!("{}/cluster", self.base())).send().await.ok()?.json().await.ok()
    }

    async fn wait_all(&self) {
        let t = Instant::now();
        loop {
            if let Some(v) = self.cluster().await {
                let n = v["nodes"]
                    .as_array()
                    .map_or(0, |n| n.iter().filter(|x| x["self"] == true || x["profile"].is_object()).count());
                if n == NAMES.len() {
                    return;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(60), "the nodes did not join");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn place(&self) {
        let n = self.n_layer;
        let (x, y) = (n / 3, 2 * n / 3);
        let placement = json!([{ "node": "a", "begin": 0, "end": x }, { "node": "b", "begin": x, "end": y }, { "node": "c", "begin": y, "end": n }]);
        let r = self
            .http
            .post(format!("{}/instances", self.base()))
            .json(&json!({ "model": "bench-model", "placement": placement }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// One failure of node c in the middle of a stream; the recovery's figures.
    async fn trial(&mut self, words: usize, signal: &str, generate: u32) -> Trial {
        self.place().await;
        let prompt = "the quick brown fox jumps over the lazy dog ".repeat(words / 9 + 1);
        let body = json!({ "model": "bench-model", "prompt": prompt, "max_tokens": generate, "temperature": 0,
            "stream": true, "logit_bias": { self.eos.to_string(): -100 } });
        let mut r = self.http.post(format!("{}/v1/completions", self.base())).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
        let (mut buf, mut pieces, mut killed, mut next) = (String::new(), 0, None, None);
        let pid = self.nodes[2].child.as_ref().unwrap().id().to_string();
        'stream: while let Some(chunk) = r.chunk().await.unwrap() {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                let data = event.trim().trim_start_matches("data: ");
                if data == "[DONE]" {
                    break 'stream;
                }
                let v: Value = serde_json::from_str(data).unwrap();
                assert!(v["error"].is_null(), "{v}");
                if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
                    pieces += 1;
                    if killed.is_some() && next.is_none() {
                        next = Some(now_ms());
                    }
                    if pieces == BEFORE {
                        killed = Some(now_ms());
                        Command::new("kill").args([signal, &pid]).status().unwrap();
                    }
                }
            }
        }
        let v = self.cluster().await.unwrap();
        let rec = v["instances"][0]["recoveries"].as_array().and_then(|r| r.last()).cloned();
        let rec = rec.unwrap_or_else(|| panic!("no recovery: the stream ended before the failure took effect? {v}"));
        let ms = |k: &str| rec[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {rec}"));
        let killed = killed.expect("the stream ended early");
        let t = Trial {
            replayed: rec["replayed_tokens"].as_u64().unwrap(),
            // the server's first token after the rebuild (the client may still be reading
            // tokens generated before the failure)
            total: ms("resumed_unix_ms").saturating_sub(killed) as f64,
            client: next.expect("no token after the failure").saturating_sub(killed) as f64,
            detect: ms("detected_unix_ms").saturating_sub(killed) as f64,
            load: (ms("rebuilt_unix_ms") - ms("detected_unix_ms")) as f64,
            replay: ms("resumed_unix_ms").saturating_sub(ms("rebuilt_unix_ms")) as f64,
        };
        let dir = self.dir.path().to_path_buf();
        self.nodes[2].stop();
        self.nodes[2].start(&dir);
        self.wait_all().await;
        t
    }
}

struct Trial {
    replayed: u64,
    total: f64,
    /// Until the client's next piece, for comparison.
    client: f64,
    detect: f64,
    load: f64,
    replay: f64,
}

fn models() -> Vec<(String, PathBuf)> {
    let small = env_or("BENCH_SMALL", 0) == 1;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    std::fs::create_dir_all(&dir).unwrap();
    let calm = dir.join("tiny-llama-calm.gguf");
    if !calm.exists() {
        exo::synth::make_model(&exo::synth::preset("tiny-llama-calm").unwrap(), &calm).unwrap();
    }
    let mut v = vec![("tiny-llama-calm (generated)".to_string(), calm)];
    let real = std::env::var("EXO_TEST_REAL_MODEL").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    if real.exists() {
        v.push(("SmolLM2-135M Q4_1 (real)".into(), real));
    }
    if !small {
        v.push(("tinyllama-1b Q8_0 (generated)".into(), bench_model()));
    }
    v
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let reps: usize = env_or("BENCH_REPS", 3);
    let mut rows = vec![
        "| model | size | failure | tokens replayed | failure → next token | detect | load | replay | client's next piece |"
            .to_string(),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|".to_string(),
    ];
    for (name, path) in models() {
        let size = std::fs::metadata(&path).unwrap().len() as f64 / (1u64 << 20) as f64;
        let mut c = Cluster::start(&path).await;
        // enough tokens after the failure that the stream is still running when it bites
        let generate = if size < 200.0 { 400 } else { 40 };
        let cases: &[(&str, usize)] = &[("-KILL", 16), ("-KILL", 256), ("-KILL", 1024), ("-STOP", 256)];
        for &(signal, words) in cases {
            let mut trials = Vec::new();
            for _ in 0..reps {
                trials.push(c.trial(words, signal, generate).await);
            }
            let med = |f: fn(&Trial) -> f64| median(trials.iter().map(f).collect());
            let (total, client) = (med(|t| t.total), med(|t| t.client));
            let (d, l, r) = (med(|t| t.detect), med(|t| t.load), med(|t| t.replay));
            let share = |x: f64| format!("{x:.0} ms ({:.0}%)", 100.0 * x / (d + l + r).max(1.0));
            let what = if signal == "-KILL" { "kill -9" } else { "SIGSTOP" };
            let row = format!(
                "| {name} | {size:.1} MiB | {what} | {} | {total:.0} ms | {} | {} | {} | {client:.0} ms |",
                trials[0].replayed,
                share(d),
                share(l),
                share(r)
            );
            eprintln!("{row}");
            rows.push(row);
        }
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/results/recovery.md");
    let text = format!(
        "# Recovery time\n\n`cargo bench --bench recovery` (medians of {reps}); three `exo serve` processes on loopback, \
         one thread each, a forced 3-stage placement; node c (the last stage) fails after {BEFORE} generated \
         tokens; the coordinator re-places the model over the nodes left and replays the prompt and \
         the tokens so far. \"Failure → next token\": from the kill to the coordinator sending the first token \
         after the rebuild; shares are of detect + load + replay (each a median, so they need not add up \
         exactly); the client's next piece can come sooner (tokens generated before the failure were \
         still on their way).\n\n{}\n",
        rows.join("\n")
    );
    std::fs::write(&out, text).unwrap();
    eprintln!("wrote {}", out.display());
}
