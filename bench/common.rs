//! Helpers shared by the benchmarks (included with `#[path]`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Child processes killed when dropped.
pub struct Kill(pub Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// BENCH_MODEL, or the TinyLlama-shaped ~1 GB model, generated into target/bench-models/ once.
pub fn bench_model() -> PathBuf {
    std::env::var("BENCH_MODEL").map(PathBuf::from).unwrap_or_else(|_| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models/tinyllama-1b.gguf");
        if !p.exists() {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            eprintln!("generating {} ...", p.display());
            exo::synth::make_model(&exo::synth::preset("tinyllama-1b").unwrap(), &p).unwrap();
        }
        p
    })
}

/// Copies `from` to `to`, each chunk released `delay` after it arrived and paced to `bw` B/s.
pub async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    bw: f64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut line_free = Instant::now();
    while let Some((arrived, chunk)) = rx.recv().await {
        let start = (arrived + delay).max(line_free);
        line_free = start + Duration::from_secs_f64(chunk.len() as f64 / bw);
        tokio::time::sleep_until(line_free.into()).await;
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
}

/// A relay on `listen` to `target` emulating one link.
pub async fn relay(listen: TcpListener, target: String, delay: Duration, bw: f64) {
    loop {
        let Ok((inbound, _)) = listen.accept().await else { continue };
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, delay, bw));
            tokio::spawn(pump(or, iw, delay, bw));
        });
    }
}

/// Polls `base`'s `/cluster` until `pred` holds (30 s at most).
pub async fn wait_cluster(http: &reqwest::Client, base: &str, pred: impl Fn(serde_json::Value) -> bool, what: &str) {
    let t = Instant::now();
    loop {
        let v: Option<serde_json::Value> = match http.get(format!("{base}/cluster")).send().await {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        if v.is_some_and(&pred) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Links `model` into a models dir as `to`, and lets every node and store of this benchmark
/// follow links into the model's dir (`EXO_LINK_TARGETS`: links pointing outside the models dirs
/// are not models otherwise). Call before any thread or process starts.
pub fn link_model(model: &std::path::Path, to: &std::path::Path) {
    let model = std::fs::canonicalize(model).unwrap();
    let dir = model.parent().unwrap().to_path_buf();
    let mut targets: Vec<PathBuf> =
        std::env::var_os("EXO_LINK_TARGETS").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default();
    if !targets.contains(&dir) {
        targets.push(dir);
        std::env::set_var("EXO_LINK_TARGETS", std::env::join_paths(targets).unwrap());
    }
    std::os::unix::fs::symlink(&model, to).unwrap();
}
