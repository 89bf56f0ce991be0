//! A stage node's window fetch, reported to the coordinator that asked for the load (so that
//! `exo run` there draws a bar per node and its `/cluster` lists the transfer), and recorded
//! there on arrival.

use super::ClusterNode;
use crate::transport::{Conn, Kind, LoadProgressMsg, LoadStage, ProgressItem, MAX_PROGRESS_ITEMS};
use std::sync::Arc;
use std::time::Duration;

/// How often a running fetch is reported.
const EVERY: Duration = Duration::from_millis(300);
/// Longest text field kept from a peer's report.
const MAX_TEXT: usize = 200;

/// This node's window transfers of `model` newer than transfer `after`.
fn items(node: &ClusterNode, model: &str, after: u64) -> Vec<ProgressItem> {
    let mut v: Vec<ProgressItem> = node
        .store
        .transfers
        .list()
        .into_iter()
        .filter(|t| t.id > after && t.node.is_none() && t.kind == "window" && t.model == model)
        .map(|t| ProgressItem {
            id: t.id,
            model: t.model,
            source: t.source,
            done_bytes: t.done_bytes,
            total_bytes: t.total_bytes,
            state: t.state.into(),
            error: t.error,
            seconds: t.seconds,
        })
        .collect();
    v.truncate(MAX_PROGRESS_ITEMS);
    v
}

/// Sends the coordinator (on `conn`) the window transfers this load starts, every [`EVERY`] while
/// they change and once more when the load ends (`stop`).
pub(super) async fn report(
    node: Arc<ClusterNode>,
    conn: Conn,
    ls: LoadStage,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let after = node.store.transfers.list().iter().map(|t| t.id).max().unwrap_or(0);
    let mut last: Vec<ProgressItem> = vec![];
    loop {
        let done = tokio::time::timeout(EVERY, &mut stop).await.is_ok();
        let now = items(&node, &ls.model, after);
        if !now.is_empty() && now != last {
            let msg = LoadProgressMsg { instance: ls.instance, index: ls.index, transfers: now.clone() };
            let _ = conn.send(Kind::LoadProgress, 0, serde_json::to_vec(&msg).expect("serializes")).await;
            last = now;
        }
        if done {
            return;
        }
    }
}

/// Records a stage node's report in this node's transfers (bounded: a peer's report sizes
/// nothing beyond the caps).
pub(super) fn record(node: &ClusterNode, from: &str, payload: &[u8]) {
    let Ok(msg) = serde_json::from_slice::<LoadProgressMsg>(payload) else {
        tracing::debug!(peer = from, "malformed load progress");
        return;
    };
    let cut = |s: &str| s.chars().take(MAX_TEXT).collect::<String>();
    for t in msg.transfers.iter().take(MAX_PROGRESS_ITEMS) {
        node.store.transfers.mirror(
            &cut(from),
            t.id,
            &cut(&t.model),
            &cut(&t.source),
            (t.done_bytes, t.total_bytes),
            &t.state,
            t.error.as_deref().map(cut),
            if t.seconds.is_finite() { t.seconds } else { 0.0 },
        );
    }
}
