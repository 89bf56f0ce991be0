//! `exo serve` (also plain `exo`): run a node until Ctrl-C or SIGTERM.

use super::peer_args::PeerArgs;
use crate::node::{self, NodeConfig};
use crate::runtime::Limits;
use crate::store::Store;
use clap::Args;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub peer: PeerArgs,
    /// Where the HTTP API listens (0.0.0.0:52415 to expose it).
    #[arg(long, env = "EXO_API_ADDR", default_value = crate::config::DEFAULT_API_ADDR)]
    pub api_addr: SocketAddr,
    /// Requests decoded side by side per loaded model.
    #[arg(long, env = "EXO_PARALLEL", default_value_t = 4)]
    pub parallel: u32,
    /// Requests that may wait per loaded model before 503s.
    #[arg(long, env = "EXO_MAX_QUEUE", default_value_t = 32)]
    pub max_queue: usize,
    /// Context size when a request does not set one (num_ctx).
    #[arg(long, env = "EXO_CONTEXT_LENGTH", default_value_t = 4096)]
    pub ctx_size: u32,
    /// Most tokens one request may generate (default: the context).
    #[arg(long, env = "EXO_MAX_TOKENS_CAP")]
    pub max_tokens_cap: Option<u32>,
    /// How long an idle model stays loaded (seconds).
    #[arg(long, env = "EXO_KEEP_ALIVE", default_value_t = 300)]
    pub keep_alive: u64,
    #[arg(long, env = "EXO_THREADS")]
    pub threads: Option<i32>,
    /// Batch-invariant kernels: a request's text never depends on what else is decoded beside it,
    /// and recovery after a node loss continues it byte for byte. Off by default (llama.cpp's
    /// fastest kernels: concurrent requests, prompt-cache hits and replays may drift from the
    /// solo text); costs up to 47% of decode speed (bench/results/exact.md).
    #[arg(long, env = "EXO_EXACT", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub exact: bool,
    /// Speculative decoding: `ngram` proposes tokens from the text so far (prompt lookup) and
    /// verifies several per step; a model's name: that small model (same vocabulary) proposes;
    /// `none` decodes one token per step; `auto` (default): `ngram` with --exact (the output is
    /// unchanged), `none` without.
    #[arg(long, env = "EXO_DRAFT", default_value = "auto", value_parser = super::parse_draft)]
    pub draft: super::DraftArg,
    /// Where peers connect (node-to-node traffic).
    #[arg(long, env = "EXO_PEER_ADDR", default_value = "0.0.0.0:52416")]
    pub peer_addr: SocketAddr,
    /// Caps the memory this node offers (e.g. 48GiB).
    #[arg(long, env = "EXO_MEMORY_LIMIT")]
    pub memory_limit: Option<String>,
    /// The peer address other nodes should use for this one (default: the bound address).
    #[arg(long, env = "EXO_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// Join the cluster of this token (from `exo cluster token` on one of its nodes); saved to
    /// the config dir when this machine has no cluster secret yet.
    #[arg(long = "join", env = "EXO_CLUSTER_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// Require this key on every API route but `GET /` and `GET /api/version`
    /// (`Authorization: Bearer KEY` or `x-api-key: KEY`).
    #[arg(long, env = "EXO_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Browser origins allowed to call the API (CORS), comma-separated, `*` wildcards
    /// (e.g. `http://localhost:*`); none by default.
    #[arg(long, env = "EXO_ORIGINS", value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Host names the API answers besides loopback ones when it listens on loopback
    /// (DNS-rebinding protection), comma-separated, `*` wildcards (e.g. `mybox.lan`).
    #[arg(long, env = "EXO_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// UNSAFE, benchmarks only: peer records travel unencrypted (the handshake still
    /// authenticates). Only nodes with the same setting talk to each other.
    #[arg(long, env = "EXO_UNSAFE_PLAINTEXT_PEERS", hide = true, value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub unsafe_plaintext_peers: bool,
}

pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "exo-node".into())
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let mut limits = Limits {
        parallel: a.parallel.max(1),
        queue: a.max_queue,
        default_ctx: a.ctx_size,
        keep_alive: Duration::from_secs(a.keep_alive),
        max_tokens: a.max_tokens_cap.filter(|n| *n > 0),
        exact: a.exact,
        draft: a.draft.0,
        draft_model: a.draft.1.clone(),
        ..Limits::default()
    };
    if let Some(t) = a.threads {
        limits.threads = t;
    }
    let limits_threads = limits.threads;
    let memory_limit = match &a.memory_limit {
        Some(m) => Some(
            crate::placement::units::parse_size(m).map_err(|e| super::UsageError(format!("--memory-limit: {e}")))?,
        ),
        None => None,
    };
    limits.memory_limit = memory_limit;
    let loaded = crate::secret::for_this_machine(a.join.as_deref())?;
    for n in &loaded.notes {
        eprintln!("{n}");
    }
    let security = crate::transport::Security {
        plaintext: a.unsafe_plaintext_peers,
        ..crate::transport::Security::new(std::sync::Arc::new(loaded.keys))
    };
    let api_key = a.api_key.filter(|k| !k.is_empty());
    if !a.api_addr.ip().is_loopback() && api_key.is_none() {
        eprintln!("WARNING: the API at {} is reachable from other machines and has NO API KEY:", a.api_addr);
        eprintln!("WARNING: anyone on the network can run models here. Set --api-key or EXO_API_KEY.");
    }
    if security.plaintext {
        eprintln!("WARNING: EXO_UNSAFE_PLAINTEXT_PEERS is set: peer traffic is NOT encrypted (benchmarks only)");
    }
    let key_id = security.key_id();
    let peers = a.peer.peers();
    let cfg = NodeConfig {
        api_addr: a.api_addr,
        limits,
        store: Store::from_env(),
        access: crate::api::Access {
            api_key,
            origins: a.origins,
            allowed_hosts: a.allowed_hosts,
            loopback_only: false,
        },
        cluster: Some(crate::cluster::NodeConfig {
            namespace: a.peer.namespace,
            node_name: a.peer.node_name.unwrap_or_else(host_name),
            peer_bind: a.peer_addr,
            peers,
            memory_limit,
            decode_gbps: a.peer.decode_gbps,
            cache_dir: crate::config::cache_dir(),
            threads: limits_threads,
            discovery: !a.peer.no_discovery,
            advertise: a.advertise_addr,
            security,
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        // printed once bound (a failed bind prints only its error; a port 0 shows the real one):
        // tests read the addresses back from this line
        node::serve_announced(cfg, shutdown_signal(), |b| {
            let peer = b.peer.as_deref().unwrap_or("none");
            eprintln!(
                "exo {} serving on http://{} (peer port {peer}, cluster key id {key_id})",
                env!("CARGO_PKG_VERSION"),
                b.api
            );
        })
        .await
    })?;
    eprintln!("exo stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
