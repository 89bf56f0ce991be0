//! Continuous batching throughput: aggregate generated tokens/s with 1, 2, 4 and 8 concurrent
//! streams, each configuration in the same run, alternating round by round (medians of
//! BENCH_REPS rounds):
//!   (a) one node: the runtime in this process with BENCH_THREADS threads;
//!   (b) two stages in two `exo serve` processes with one thread each (as on two machines),
//!       coordinated from this process, against the whole model in one such process;
//!   (c) llama.cpp's own `llama-batched-bench` on the same model, prompt and generation lengths
//!       (target/llama-cpp-tools/bin, from bench/llama-cpp/build-tools.sh), when built.
//!
//! `cargo bench --bench batching` (BENCH_MODEL, BENCH_REPS=3, BENCH_THREADS=2, BENCH_TG=64).

#[path = "common.rs"]
mod common;

use common::{bench_model, env_or, free_port, link_model, median, Kill};
use exo::engine::{LayerRange, SamplingParams};
use exo::runtime::{Event, Forced, GenRequest, Input, Limits, LoadOptions, ModelRef, Runtime};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STREAMS: [usize; 4] = [1, 2, 4, 8];
/// About 16 tokens each, distinct so no prompt cache is shared.
fn prompt(i: usize) -> String {
    format!("Stream number {i} begins its story here: once upon a time, far away,")
}

/// Aggregate generated tokens/s of `n` concurrent streams of `tg` tokens: every token generated,
/// over the time from the first stream's first token to the last stream's last one.
async fn aggregate(rt: &Arc<Runtime>, model: &ModelRef, n: usize, tg: u64, forced: Option<&Forced>) -> f64 {
    let opts = LoadOptions { num_ctx: None, n_batch: None, forced: forced.cloned(), no_mmap: false };
    let _ = rt.instance(model, opts).await.unwrap();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (rt, model) = (rt.clone(), model.clone());
            tokio::spawn(async move {
                let mut r = GenRequest::new(model, Input::Raw(prompt(i)), SamplingParams::greedy());
                r.max_tokens = Some(tg);
                r.ignore_eos = true;
                let mut g = rt.generate(r).await.unwrap();
                let (mut first, mut last, mut count) = (None, Instant::now(), 0usize);
                while let Some(ev) = g.events.recv().await {
                    match ev {
                        Event::Text(_) | Event::Thinking(_) => {
                            first.get_or_insert_with(Instant::now);
                            last = Instant::now();
                        }
                        Event::Done { stats, .. } => count = stats.completion_tokens,
                        Event::Failed(e) => panic!("{e}"),
                    }
                }
                (first.unwrap(), last, count)
            })
        })
        .collect();
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.unwrap());
    }
    let start = runs.iter().map(|r| r.0).min().unwrap();
    let end = runs.iter().map(|r| r.1).max().unwrap();
    // the first token of each stream comes from its prompt; the rest are decode steps
    let tokens: usize = runs.iter().map(|r| r.2 - 1).sum();
    tokens as f64 / end.duration_since(start).as_secs_f64()
}

/// llama-batched-bench's S_TG (aggregate generation tokens/s) per number of parallel sequences.
fn llama_batched(model: &std::path::Path, threads: u32, tg: u64) -> Option<Vec<(usize, f64)>> {
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama-cpp-tools/bin/llama-batched-bench");
    if !bin.exists() {
        eprintln!("(c) skipped: build llama-batched-bench with bash bench/llama-cpp/build-tools.sh");
        return None;
    }
    let npl: Vec<String> = STREAMS.iter().map(|n| n.to_string()).collect();
    let out = Command::new(bin)
        .args(["-m", &model.display().to_string(), "-c", "4096", "-b", "512", "-ub", "512", "-npp", "16"])
        .args(["-ntg", &tg.to_string(), "-npl", &npl.join(","), "-t", &threads.to_string(), "-tb"])
        .arg(threads.to_string())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
    let rows = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).filter(|s| !s.is_empty()).collect();
            (f.len() >= 8).then(|| Some((f[2].parse().ok()?, f[7].parse().ok()?))).flatten()
        })
        .collect::<Vec<(usize, f64)>>();
    (!rows.is_empty()).then_some(rows)
}

