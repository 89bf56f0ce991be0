//! Model bytes on the move: hub downloads and windows fetched from peers, running and the last
//! few finished, with progress (what `/cluster` and the dashboard show).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A pull's progress, reported to its caller and recorded as a transfer.
pub struct Shown {
    pub inner: std::sync::Arc<dyn super::PullProgress>,
    pub handle: TransferHandle,
}

impl super::PullProgress for Shown {
    fn planned(&self, total_bytes: u64, files: usize) {
        self.inner.planned(total_bytes, files)
    }
    fn file_started(&self, file: &str, size: u64) {
        self.inner.file_started(file, size)
    }
    fn advanced(&self, n: u64) {
        self.handle.advance(n);
        self.inner.advanced(n)
    }
    fn file_done(&self, file: &str) {
        self.inner.file_done(file)
    }
    fn note(&self, msg: &str) {
        self.inner.note(msg)
    }
}

/// Finished transfers kept for display.
const KEEP_FINISHED: usize = 16;
/// Running transfers kept per reporting node: a node reporting more (or that died mid-fetch,
/// again and again) loses its oldest.
pub const KEEP_RUNNING_PER_NODE: usize = 16;

/// Where a transfer's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferKind {
    /// A model from the hub.
    Download,
    /// Layers from a peer (or the hub's ranges) for a stage.
    Window,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    Running,
    Done,
    Failed,
}

impl TransferState {
    /// As `/cluster` and the peers' reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Running => "running",
            TransferState::Done => "done",
            TransferState::Failed => "failed",
        }
    }

    /// A peer's report: anything but running or done is taken as failed.
    fn reported(s: &str) -> TransferState {
        match s {
            "running" => TransferState::Running,
            "done" => TransferState::Done,
            _ => TransferState::Failed,
        }
    }
}

/// One transfer as `/cluster` lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: u64,
    pub kind: TransferKind,
    /// The node it runs on, when not this one (a stage node's window, as it reported it).
    pub node: Option<String>,
    pub model: String,
    /// Where the bytes come from (the hub's repository, or a peer's address).
    pub source: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub state: TransferState,
    pub error: Option<String>,
    pub started_unix_ms: u64,
    pub seconds: f64,
}

/// A transfer and what timing it needs.
struct Entry {
    t: Transfer,
    t0: Instant,
    /// `node#id` of a mirrored transfer.
    remote: String,
}

/// A transfer as another node reported it: its id there, what it moves and how far it got.
pub struct Reported {
    pub id: u64,
    pub model: String,
    pub source: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// "running" or "done"; anything else is taken as failed.
    pub state: String,
    pub error: Option<String>,
    pub seconds: f64,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Shared by every clone of a [`super::Store`].
#[derive(Clone, Default)]
pub struct Transfers(Arc<Mutex<(u64, VecDeque<Entry>)>>);

impl Transfers {
    pub fn start(&self, kind: TransferKind, model: &str, source: &str, total_bytes: u64) -> TransferHandle {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        let id = g.0;
        let t = Transfer {
            id,
            kind,
            node: None,
            model: model.to_string(),
            source: source.to_string(),
            done_bytes: 0,
            total_bytes,
            state: TransferState::Running,
            error: None,
            started_unix_ms: now_unix_ms(),
            seconds: 0.0,
        };
        g.1.push_back(Entry { t, t0: Instant::now(), remote: String::new() });
        // drop the oldest finished ones beyond what is shown
        Self::trim(&mut g.1);
        TransferHandle { transfers: self.clone(), id, open: true }
    }

    /// Records what `node` reported of one of its transfers (kept apart by node).
    pub fn mirror(&self, node: &str, r: Reported) {
        let Reported { id: remote_id, model, source, done_bytes, total_bytes, state, error, seconds } = r;
        let state = TransferState::reported(&state);
        let key = format!("{node}#{remote_id}");
        let mut g = self.0.lock().unwrap();
        let at = g.1.iter().position(|e| e.t.node.as_deref() == Some(node) && e.remote == key);
        let i = match at {
            Some(i) => i,
            None => {
                let running = |e: &Entry| e.t.node.as_deref() == Some(node) && e.t.state == TransferState::Running;
                if g.1.iter().filter(|e| running(e)).count() >= KEEP_RUNNING_PER_NODE {
                    if let Some(oldest) = g.1.iter().position(running) {
                        g.1.remove(oldest);
                    }
                }
                g.0 += 1;
                let t = Transfer {
                    id: g.0,
                    kind: TransferKind::Window,
                    node: Some(node.to_string()),
                    model,
                    source,
                    done_bytes: 0,
                    total_bytes: 0,
                    state: TransferState::Running,
                    error: None,
                    started_unix_ms: now_unix_ms(),
                    seconds: 0.0,
                };
                g.1.push_back(Entry { t, t0: Instant::now(), remote: key });
                g.1.len() - 1
            }
        };
        let e = &mut g.1[i];
        // a peer's figure: at most about 4 months
        let seconds = if seconds.is_finite() { seconds.clamp(0.0, 1e7) } else { 0.0 };
        let t = &mut e.t;
        (t.done_bytes, t.total_bytes, t.state, t.error, t.seconds) =
            (done_bytes, total_bytes.max(done_bytes), state, error, seconds);
        // a reported transfer has its own clock: it is not re-timed here
        e.t0 = Instant::now() - std::time::Duration::from_secs_f64(seconds);
        Self::trim(&mut g.1);
    }

