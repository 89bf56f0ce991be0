//! The node's inbound frames, one task for all connections: each frame is decoded once and
//! handed on without waiting for the work it asks for (stages have their own queues, replies go
//! out from their own tasks), so no frame waits behind another's work: a busy stage or a peer
//! that reads slowly stalls nothing else, heartbeats included.

use super::{host, progress, weights, Answer, ClusterNode};
use crate::pipeline::{FaultKind, StageFault};
use crate::transport::{Conn, Incoming, Kind, Message, PeerError, TransportError};
use tokio::sync::mpsc;

pub(super) async fn dispatch(node: std::sync::Weak<ClusterNode>, mut rx: mpsc::Receiver<Incoming>) {
    while let Some(inc) = rx.recv().await {
        let Some(n) = node.upgrade() else { return };
        n.note_peer(&inc.conn);
        let Incoming { frame, conn, queued } = inc;
        let request = frame.request;
        let msg = match Message::decode(frame.kind, &frame.payload) {
            Ok(m) => m,
            Err(e) => {
                malformed(&n, frame.kind, frame.request, conn, e);
                continue;
            }
        };
        drop(frame);
        match msg {
            Message::Ping { .. } => {
                let pong = Message::Pong(Box::new(n.pong()));
                // a peer that does not read its answers must not hold up the other frames
                tokio::spawn(async move { conn.tell(request, &pong).await });
            }
            Message::Tokens(r) => n.answered(request, r.map(Answer::Tokens)),
            Message::Embedding(r) => n.answered(request, r.map(Answer::Embedding)),
            m @ (Message::LoadStage(_)
            | Message::Forward(_)
            | Message::EmbedForward(_)
            | Message::SeqOp(_)
            | Message::Unload { .. }) => host::handle(&n, m, conn, request, queued),
            Message::WeightsAsk(ask) => weights::serve(&n, ask, conn, request),
            // a stage on this node reports to itself: its transfer is listed here already
            Message::LoadProgress(p) if conn.peer().node_id != n.hello.node_id => {
                progress::record(&n.store.transfers, &conn.peer().node_name, &p)
            }
            Message::Bye => {
                let id = conn.peer().node_id.clone();
                n.departed.lock().unwrap().insert(id.clone());
                n.peers.lock().unwrap().remove(&id);
                tracing::info!(peer = %conn.peer().node_name, "peer left");
            }
            m => tracing::debug!(kind = ?m.kind(), "ignored peer message"),
        }
    }
}

/// A frame that does not decode: a request is answered with why (its asker does not wait for a
/// timeout), a batch's answer fails its waiter, anything else is dropped.
fn malformed(n: &ClusterNode, kind: u16, request: u64, conn: Conn, e: TransportError) {
    tracing::warn!(peer = %conn.peer().node_name, kind, "dropping a malformed peer message: {e}");
    match Kind::from_u16(kind) {
        Some(k @ (Kind::LoadStage | Kind::SeqOp | Kind::WeightsAsk)) => {
            let e = PeerError::Malformed { what: format!("{k:?} request"), detail: e.to_string() };
            tokio::spawn(async move { conn.tell(request, &Message::Error(e)).await });
        }
        // the stage is unknown here: the coordinator's watch names the last one (which answers)
        Some(Kind::Tokens | Kind::Embedding) => n.answered(
            request,
            Err(StageFault {
                stage: usize::MAX,
                node: conn.peer().node_name.clone(),
                kind: FaultKind::Malformed { detail: e.to_string() },
            }),
        ),
        _ => {}
    }
}

impl ClusterNode {
    /// Hands a batch's answer to whoever waits for it.
    fn answered(&self, request: u64, r: Result<Answer, StageFault>) {
        if let Some(w) = self.waiters.lock().unwrap().remove(&request) {
            let _ = w.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{BatchMsg, Security};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    async fn node(name: &str, dir: &std::path::Path) -> Arc<ClusterNode> {
        let mut store = crate::store::Store::from_env();
        (store.dirs, store.read_only, store.hf_cache, store.ollama) = (vec![dir.into()], vec![], None, None);
        store.offline = true;
        let keys = crate::secret::NodeKeys::ephemeral(crate::secret::ClusterSecret::from_bytes([5; 32])).unwrap();
        let cfg = super::super::NodeConfig {
            namespace: "t".into(),
            node_name: name.into(),
            peer_bind: "127.0.0.1:0".parse().unwrap(),
            peers: vec![],
            memory_limit: None,
            decode_gbps: Some(10.0),
            cache_dir: dir.join("cache"),
            threads: 1,
            discovery: false,
            advertise: None,
            security: Security::new(Arc::new(keys)),
        };
        ClusterNode::start(cfg, store).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stage_that_takes_no_batches_stalls_no_other_frame() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node("a", d.path()).await, node("b", d.path()).await);
        // a stage on b whose worker never takes a job (a decode that does not end)
        let (tx, _stuck) = mpsc::unbounded_channel();
        b.host.stages.lock().unwrap().insert((1, 0), tx);
        let c = a.conn(b.peer_addr()).await.unwrap();
        let batch = BatchMsg {
            instance: 1,
            stage: 0,
            sample: true,
            pos: vec![0],
            seq: vec![0],
            output: vec![true],
            tokens: vec![1],
            hidden: vec![],
            spec: Default::default(),
            reply_to: a.peer_addr().to_string(),
        };
        // far more than a stage queue of 256 jobs held (which stalled every frame of the node)
        for _ in 0..1000 {
            c.tell(7, &Message::Forward(batch.clone())).await.unwrap();
        }
        let t = Instant::now();
        let f = c.request(Kind::Ping, vec![], Duration::from_secs(5)).await.expect("the heartbeat is answered");
        assert!(matches!(Message::decode(f.kind, &f.payload), Ok(Message::Pong(_))));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // and a batch for a stage b does not hold is answered with a typed fault at once
        let rx = a.wait_tokens(99);
        c.tell(99, &Message::Forward(BatchMsg { instance: 2, ..batch })).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
        match r {
            Err(StageFault { stage: 0, kind: FaultKind::Refused(PeerError::NoStage { instance: 2, .. }), .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
