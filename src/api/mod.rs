//! The HTTP API every node serves (PRODUCT.md §5): Ollama at the root, OpenAI under `/v1`,
//! Anthropic's `/v1/messages`. Each is a thin translation over one internal generation request
//! ([`core`]); models load on demand ([`instances`]).

pub mod access;
pub mod anthropic;
pub mod cluster;
pub mod core;
pub mod instances;
pub mod ollama;
pub mod openai;
mod util;

pub use access::Access;
pub use instances::{Instances, Limits};

use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub instances: Arc<Instances>,
}

/// Request bodies above this are refused (413) before they are read whole.
pub const MAX_BODY: usize = 32 << 20;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(ollama::routes())
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(cluster::routes())
        .fallback(|| async { ollama::error(axum::http::StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// [`router`] behind the API key check and CORS that `access` asks for ([`access::apply`]).
pub fn router_with(state: AppState, access: &Access) -> Router {
    access::apply(router(state), access)
}
