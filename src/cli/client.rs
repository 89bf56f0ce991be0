//! A running node's own routes as typed calls, one function per endpoint: `GET /cluster`,
//! `GET /placements/preview`, `POST /bench`. The answers are the types the node writes them
//! with ([`crate::api::cluster_view`], [`Preview`], [`BenchReport`]); errors say what failed.

use crate::api::cluster_view::{BenchRequest, ClusterView};
use crate::pipeline::BenchReport;
use crate::runtime::preview::Preview;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot set up the HTTP client: {0}")]
    Setup(reqwest::Error),
    #[error("cannot reach the node at {base}: {source}")]
    Unreachable { base: String, source: reqwest::Error },
    /// The node refused: its status and its `{"error": ...}` message (else the body).
    #[error("the node answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("cannot read the node's answer to {path}: {source}")]
    Unreadable { path: &'static str, source: reqwest::Error },
}

/// An error answer as every route of the node writes it (Ollama's shape).
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// A refusal from the node, with its message when it sent one.
pub async fn refused(r: reqwest::Response) -> ClientError {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let message = serde_json::from_str::<ErrorBody>(&text).map(|b| b.error).unwrap_or(text);
    ClientError::Refused { status, message }
}

/// The node at `base` (`http://ADDR`).
pub struct Node {
    http: reqwest::Client,
    base: String,
}

impl Node {
    pub fn new(base: &str) -> Result<Node, ClientError> {
        Ok(Node::with(super::http().build().map_err(ClientError::Setup)?, base))
    }

    pub fn with(http: reqwest::Client, base: &str) -> Node {
        Node { http, base: base.to_string() }
    }

    /// Nodes, links, instances, hosted stages and transfers.
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        self.read("cluster", self.http.get(self.url("cluster"))).await
    }

    /// The candidate placements of `model` (a name), with a context of `ctx` per sequence.
    pub async fn preview(&self, model: &str, ctx: Option<u32>) -> Result<Preview, ClientError> {
        let mut q = vec![("model", model.to_string())];
        q.extend(ctx.map(|c| ("ctx", c.to_string())));
        self.read("placements/preview", self.http.get(self.url("placements/preview")).query(&q)).await
    }

    /// Runs `exo bench`'s tests on the node (this takes a while).
    pub async fn bench(&self, req: &BenchRequest) -> Result<BenchReport, ClientError> {
        self.read("bench", self.http.post(self.url("bench")).json(req)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    async fn read<T: DeserializeOwned>(
        &self,
        path: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let r = req.send().await.map_err(|source| ClientError::Unreachable { base: self.base.clone(), source })?;
        if !r.status().is_success() {
            return Err(refused(r).await);
        }
        r.json().await.map_err(|source| ClientError::Unreadable { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    /// A node that answers `/cluster` with `body` and `status`.
    async fn serve(status: StatusCode, body: &'static str) -> Node {
        let app = axum::Router::new().route("/cluster", get(move || async move { (status, body) }));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        Node::with(reqwest::Client::new(), &base)
    }

    #[tokio::test]
    async fn typed_answers_and_clear_errors() {
        let ok =
            r#"{"nodes":[{"name":"local","self":true}],"links":[],"instances":[],"hosted_stages":[],"transfers":[]}"#;
        let v = serve(StatusCode::OK, ok).await.cluster().await.unwrap();
        assert_eq!(v.here().unwrap().name, "local");
        let e = serve(StatusCode::FORBIDDEN, r#"{"error":"no token"}"#).await.cluster().await.unwrap_err();
        assert_eq!(e.to_string(), "the node answered 403 Forbidden: no token");
        let e = serve(StatusCode::BAD_GATEWAY, "plain text").await.cluster().await.unwrap_err();
        assert!(matches!(&e, ClientError::Refused { message, .. } if message == "plain text"), "{e}");
        let e = serve(StatusCode::OK, r#"{"nodes": 3}"#).await.cluster().await.unwrap_err();
        assert!(matches!(e, ClientError::Unreadable { path: "cluster", .. }), "{e}");
        let gone = Node::with(reqwest::Client::new(), "http://127.0.0.1:9");
        assert!(matches!(gone.cluster().await.unwrap_err(), ClientError::Unreachable { .. }));
    }
}
