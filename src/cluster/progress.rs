//! A stage node's window fetch, reported to the coordinator that asked for the load (so that
//! `exo run` there draws a bar per node and its `/cluster` lists the transfer), and recorded
//! there on arrival.

use super::ClusterNode;
use crate::store::{Reported, TransferKind};
use crate::transport::{Conn, LoadProgressMsg, LoadStage, Message, ProgressItem, MAX_PROGRESS_ITEMS};
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
        .filter(|t| t.id > after && t.node.is_none() && t.kind == TransferKind::Window && t.model == model)
        .map(|t| ProgressItem {
            id: t.id,
            model: t.model,
            source: t.source,
            done_bytes: t.done_bytes,
            total_bytes: t.total_bytes,
            state: t.state.as_str().into(),
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
            let _ = conn.tell(0, &Message::LoadProgress(msg)).await;
            last = now;
        }
        if done {
            return;
        }
    }
}

/// Records a stage node's report in this node's transfers (bounded: a peer's report sizes
/// nothing beyond the caps).
pub(super) fn record(transfers: &crate::store::Transfers, from: &str, msg: &LoadProgressMsg) {
    let cut = |s: &str| s.chars().take(MAX_TEXT).collect::<String>();
    for t in msg.transfers.iter().take(MAX_PROGRESS_ITEMS) {
        let r = Reported {
            id: t.id,
            model: cut(&t.model),
            source: cut(&t.source),
            done_bytes: t.done_bytes,
            total_bytes: t.total_bytes,
            state: cut(&t.state),
            error: t.error.as_deref().map(cut),
            seconds: t.seconds,
        };
        transfers.mirror(&cut(from), r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TransferState;

    #[test]
    fn reports_are_recorded_per_node_and_hostile_ones_bounded() {
        let t = crate::store::Transfers::default();
        let item = |id, state: &str, seconds| ProgressItem {
            id,
            model: "m".into(),
            source: "node a".into(),
            done_bytes: 5,
            total_bytes: 9,
            state: state.into(),
            error: None,
            seconds,
        };
        let msg = |v: Vec<ProgressItem>| LoadProgressMsg { instance: 1, index: 0, transfers: v };
        record(&t, "b", &msg(vec![item(7, "running", 0.5)]));
        record(&t, "b", &msg(vec![item(7, "done", 1.0)]));
        let l = t.list();
        assert_eq!(l.len(), 1, "one transfer, updated");
        assert_eq!((l[0].node.as_deref(), l[0].state, l[0].done_bytes), (Some("b"), TransferState::Done, 5));
        // the same id from another node is another transfer
        record(&t, "c", &msg(vec![item(7, "running", 0.1)]));
        assert_eq!(t.list().len(), 2);
        // hostile: too many items, long texts, an unknown state, a negative or huge duration, garbage (JSON has no NaN)
        let long = "x".repeat(10_000);
        let mut many: Vec<ProgressItem> = (100..200).map(|i| item(i, "weird", -1.0)).collect();
        many[0].model = long.clone();
        many[0].error = Some(long.clone());
        many[1].seconds = 1e300;
        record(&t, &long, &msg(many));
        let l = t.list();
        assert_eq!(l.len(), 2 + MAX_PROGRESS_ITEMS, "at most {MAX_PROGRESS_ITEMS} items per report");
        for x in l.iter().filter(|x| x.node.as_deref() != Some("b") && x.node.as_deref() != Some("c")) {
            assert_eq!(x.state, TransferState::Failed, "an unknown state is not 'running'");
            assert!(x.node.as_ref().unwrap().chars().count() <= MAX_TEXT && x.model.chars().count() <= MAX_TEXT);
            assert!(x.error.as_ref().is_none_or(|e| e.chars().count() <= MAX_TEXT));
            assert!((0.0..=1e7).contains(&x.seconds), "{}", x.seconds);
        }
        // a node reporting ever new running transfers (or dying mid-fetch again and again)
        // keeps only its latest few
        for r in 0..40u64 {
            record(
                &t,
                "e",
                &msg((0..MAX_PROGRESS_ITEMS as u64).map(|i| item(1000 + r * 100 + i, "running", 0.1)).collect()),
            );
        }
        let from_e: Vec<_> = t.list().into_iter().filter(|x| x.node.as_deref() == Some("e")).collect();
        assert_eq!(from_e.len(), crate::store::KEEP_RUNNING_PER_NODE);
        assert!(from_e.iter().all(|x| x.state == TransferState::Running));
        assert_eq!(t.list().iter().filter(|x| x.node.as_deref() == Some("c")).count(), 1, "other nodes keep theirs");
    }
}
