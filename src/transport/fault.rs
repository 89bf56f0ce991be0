//! Which stage of a cluster pipeline failed, and how: produced where a stage operation fails (the
//! code that knows which stage and node it talked to), carried to healing as it is.

use super::PeerError;
use serde::{Deserialize, Serialize};

/// A failed stage: its index in the pipeline, its node (as the coordinator's placement names
/// it) and what went wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("stage {stage} on {node}: {kind}")]
pub struct StageFault {
    pub stage: usize,
    pub node: String,
    pub kind: FaultKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum FaultKind {
    /// Talking to the stage's node failed (connecting, sending, a timeout of a request).
    #[error("{detail}")]
    Link { detail: String },
    #[error("the connection closed (the node died or left)")]
    Closed,
    #[error("the node went away (connection closed or heartbeats missed)")]
    Gone,
    #[error("no answer in time")]
    Timeout,
    /// The stage before this one could not hand its hidden states on (this stage's node is
    /// the one that is unreachable).
    #[error("stage {from} cannot reach the next stage at {addr}: {detail}")]
    Unreachable { from: usize, addr: String, detail: String },
    /// The stage's engine failed on a batch.
    #[error("{detail}")]
    Engine { detail: String },
    #[error("the stage was unloaded")]
    Unloaded,
    /// The node answered with a typed refusal (a load it cannot take, no such stage, ...).
    #[error(transparent)]
    Refused(PeerError),
    /// The node's answer could not be used.
    #[error("malformed answer: {detail}")]
    Malformed { detail: String },
}

impl FaultKind {
    /// A transport failure talking to a stage, kept typed when the peer answered with an error.
    pub fn from_transport(e: super::TransportError) -> FaultKind {
        match e {
            crate::transport::TransportError::Peer(p) => FaultKind::Refused(p),
            super::TransportError::Closed => FaultKind::Closed,
            e => FaultKind::Link { detail: e.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_reads_as_before_and_keeps_refusals_typed() {
        let kind = FaultKind::Unreachable { from: 0, addr: "10.0.0.2:1".into(), detail: "connection refused".into() };
        let f = StageFault { stage: 1, node: "b".into(), kind };
        assert_eq!(
            f.to_string(),
            "stage 1 on b: stage 0 cannot reach the next stage at 10.0.0.2:1: connection refused"
        );
        let r = crate::transport::LoadRefusal::NoModel { node: "b".into(), model: "m".into() };
        let e = crate::transport::TransportError::Peer(PeerError::Load(r.clone()));
        let f = StageFault { stage: 0, node: "b".into(), kind: FaultKind::from_transport(e) };
        assert_eq!(f.kind, FaultKind::Refused(PeerError::Load(r)));
        assert!(f.to_string().contains("does not have model"), "{f}");
    }
}
