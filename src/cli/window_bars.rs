//! While `exo run` loads a model across the cluster: a bar per node fetching its window (from
//! the transfers the coordinator lists, its own and those its stage nodes report), on a
//! terminal; a line per finished fetch otherwise.

use crate::store::{Transfer, TransferKind, TransferState};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

/// How often the transfers are read.
const EVERY: Duration = Duration::from_millis(250);
/// Reads after the load ends while fetches are still shown running.
const SETTLE: usize = 8;

/// One transfer as the bars need it (from a [`Transfer`] here, or on `/cluster`).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: u64,
    /// Which node fetches (empty: the coordinator itself).
    pub node: String,
    pub kind: TransferKind,
    pub model: String,
    pub source: String,
    pub done: u64,
    pub total: u64,
    pub state: TransferState,
    pub seconds: f64,
}

impl Row {
    pub fn of(t: &Transfer, here: &str) -> Row {
        Row {
            id: t.id,
            node: t.node.clone().unwrap_or_else(|| here.to_string()),
            kind: t.kind,
            model: t.model.clone(),
            source: t.source.clone(),
            done: t.done_bytes,
            total: t.total_bytes,
            state: t.state,
            seconds: t.seconds,
        }
    }
}

fn human(b: u64) -> String {
    crate::placement::units::fmt_bytes(b)
}

/// The line said when a fetch ends.
pub fn finished_line(r: &Row) -> String {
    let rate = r.done as f64 / r.seconds.max(1e-3);
    match r.state {
        TransferState::Done => format!(
            "{}: {} of {} from {} in {:.1}s ({}/s)",
            r.node,
            human(r.done),
            r.model,
            r.source,
            r.seconds,
            human(rate as u64)
        ),
        _ => format!("{}: fetching {} from {} failed", r.node, r.model, r.source),
    }
}

/// Draws the transfers `read` returns that were not there when it started, until `work` ends;
/// returns what `work` returned.
pub async fn while_loading<T, R, F>(mut read: R, work: F) -> T
where
    R: FnMut() -> std::pin::Pin<Box<dyn Future<Output = Vec<Row>> + Send>>,
    F: Future<Output = T>,
{
    let tty = std::io::stderr().is_terminal();
    let multi =
        MultiProgress::with_draw_target(if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    let old: HashSet<(String, u64)> = read().await.into_iter().map(|r| (r.node, r.id)).collect();
    let mut bars: HashMap<(String, u64), ProgressBar> = HashMap::new();
    let mut said: HashSet<(String, u64)> = HashSet::new();
    let style = ProgressStyle::with_template("{msg:32!} [{bar:36}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut show = |rows: Vec<Row>| {
        for r in rows.into_iter().filter(|r| !old.contains(&(r.node.clone(), r.id))) {
            let key = (r.node.clone(), r.id);
            let bar = bars.entry(key.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(r.total));
                b.set_style(style.clone());
                b.set_message(format!("{} ← {}", r.node, r.source));
                b
            });
            bar.set_length(r.total.max(r.done));
            bar.set_position(r.done);
            if r.state != TransferState::Running && said.insert(key) {
                bar.finish_and_clear();
                let line = finished_line(&r);
                if tty {
                    let _ = multi.println(line);
                } else {
                    eprintln!("{line}");
                }
            }
        }
    };
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => {
                // a stage node's last report may arrive just after its answer: a moment for
                // the fetches still shown running to settle
                for _ in 0..SETTLE {
                    let rows = read().await;
                    let running = rows.iter().any(|r| r.state == TransferState::Running && !old.contains(&(r.node.clone(), r.id)));
                    show(rows);
                    if !running {
                        break;
                    }
                    tokio::time::sleep(EVERY).await;
                }
                return out;
            }
            _ = tokio::time::sleep(EVERY) => show(read().await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_from_cluster_json_and_say_how_a_fetch_ended() {
        let row = |v: serde_json::Value| Row::of(&serde_json::from_value::<Transfer>(v).unwrap(), "a");
        let r = row(serde_json::json!({ "id": 3, "kind": "window", "node": "b", "model": "m", "source": "node a",
            "done_bytes": 2_000_000, "total_bytes": 2_000_000, "state": "done", "error": null,
            "started_unix_ms": 0, "seconds": 2.0 }));
        assert_eq!((r.node.as_str(), r.done), ("b", 2_000_000));
        let line = finished_line(&r);
        assert!(line.starts_with("b: ") && line.contains("from node a in 2.0s"), "{line}");
        let mine = row(serde_json::json!({ "id": 4, "kind": "window", "node": null, "model": "m", "source": "x",
            "done_bytes": 1, "total_bytes": 9, "state": "failed", "error": "gone", "started_unix_ms": 0,
            "seconds": 0.1 }));
        assert_eq!(mine.node, "a");
        assert!(finished_line(&mine).contains("failed"));
        assert!(serde_json::from_value::<Transfer>(serde_json::json!({ "id": "x" })).is_err());
    }
}