    fn trim(v: &mut VecDeque<Entry>) {
        let finished = |e: &Entry| e.t.state != TransferState::Running;
        while v.iter().filter(|e| finished(e)).count() > KEEP_FINISHED {
            let Some(i) = v.iter().position(finished) else { break };
            v.remove(i);
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Transfer> {
        let g = self.0.lock().unwrap();
        g.1.iter()
            .rev()
            .map(|e| {
                let mut t = e.t.clone();
                if t.state == TransferState::Running {
                    t.seconds = e.t0.elapsed().as_secs_f64();
                }
                t
            })
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.0.lock().unwrap().1.iter_mut().find(|e| e.t.id == id) {
            f(e)
        }
    }
}

/// How a transfer ended, as the list shows it (the reason is a message: peers report theirs as
/// text).
enum End {
    Done,
    Failed { reason: String },
}

/// One running transfer; dropped unfinished, it is marked failed ("stopped").
pub struct TransferHandle {
    transfers: Transfers,
    id: u64,
    open: bool,
}

impl TransferHandle {
    pub fn progress(&self, done_bytes: u64, total_bytes: u64) {
        self.transfers.update(self.id, |Entry { t, .. }| {
            t.done_bytes = done_bytes;
            t.total_bytes = total_bytes.max(done_bytes);
        });
    }

    pub fn advance(&self, n: u64) {
        self.transfers.update(self.id, |Entry { t, .. }| {
            t.done_bytes += n;
            t.total_bytes = t.total_bytes.max(t.done_bytes);
        });
    }

    /// Records how the transfer ended: done, or failed with the error's message.
    pub fn finish<T, E: std::fmt::Display>(mut self, result: &Result<T, E>) {
        self.close(match result {
            Ok(_) => End::Done,
            Err(e) => End::Failed { reason: e.to_string() },
        });
    }

    fn close(&mut self, end: End) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        self.transfers.update(self.id, |Entry { t, t0, .. }| {
            t.seconds = t0.elapsed().as_secs_f64();
            match end {
                End::Done => {
                    t.state = TransferState::Done;
                    t.done_bytes = t.total_bytes.max(t.done_bytes);
                }
                End::Failed { reason } => {
                    t.state = TransferState::Failed;
                    t.error = Some(reason);
                }
            }
        });
    }
}

impl Drop for TransferHandle {
    fn drop(&mut self) {
        self.close(End::Failed { reason: "stopped".into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_finish_and_bounded_history() {
        let t = Transfers::default();
        let a = t.start(TransferKind::Download, "m", "org/m", 100);
        a.advance(30);
        a.advance(20);
        assert_eq!((t.list()[0].done_bytes, t.list()[0].state), (50, TransferState::Running));
        a.finish(&Ok::<_, std::io::Error>(()));
        assert_eq!((t.list()[0].done_bytes, t.list()[0].state), (100, TransferState::Done));
        drop(t.start(TransferKind::Window, "m", "127.0.0.1:1", 10)); // dropped unfinished
        assert_eq!((t.list()[0].state, t.list()[0].error.as_deref()), (TransferState::Failed, Some("stopped")));
        for _ in 0..40 {
            t.start(TransferKind::Window, "m", "p", 1).finish(&Err::<(), _>(std::io::Error::other("x")));
        }
        assert_eq!((t.list()[0].state, t.list()[0].error.as_deref()), (TransferState::Failed, Some("x")));
        let running = t.start(TransferKind::Window, "m", "p", 1);
        assert_eq!(t.list().len(), KEEP_FINISHED + 1);
        assert_eq!(t.list()[0].state, TransferState::Running);
        running.progress(1, 1);
    }

    #[test]
    fn listed_as_before_and_read_back() {
        let t = Transfers::default();
        let h = t.start(TransferKind::Window, "m", "node a", 10);
        h.progress(4, 10);
        let v = serde_json::to_value(&t.list()[0]).unwrap();
        assert_eq!(
            (v["kind"].as_str(), v["state"].as_str(), v["node"].is_null()),
            (Some("window"), Some("running"), true)
        );
        let back: Transfer = serde_json::from_value(v).unwrap();
        assert_eq!((back.done_bytes, back.state), (4, TransferState::Running));
        // a peer's report with a state we do not know is a failure; a bad one is refused on read
        let r = |state: &str| Reported {
            id: 1,
            model: "m".into(),
            source: "s".into(),
            done_bytes: 1,
            total_bytes: 2,
            state: state.into(),
            error: None,
            seconds: f64::NAN,
        };
        t.mirror("b", r("exploded"));
        assert_eq!((t.list()[0].state, t.list()[0].seconds), (TransferState::Failed, 0.0));
        let bad = serde_json::json!({ "id": 1, "kind": "teleport", "node": null, "model": "m", "source": "s",
            "done_bytes": 0, "total_bytes": 0, "state": "running", "error": null, "started_unix_ms": 0, "seconds": 0.0 });
        assert!(serde_json::from_value::<Transfer>(bad).is_err());
    }
}
