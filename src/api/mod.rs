//! The HTTP API every node serves (docs/serving.md): Ollama at the root, OpenAI under `/v1`,
//! Anthropic's `/v1/messages`, and the cluster's own routes. Each is a thin translation over the
//! [`crate::runtime`]: requests become [`crate::runtime::GenRequest`]s, runtime errors become
//! each API's status and error shape in one place per API.

pub mod access;
pub mod anthropic;
mod anthropic_stream;
mod body;
pub mod cluster;
pub mod cluster_view;
pub mod dashboard;
mod embed;
mod errors;
mod guard;
pub mod metrics;
pub mod ollama;
mod ollama_chat;
mod ollama_stream;
pub mod openai;
mod openai_stream;
mod reply;
#[cfg(test)]
mod reply_tests;
mod responses;
mod responses_stream;
mod sampling;
pub mod server;
mod tools;
mod util;

use crate::runtime::{ErrorKind, Runtime, RuntimeError};
pub use access::Access;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub runtime: Arc<Runtime>,
}

/// Request bodies above this are refused (413) before they are read whole: a conversation that
/// fills a 128k-token context is well below it.
pub const MAX_BODY: usize = 4 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(ollama::routes())
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(responses::routes())
        .merge(cluster::routes())
        .merge(embed::routes())
        .merge(metrics::routes())
        .merge(dashboard::routes())
        .fallback(|uri: axum::http::Uri| async move {
            // OpenAI clients read errors in OpenAI's shape
            if uri.path().starts_with("/v1/") {
                openai::error(StatusCode::NOT_FOUND, format!("no such route: {}", uri.path()))
            } else {
                ollama::error(StatusCode::NOT_FOUND, "no such route")
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // bodies read whole (bounded in size and time) before any handler runs
        .layer(axum::middleware::from_fn(body::bounded))
        .with_state(state)
}

/// An error in the shape of the API `path` belongs to (for layers that run before a route).
fn error_for(path: &str, status: StatusCode, msg: impl std::fmt::Display) -> axum::response::Response {
    if path.starts_with("/v1/messages") {
        anthropic::error(status, msg)
    } else if path.starts_with("/v1/") {
        openai::error(status, msg)
    } else {
        ollama::error(status, msg)
    }
}

/// [`router`] behind the API key check and CORS that `access` asks for ([`access::apply`]).
/// [`router`] behind the API key check and CORS that `access` asks for ([`access::apply`]).
pub fn router_with(state: AppState, access: &Access) -> Router {
    access::apply(router(state), access)
}

/// The status every API answers a runtime error with.
pub fn status(e: &RuntimeError) -> StatusCode {
    match e.kind() {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
    }
}
