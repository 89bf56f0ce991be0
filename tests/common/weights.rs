//! Shared steps of the weights tests: generating through a node, placing, a window's bytes.
#![allow(dead_code)]

use exo::gguf::{GgufFile, ModelFiles, ModelShape};
use exo::store::partial::{window_ranges, Partial};
use serde_json::{json, Value};
use std::path::Path;

/// `n` greedy tokens of `model` through the node at `base`.
pub async fn generate_n(http: &reqwest::Client, base: &str, model: &str, prompt: &str, n: u32) -> String {
    let body = json!({ "model": model, "prompt": prompt, "stream": false, "raw": true,
        "options": { "num_predict": n, "seed": 0, "temperature": 0.0 } });
    let r = http.post(format!("{base}/api/generate")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{v}");
    v["response"].as_str().unwrap().to_string()
}

/// Places `model` as `placement` (node names and layer ranges) through the node at `base`.
pub async fn place_model(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    placement: Value,
) -> Result<Value, (reqwest::StatusCode, String)> {
    let r = http.post(format!("{base}/instances")).json(&json!({ "model": model, "placement": placement })).send();
    let r = r.await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    match status.is_success() {
        true => Ok(serde_json::from_str(&text).unwrap()),
        false => Err((status, text)),
    }
}

/// Bytes a stage of layers `[b, e)` of the model at `path` needs (header included).
pub fn window_bytes(path: &Path, b: u32, e: u32) -> u64 {
    let shape = ModelShape::from_files(&ModelFiles::open(path).unwrap()).unwrap();
    window_ranges(&GgufFile::open(path).unwrap(), shape.n_layer, b, e).iter().map(|r| r.1 - r.0).sum()
}

/// The partial file of `model` under a node's models dir, if there is one.
pub fn partial_of(dir: &Path, model: &str) -> Option<Partial> {
    Partial::open(&Partial::path_in(dir, model))
}

/// Whether `allocated` disk bytes are within 5% + 1 MiB of `window` bytes (the bound).
pub fn about(allocated: u64, window: u64) -> bool {
    allocated.abs_diff(window) <= window / 20 + (1 << 20)
}
