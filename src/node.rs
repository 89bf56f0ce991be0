//! A node: wires the store, the peer side, the runtime and the HTTP API together and serves until
//! shutdown.

use crate::api::{self, Access, AppState};
use crate::cluster::{self, ClusterNode};
use crate::runtime::{Limits, Runtime};
use crate::store::Store;
use std::future::Future;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("cannot start the peer listener: {0}")]
    Peer(#[from] crate::transport::TransportError),
}

/// Longest wait on shutdown for coordinators to move this node's stages away.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(20);

pub struct NodeConfig {
    pub api_addr: SocketAddr,
    pub limits: Limits,
    pub store: Store,
    /// API key and CORS origins.
    pub access: Access,
    /// The peer side (None: a node that serves only its own machine).
    pub cluster: Option<cluster::NodeConfig>,
}

/// Where a node listens once its sockets are bound (a port 0 in the config is chosen by the OS).
#[derive(Debug, Clone)]
pub struct Bound {
    pub api: SocketAddr,
    /// The peer address other nodes are told (None: no peer side).
    pub peer: Option<String>,
}

/// Serves the API until `shutdown` completes; in-flight streams end when their generation does.
pub async fn serve(cfg: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), NodeError> {
    serve_announced(cfg, shutdown, |_| {}).await
}

/// As [`serve`], calling `announce` once both ports are bound and before the first request is
/// answered (what `exo serve` prints: the addresses are real then, also when a port was 0).
pub async fn serve_announced(
    cfg: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    announce: impl FnOnce(&Bound),
) -> Result<(), NodeError> {
    let listener = tokio::net::TcpListener::bind(cfg.api_addr)
        .await
        .map_err(|source| NodeError::Bind { addr: cfg.api_addr, source })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    let node = match cfg.cluster {
        Some(c) => Some(ClusterNode::start(c, cfg.store.clone()).await?),
        None => None,
    };
    let runtime = Runtime::new(cfg.store, cfg.limits, node.clone());
    // a loopback-bound API answers only loopback Host names (DNS rebinding)
    let access = api::Access { loopback_only: addr.ip().is_loopback(), ..cfg.access };
    let app = api::router_with(AppState { runtime: runtime.clone() }, &access);
    if !addr.ip().is_loopback() && access.api_key.is_none() {
        tracing::warn!(%addr, "the API listens beyond this machine WITHOUT an API key: anyone who can reach it can use it (set --api-key or EXO_API_KEY)");
    }
    tracing::info!(%addr, "serving the API");
    announce(&Bound { api: addr, peer: node.as_ref().map(|n| n.peer_addr().to_string()) });
    // on shutdown: running generations end with an error, peers are told, then the server
    // drains; stages unload when their instances drop
    let stop = async move {
        shutdown.await;
        runtime.shut_down();
        if let Some(n) = &node {
            n.goodbye().await;
            // coordinators move the stages this node hosts elsewhere (re-place and replay);
            // leaving once they are gone keeps their streams going
            n.drain(DRAIN).await;
        }
    };
    api::server::serve(listener, app, api::server::ServeLimits::default(), stop).await.map_err(NodeError::Serve)
}
