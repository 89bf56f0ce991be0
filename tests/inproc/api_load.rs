//! Bounded load: 32 concurrent streaming clients, a fixed number of requests each; every request
//! ends in a complete stream or a documented 503, and the server stays healthy.

use crate::common;

use exo::api::{self, AppState};
use exo::runtime::{Limits, Runtime};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_streaming_clients() {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), d.path().join("tiny-llama.gguf")).unwrap();
    let store = common::offline_store(d.path());
    // 4 sequences decode side by side, 8 may wait: 32 clients must see some 503s
    let limits = Limits {
        parallel: 4,
        queue: 8,
        default_ctx: 1024,
        keep_alive: Duration::from_secs(60),
        threads: 2,
        ..Limits::default()
    };
    let app = api::router(AppState { runtime: Runtime::new(store, limits, None) });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let r = tokio::time::timeout(Duration::from_secs(120), common::load::run(&base, "tiny-llama", 32, 3, 16))
        .await
        .expect("load test took over 2 minutes");
    println!(
        "{} requests: {} complete, {} busy (503), {} other errors; {} tokens in {:.2?} = {:.0} tok/s",
        r.requests,
        r.ok,
        r.busy_503,
        r.other_errors.len(),
        r.tokens,
        r.elapsed,
        r.tokens as f64 / r.elapsed.as_secs_f64()
    );
    assert!(r.other_errors.is_empty(), "{:?}", &r.other_errors[..r.other_errors.len().min(5)]);
    assert_eq!(r.ok + r.busy_503, r.requests);
    assert!(r.ok >= 12, "only {} requests completed", r.ok);
    assert_eq!(r.tokens, r.ok * 16);
    // still healthy afterwards
    let again = common::load::run(&base, "tiny-llama", 1, 1, 4).await;
    assert_eq!(again.ok, 1, "{again:?}");
}
