//! Request bodies read whole before a handler runs, bounded in size and in time: a declared
//! `Content-Length` over [`MAX_BODY`] gets its 413 before a byte of the body is read, and a body
//! that trickles in (slowloris) gets a 408 after [`BODY_TIMEOUT`] instead of holding a task.

use super::{error_for, MAX_BODY};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use std::time::Duration;

/// Longest time a whole request body may take to arrive (4 MiB in 30 s is 140 kB/s).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn bounded(req: Request, next: Next) -> Response {
    read(req, next, BODY_TIMEOUT).await
}

async fn read(req: Request, next: Next, limit: Duration) -> Response {
    let path = req.uri().path().to_string();
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large(&path, declared);
    }
    let (parts, mut body) = req.into_parts();
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                let msg = format!("the request body did not arrive within {} s", limit.as_secs());
                return error_for(&path, StatusCode::REQUEST_TIMEOUT, msg);
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return error_for(&path, StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}"))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > MAX_BODY {
                        return too_large(&path, None);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

fn too_large(path: &str, declared: Option<u64>) -> Response {
    let size = declared.map(|n| format!(" (Content-Length: {n})")).unwrap_or_default();
    let msg = format!("the request body is over {} MiB{size}", MAX_BODY >> 20);
    let mut r = error_for(path, StatusCode::PAYLOAD_TOO_LARGE, msg);
    // the rest of the body is never read: the connection cannot carry another request
    r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    fn app(limit: Duration) -> Router {
        Router::new()
            .route("/echo", post(|b: axum::body::Bytes| async move { b.len().to_string() }))
            .layer(axum::middleware::from_fn(move |req: Request, next: Next| read(req, next, limit)))
    }

    #[tokio::test]
    async fn oversized_declared_length_is_refused_before_reading_and_small_bodies_pass() {
        // a body that never ends: only the Content-Length check can answer
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        let endless = Body::from_stream(tokio_stream(rx));
        let req = Request::post("/echo").header("content-length", (MAX_BODY + 1).to_string()).body(endless).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), app(Duration::from_secs(30)).oneshot(req)).await;
        let r = r.expect("answered at once").unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(r.headers()[header::CONNECTION], "close");

        let r = app(Duration::from_secs(30)).oneshot(Request::post("/echo").body(Body::from("hello")).unwrap()).await;
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(axum::body::to_bytes(r.into_body(), 100).await.unwrap(), "5");
    }

    #[tokio::test]
    async fn a_trickling_body_times_out_and_an_undeclared_oversized_one_is_cut() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        tx.send(Ok(axum::body::Bytes::from_static(b"{"))).await.unwrap();
        let slow = Body::from_stream(tokio_stream(rx));
        let r = app(Duration::from_millis(200)).oneshot(Request::post("/echo").body(slow).unwrap()).await.unwrap();
        assert_eq!(r.status(), StatusCode::REQUEST_TIMEOUT);
        drop(tx);

        let big = vec![b'a'; MAX_BODY + 1];
        let r = app(Duration::from_secs(30)).oneshot(Request::post("/echo").body(Body::from(big)).unwrap()).await;
        assert_eq!(r.unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// An mpsc receiver as a body stream (no tokio-stream dependency).
    fn tokio_stream<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
        struct S<T>(tokio::sync::mpsc::Receiver<T>);
        impl<T> futures_core::Stream for S<T> {
            type Item = T;
            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<T>> {
                self.0.poll_recv(cx)
            }
        }
        let _ = &mut rx;
        S(rx)
    }
}
