//! Throughput of the HTTP API under 32 concurrent streaming clients (bounded: a fixed number of
//! requests). `cargo bench --bench api_load` (env: BENCH_MODEL=<gguf>, default the generated
//! tiny-llama; BENCH_CLIENTS=32, BENCH_REQUESTS=4 per client, BENCH_TOKENS=32, BENCH_PARALLEL=4,
//! BENCH_QUEUE=32).

#[path = "common.rs"]
mod common;
#[path = "../tests/common/load.rs"]
mod load;

use exo::api::{self, AppState};
use exo::runtime::{Limits, Runtime};
use exo::store::Store;
use std::path::PathBuf;
use std::time::Duration;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (clients, per, tokens) =
        (env_or("BENCH_CLIENTS", 32usize), env_or("BENCH_REQUESTS", 4usize), env_or("BENCH_TOKENS", 32u32));
    let (parallel, queue) = (env_or("BENCH_PARALLEL", 4u32), env_or("BENCH_QUEUE", 32usize));
    let dir = tempfile::tempdir().unwrap();
    let model = match std::env::var("BENCH_MODEL") {
        Ok(p) => PathBuf::from(p),
        Err(_) => {
            let p = dir.path().join("src.gguf");
            exo::synth::make_model(&exo::synth::preset("tiny-llama").unwrap(), &p).unwrap();
            p
        }
    };
    let name = "bench-model";
    common::link_model(&model, &dir.path().join(format!("{name}.gguf")));
    let mut store = Store::from_env();
    store.dirs = vec![dir.path().to_path_buf()];
    store.read_only = vec![];
    store.hf_cache = None;
    store.ollama = None;
    store.offline = true;
    let limits = Limits {
        parallel,
        queue,
        default_ctx: 2048,
        keep_alive: Duration::from_secs(600),
        threads: 2,
        ..Limits::default()
    };
    let app = api::router(AppState { runtime: Runtime::new(store, limits, None) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    load::run(&base, name, 1, 1, 4).await; // load the model and warm up
    let r = load::run(&base, name, clients, per, tokens).await;
    let mut fl = r.first_line.clone();
    fl.sort();
    let pct = |p: f64| {
        fl.get(((fl.len() as f64 - 1.0) * p) as usize)
            .map(|d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
            .unwrap_or("-".into())
    };
    println!("model: {} ({:.1} MB); {clients} clients x {per} streaming /api/chat requests x {tokens} tokens; parallel {parallel}, queue {queue}", model.display(), std::fs::metadata(&model).unwrap().len() as f64 / 1e6);
    println!();
    println!("| requests | complete | 503 | other errors | tokens | wall time | tokens/s | requests/s | full response p50 / p95 |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {} | {} | {:.2} s | {:.1} | {:.2} | {} / {} |",
        r.requests,
        r.ok,
        r.busy_503,
        r.other_errors.len(),
        r.tokens,
        r.elapsed.as_secs_f64(),
        r.tokens as f64 / r.elapsed.as_secs_f64(),
        r.ok as f64 / r.elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.95)
    );
    assert!(r.other_errors.is_empty(), "{:?}", r.other_errors);
}
