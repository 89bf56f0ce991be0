//! How this process joins the cluster: `exo serve` and `exo run` (whose session joins as a node
//! when it finds peers) take the same flags and environment variables, parsed once by clap.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct PeerArgs {
    /// Nodes in different namespaces never join.
    #[arg(long, env = "EXO_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Peers to connect to (host:port of their peer address), comma-separated.
    #[arg(long, env = "EXO_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// This node's name in the cluster (default: the host name; `exo run`: the host name and
    /// "-run").
    #[arg(long, env = "EXO_NODE_NAME")]
    pub node_name: Option<String>,
    /// Do not announce or browse with mDNS (use --peers only).
    #[arg(long, env = "EXO_NO_DISCOVERY", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub no_discovery: bool,
    /// Use this decode speed (GB/s) instead of measuring it at startup.
    #[arg(long, env = "EXO_DECODE_GBPS", hide = true)]
    pub decode_gbps: Option<f64>,
}

impl PeerArgs {
    /// The peers given, trimmed, empty entries dropped (`EXO_PEERS="a:1, b:2,"`).
    pub fn peers(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
    }
}
