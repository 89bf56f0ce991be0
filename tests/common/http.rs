//! The API through axum's `oneshot` on a runtime over generated models: helpers for the API
//! tests.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use exo::api::{self, AppState};
use exo::runtime::{Limits, Runtime};
use exo::store::Store;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub fn store(dir: &Path) -> Store {
    super::offline_store(dir)
}

/// A models dir holding tiny-llama (symlinked from the shared generated model).
pub fn models_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(super::model("tiny-llama"), d.path().join("tiny-llama.gguf")).unwrap();
    d
}

pub fn app(models: &Path, limits: Limits) -> (Router, Arc<Runtime>) {
    let runtime = Runtime::new(store(models), limits, None);
    (api::router(AppState { runtime: runtime.clone() }), runtime)
}

pub fn limits() -> Limits {
    Limits {
        parallel: 2,
        queue: 4,
        default_ctx: 512,
        keep_alive: Duration::from_secs(300),
        threads: 2,
        ..Limits::default()
    }
}

pub async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, String, String) {
    let req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    let req = req.body(body.map(|b| Body::from(b.to_string())).unwrap_or(Body::empty())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

pub async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, String, String) {
    call(app, Method::POST, uri, Some(body)).await
}

pub fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// SSE `data:` payloads (and `event:` names).
pub fn sse(s: &str) -> Vec<(Option<String>, String)> {
    s.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let ev = b.lines().find_map(|l| l.strip_prefix("event: ")).map(str::to_string);
            let data = b
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_else(|| panic!("no data in {b:?}"))
                .to_string();
            (ev, data)
        })
        .collect()
}
