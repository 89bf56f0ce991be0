//! A local stand-in for the Hugging Face hub: the endpoints hf-hub uses (repo info, ranged file
//! downloads with commit/etag headers), with switches to drop a connection mid-file or serve
//! corrupt bytes. Loopback only.
#![allow(dead_code)]

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
pub struct Hub {
    /// (repo, path) -> bytes
    pub files: Mutex<HashMap<(String, String), Vec<u8>>>,
    /// drop the connection once, after this many bytes of this file have been sent
    pub drop_at: Mutex<Option<(String, u64)>>,
    /// serve these files with flipped bytes
    pub corrupt: Mutex<Vec<String>>,
    /// flip the bytes of this file from this offset on (the header stays intact)
    pub corrupt_from: Mutex<Option<(String, u64)>>,
    /// answer requests for more than one byte with 200 and the whole file (Range ignored)
    pub ignore_range: Mutex<bool>,
    /// claim this total size in the Content-Range of requests for more than one byte
    pub claim_size: Mutex<Option<u64>>,
    /// (path, start, end) of every ranged request, in order
    pub requests: Mutex<Vec<(String, u64, u64)>>,
    pub info_requests: Mutex<usize>,
}

impl Hub {
    pub fn add(&self, repo: &str, path: &str, data: Vec<u8>) {
        self.files.lock().unwrap().insert((repo.into(), path.into()), data);
    }
    /// Bytes served for `path` by requests larger than the 1-byte metadata probes.
    pub fn data_requests(&self, path: &str) -> Vec<(u64, u64)> {
        self.requests.lock().unwrap().iter().filter(|r| r.0 == path && r.2 > r.1).map(|r| (r.1, r.2)).collect()
    }
    /// Bytes served for `path` by requests larger than the 1-byte metadata probes.
    pub fn data_bytes(&self, path: &str) -> u64 {
        self.data_requests(path).iter().map(|r| r.1 - r.0 + 1).sum()
    }
    pub fn total_requests(&self) -> usize {
        self.requests.lock().unwrap().len() + *self.info_requests.lock().unwrap()
    }
}

/// Serves `hub` on 127.0.0.1; returns the endpoint URL.
pub async fn serve(hub: Arc<Hub>) -> String {
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(info))
        .route("/{org}/{name}/resolve/{rev}/{*path}", get(file))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn info(State(hub): State<Arc<Hub>>, Path((org, name, _rev)): Path<(String, String, String)>) -> Response {
    *hub.info_requests.lock().unwrap() += 1;
    let repo = format!("{org}/{name}");
    let files = hub.files.lock().unwrap();
    let siblings: Vec<serde_json::Value> =
        files.keys().filter(|(r, _)| *r == repo).map(|(_, p)| serde_json::json!({ "rfilename": p })).collect();
    if siblings.is_empty() {
        return (StatusCode::NOT_FOUND, "no such repo").into_response();
    }
    Json(serde_json::json!({ "sha": COMMIT, "siblings": siblings })).into_response()
}

async fn file(
    State(hub): State<Arc<Hub>>,
    Path((org, name, _rev, path)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let repo = format!("{org}/{name}");
    let Some(data) = hub.files.lock().unwrap().get(&(repo, path.clone())).cloned() else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let len = data.len() as u64;
    let (start, end) = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().unwrap_or(len - 1).min(len - 1)))
        .unwrap_or((0, len - 1));
    hub.requests.lock().unwrap().push((path.clone(), start, end));
    let sha: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    let (start, end, full_answer) =
        if end > start && *hub.ignore_range.lock().unwrap() { (0, len - 1, true) } else { (start, end, false) };
    let mut body = data[start as usize..=end as usize].to_vec();
    if hub.corrupt.lock().unwrap().contains(&path) && body.len() > 1 {
        body.iter_mut().for_each(|b| *b ^= 0x5a);
    }
    if let Some((p, at)) = hub.corrupt_from.lock().unwrap().as_ref() {
        if *p == path && body.len() > 1 {
            for (i, b) in body.iter_mut().enumerate() {
                if start + i as u64 >= *at {
                    *b ^= 0x5a;
                }
            }
        }
    }
    let claimed = hub.claim_size.lock().unwrap().filter(|_| end > start).unwrap_or(len);
    let mut h = HeaderMap::new();
    h.insert("x-repo-commit", HeaderValue::from_static(COMMIT));
    h.insert("x-linked-etag", HeaderValue::from_str(&format!("\"{sha}\"")).unwrap());
    h.insert("etag", HeaderValue::from_str(&format!("\"{sha}\"")).unwrap());
    h.insert("content-range", HeaderValue::from_str(&format!("bytes {start}-{end}/{claimed}")).unwrap());
    h.insert("accept-ranges", HeaderValue::from_static("bytes"));
    // drop the connection part-way once, if asked
    let drop_after = {
        let mut d = hub.drop_at.lock().unwrap();
        match d.as_ref() {
            Some((p, at)) if *p == path && *at > start && *at <= end => {
                let n = (*at - start) as usize;
                *d = None;
                Some(n)
            }
            _ => None,
        }
    };
    let full = body.len();
    let stream_body = match drop_after {
        None => Body::from(body),
        Some(n) => {
            let head = body[..n].to_vec();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                Ok(head),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "dropped by the test hub")),
            ];
            Body::from_stream(futures_stream(chunks))
        }
    };
    h.insert("content-length", HeaderValue::from_str(&full.to_string()).unwrap());
    if full_answer {
        h.remove("content-range");
        return (StatusCode::OK, h, stream_body).into_response();
    }
    (StatusCode::PARTIAL_CONTENT, h, stream_body).into_response()
}

fn futures_stream(
    items: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    struct It(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);
    impl futures_core::Stream for It {
        type Item = Result<Vec<u8>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    It(items.into_iter())
}