async fn serve_stage_nodes(dir: &std::path::Path, coord: &str, token: &str) -> (Kill, Vec<String>) {
    let mut kids = Kill(vec![]);
    let mut names = Vec::new();
    for name in ["p", "q"] {
        let (api, peer) = (free_port(), free_port());
        kids.0.push(
            Command::new(env!("CARGO_BIN_EXE_exo"))
                .args(["serve", "--api-addr", &format!("127.0.0.1:{api}"), "--peer-addr", &format!("127.0.0.1:{peer}")])
                .args(["--peers", coord, "--node-name", name, "--threads", "1", "--parallel", "8"])
                .env("EXO_MODELS_DIRS", dir)
                .env("HOME", dir)
                .env("EXO_CONFIG_DIR", dir.join(format!("config-{name}")))
                .env("EXO_CLUSTER_TOKEN", token)
                .env("EXO_DECODE_GBPS", "10")
                .env("EXO_NO_DISCOVERY", "1")
                .env("EXO_OFFLINE", "1")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
                .spawn()
                .unwrap(),
        );
        names.push(name.to_string());
    }
    (kids, names)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (reps, threads, tg) = (env_or("BENCH_REPS", 3usize), env_or("BENCH_THREADS", 2u32), env_or("BENCH_TG", 64u64));
    let model_path = bench_model();
    let dir = tempfile::tempdir().unwrap();
    link_model(&model_path, &dir.path().join("bench.gguf"));
    let model = ModelRef::Name("bench".into());
    let store = || {
        let mut s = exo::store::Store::from_env();
        s.dirs = vec![dir.path().to_path_buf()];
        s.read_only = vec![];
        s.hf_cache = None;
        s.ollama = None;
        s.offline = true;
        s
    };
    let limits = |threads: u32| Limits {
        parallel: 8,
        queue: 8,
        default_ctx: 512,
        threads: threads as i32,
        keep_alive: Duration::from_secs(3600),
        ..Limits::default()
    };

    // (a) one node, in this process
    let local = Runtime::new(store(), limits(threads), None);
    // (b) a coordinator here, two single-thread stage processes, all in one cluster
    let keys = exo::secret::NodeKeys::load_or_create(&dir.path().join("config-coord"), None).unwrap().keys;
    let token = keys.secret.token();
    let cfg = exo::cluster::NodeConfig {
        namespace: "default".into(),
        node_name: "coord".into(),
        peer_bind: "127.0.0.1:0".parse().unwrap(),
        peers: vec![],
        memory_limit: None,
        decode_gbps: Some(10.0),
        cache_dir: dir.path().join("cache"),
        threads: 1,
        discovery: false,
        advertise: None,
        security: exo::transport::Security::new(Arc::new(keys)),
    };
    let coord = exo::cluster::ClusterNode::start(cfg, store()).await.unwrap();
    let (_kids, names) = serve_stage_nodes(dir.path(), coord.peer_addr(), &token).await;
    let t = Instant::now();
    while names.iter().any(|n| coord.address_of(n).is_none()) {
        if t.elapsed() > Duration::from_secs(60) {
            let log = std::fs::read_to_string(dir.path().join("p.log")).unwrap_or_default();
            panic!("the stage processes did not join; p's log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = Runtime::new(store(), limits(1), Some(coord.clone()));
    let l = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(&model_path).unwrap()).unwrap().n_layer;
    let one = Forced::Nodes(vec![("p".into(), LayerRange { begin: 0, end: l })]);
    let two = Forced::Nodes(vec![
        ("p".into(), LayerRange { begin: 0, end: l / 2 }),
        ("q".into(), LayerRange { begin: l / 2, end: l }),
    ]);

    // warm-up: load and page in everything once
    aggregate(&local, &model, 2, 8, None).await;
    aggregate(&cluster, &model, 2, 8, Some(&one)).await;
    aggregate(&cluster, &model, 2, 8, Some(&two)).await;
    let (mut a, mut b1, mut b2) = (vec![vec![]; 4], vec![vec![]; 4], vec![vec![]; 4]);
    for round in 0..reps {
        eprintln!("round {}/{reps}", round + 1);
        for (k, &n) in STREAMS.iter().enumerate() {
            a[k].push(aggregate(&local, &model, n, tg, None).await);
        }
        for (k, &n) in STREAMS.iter().enumerate() {
            b1[k].push(aggregate(&cluster, &model, n, tg, Some(&one)).await);
        }
        for (k, &n) in STREAMS.iter().enumerate() {
            b2[k].push(aggregate(&cluster, &model, n, tg, Some(&two)).await);
        }
    }
    drop(local);
    let c = llama_batched(&model_path, threads, tg);
    let size = std::fs::metadata(&model_path).unwrap().len() as f64 / 1e9;
    println!(
        "model: {} ({size:.2} GB), {tg} generated tokens per stream (prompt ~16), medians of {reps} rounds",
        model_path.display()
    );
    println!();
    println!("| streams | (a) one node, {threads} threads | vs 1 stream | (c) llama-batched-bench S_TG | (a)/(c) | (b) 1 process, 1 thread | (b) 2 processes, 1 thread each | 2 vs 1 process |");
    println!("|---|---|---|---|---|---|---|---|");
    let a1 = median(a[0].clone());
    for (k, &n) in STREAMS.iter().enumerate() {
        let (am, one, two) = (median(a[k].clone()), median(b1[k].clone()), median(b2[k].clone()));
        let cc = c.as_ref().and_then(|rows| rows.iter().find(|r| r.0 == n)).map(|r| r.1);
        let (cs, ratio) = match cc {
            Some(v) => (format!("{v:.2}"), format!("{:.3}", am / v)),
            None => ("-".into(), "-".into()),
        };
        println!("| {n} | {am:.2} | {:.2}x | {cs} | {ratio} | {one:.2} | {two:.2} | {:.2}x |", am / a1, two / one);
    }
}
