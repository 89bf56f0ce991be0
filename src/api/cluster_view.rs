//! `GET /cluster` and the cluster routes' bodies as types: the node writes and reads them, the
//! CLI (`exo cluster`, `exo ps`, `exo run`, `exo bench`) reads and writes them through
//! [`crate::cli::client`]. The dashboard reads the same JSON, so the field names are its
//! contract: a field some nodes lack (a node without a cluster has only a name) is left out
//! rather than written as null.

use crate::cluster::holdings::Held;
use crate::cluster::links::Measured;
use crate::cluster::HostedStage;
use crate::pipeline::BenchConfig;
use crate::profile::Profile;
use crate::runtime::RecoveryRecord;
use crate::store::Transfer;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node first, then its peers.
    pub nodes: Vec<NodeView>,
    /// Every measured direction between two nodes.
    pub links: Vec<Measured>,
    /// The instances this node coordinates.
    pub instances: Vec<InstanceView>,
    /// Stages this node runs for coordinators (itself included).
    pub hosted_stages: Vec<HostedStage>,
    /// This node's downloads and window fetches (and its stage nodes'), running and recent.
    pub transfers: Vec<Transfer>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub name: String,
    /// Its peer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// This node's cluster namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The node that answered.
    #[serde(rename = "self")]
    pub is_self: bool,
    /// A peer: when its last pong came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms_ago: Option<u64>,
    /// Absent until a peer's profile arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<Profile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Vec<Held>>,
    /// First 8 bytes of its static key, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// This node's cluster key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_key_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub model: String,
    pub stages: Vec<NodeStage>,
    pub active_requests: usize,
    pub waiting_requests: usize,
    pub sequences: u32,
    /// Positions per sequence.
    pub context_length: u32,
    /// Each stage's memory as the placement estimates it: weights, KV and compute buffers.
    pub stage_memory_bytes: Vec<u64>,
    pub size: u64,
    /// None: kept loaded for ever.
    pub expires_in_seconds: Option<u64>,
    pub recoveries: Vec<RecoveryRecord>,
    /// Speculative decoding: the proposer, acceptance and tokens per verify.
    #[serde(default)]
    pub speculation: crate::runtime::speculate::SpecView,
}

/// Layers `[begin, end)` on a node: an instance's stage, or one of a placement `POST /instances`
/// and `POST /bench` take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStage {
    pub node: String,
    pub begin: u32,
    pub end: u32,
}

/// `POST /instances`' answer: the instance and where its stages run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Placed {
    pub id: String,
    pub model: String,
    pub stages: Vec<NodeStage>,
}

/// `POST /instances`: load `model` with the stages where they are named.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlaceRequest {
    pub model: String,
    pub placement: Vec<NodeStage>,
    pub num_ctx: Option<u32>,
}

/// `POST /bench`: `exo bench`'s tests on the model's instance.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchRequest {
    pub model: String,
    /// A forced placement; without it the node places the model as for any request.
    pub placement: Option<Vec<NodeStage>>,
    /// Tokens per decode call (the prompt's chunk size) for a forced placement.
    pub batch_size: Option<u32>,
    #[serde(flatten)]
    pub config: BenchConfig,
}

impl ClusterView {
    /// The node that answered.
    pub fn here(&self) -> Option<&NodeView> {
        self.nodes.iter().find(|n| n.is_self)
    }

    /// The instance of `model` (`NAME` also finds `NAME:latest`'s, as the node names it).
    pub fn instance(&self, model: &str) -> Option<&InstanceView> {
        self.instances.iter().find(|i| i.model == model || Some(i.model.as_str()) == model.strip_suffix(":latest"))
    }
}

impl InstanceView {
    /// Its stages as `node=begin:end` joined by `sep`.
    pub fn stages_text(&self, sep: &str) -> String {
        self.stages.iter().map(|s| format!("{}={}:{}", s.node, s.begin, s.end)).collect::<Vec<_>>().join(sep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_local_node_is_written_with_its_name_alone_and_read_back() {
        let v = ClusterView {
            nodes: vec![NodeView { name: "local".into(), is_self: true, ..NodeView::default() }],
            instances: vec![InstanceView {
                id: "m".into(),
                model: "m".into(),
                stages: vec![
                    NodeStage { node: "a".into(), begin: 0, end: 4 },
                    NodeStage { node: "b".into(), begin: 4, end: 8 },
                ],
                ..InstanceView::default()
            }],
            ..ClusterView::default()
        };
        let j = serde_json::to_value(&v).unwrap();
        assert_eq!(j["nodes"][0], json!({ "name": "local", "self": true }));
        assert!(j["instances"][0]["expires_in_seconds"].is_null());
        let keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["nodes", "links", "instances", "hosted_stages", "transfers"]);
        let back: ClusterView = serde_json::from_value(j).unwrap();
        assert_eq!(back.here().unwrap().name, "local");
        let i = back.instance("m:latest").unwrap();
        assert_eq!(i.stages_text(","), "a=0:4,b=4:8");
        assert!(back.instance("other").is_none());
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_defaults() {
        for bad in [
            json!({ "nodes": [{ "name": 5, "self": true }], "links": [], "instances": [], "hosted_stages": [], "transfers": [] }),
            json!({ "nodes": [], "links": [], "instances": [{ "id": "m" }], "hosted_stages": [], "transfers": [] }),
            json!({ "nodes": [] }),
            json!([]),
        ] {
            assert!(serde_json::from_value::<ClusterView>(bad.clone()).is_err(), "{bad}");
        }
    }
}
