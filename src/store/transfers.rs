//! Model bytes on the move: hub downloads and windows fetched from peers, running and the last
//! few finished, with progress (what `/cluster` and the dashboard show).

use serde::Serialize;
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

#[derive(Clone, Debug, Serialize)]
pub struct Transfer {
    pub id: u64,
    /// "download" (from the hub) or "window" (layers from a peer).
    pub kind: &'static str,
    /// The node it runs on, when not this one (a stage node's window, as it reported it).
    pub node: Option<String>,
    pub model: String,
    /// Where the bytes come from (the hub's repository, or a peer's address).
    pub source: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// "running", "done" or "failed".
    pub state: &'static str,
    pub error: Option<String>,
    pub started_unix_ms: u64,
    pub seconds: f64,
    #[serde(skip)]
    t0: Instant,
    /// `node#id` of a mirrored transfer.
    #[serde(skip)]
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

/// Shared by every clone of a [`super::Store`].
#[derive(Clone, Default)]
pub struct Transfers(Arc<Mutex<(u64, VecDeque<Transfer>)>>);

impl Transfers {
    pub fn start(&self, kind: &'static str, model: &str, source: &str, total_bytes: u64) -> TransferHandle {
        let mut g = self.0.lock().unwrap();
        g.0 += 1;
        let id = g.0;
        let started_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        g.1.push_back(Transfer {
            id,
            kind,
            node: None,
            model: model.to_string(),
            source: source.to_string(),
            done_bytes: 0,
            total_bytes,
            state: "running",
            error: None,
            started_unix_ms,
            seconds: 0.0,
            t0: Instant::now(),
            remote: String::new(),
        });
        // drop the oldest finished ones beyond what is shown
        Self::trim(&mut g.1);
        TransferHandle { transfers: self.clone(), id, open: true }
    }

    /// Records what `node` reported of one of its transfers (kept apart by node).
    pub fn mirror(&self, node: &str, r: Reported) {
        let Reported { id: remote_id, model, source, done_bytes, total_bytes, state, error, seconds } = r;
        let state = match state.as_str() {
            "running" => "running",
            "done" => "done",
            _ => "failed",
        };
        let key = format!("{node}#{remote_id}");
        let mut g = self.0.lock().unwrap();
        let at = g.1.iter().position(|t| t.node.as_deref() == Some(node) && t.remote == key);
        let i = match at {
            Some(i) => i,
            None => {
                let running = |t: &Transfer| t.node.as_deref() == Some(node) && t.state == "running";
                if g.1.iter().filter(|t| running(t)).count() >= KEEP_RUNNING_PER_NODE {
                    if let Some(oldest) = g.1.iter().position(running) {
                        g.1.remove(oldest);
                    }
                }
                g.0 += 1;
                let (id, now) = (g.0, SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64));
                g.1.push_back(Transfer {
                    id,
                    kind: "window",
                    node: Some(node.to_string()),
                    model,
                    source,
                    done_bytes: 0,
                    total_bytes: 0,
                    state: "running",
                    error: None,
                    started_unix_ms: now.unwrap_or(0),
                    seconds: 0.0,
                    t0: Instant::now(),
                    remote: key,
                });
                g.1.len() - 1
            }
        };
        let t = &mut g.1[i];
        // a peer's figure: at most about 4 months
        let seconds = if seconds.is_finite() { seconds.clamp(0.0, 1e7) } else { 0.0 };
        (t.done_bytes, t.total_bytes, t.state, t.error, t.seconds) =
            (done_bytes, total_bytes.max(done_bytes), state, error, seconds);
        // a reported transfer has its own clock: it is not re-timed here
        t.t0 = Instant::now() - std::time::Duration::from_secs_f64(seconds);
        Self::trim(&mut g.1);
    }

    fn trim(v: &mut VecDeque<Transfer>) {
        while v.iter().filter(|t| t.state != "running").count() > KEEP_FINISHED {
            let Some(i) = v.iter().position(|t| t.state != "running") else { break };
            v.remove(i);
        }
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Transfer> {
        let g = self.0.lock().unwrap();
        g.1.iter()
            .rev()
            .map(|t| {
                let mut t = t.clone();
                if t.state == "running" {
                    t.seconds = t.t0.elapsed().as_secs_f64();
                }
                t
            })
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Transfer)) {
        if let Some(t) = self.0.lock().unwrap().1.iter_mut().find(|t| t.id == id) {
            f(t)
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
        self.transfers.update(self.id, |t| {
            t.done_bytes = done_bytes;
            t.total_bytes = total_bytes.max(done_bytes);
        });
    }

    pub fn advance(&self, n: u64) {
        self.transfers.update(self.id, |t| {
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
        self.transfers.update(self.id, |t| {
            t.seconds = t.t0.elapsed().as_secs_f64();
            match end {
                End::Done => {
                    t.state = "done";
                    t.done_bytes = t.total_bytes.max(t.done_bytes);
                }
                End::Failed { reason } => {
                    t.state = "failed";
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
        let a = t.start("download", "m", "org/m", 100);
        a.advance(30);
        a.advance(20);
        assert_eq!((t.list()[0].done_bytes, t.list()[0].state), (50, "running"));
        a.finish(&Ok::<_, std::io::Error>(()));
        assert_eq!((t.list()[0].done_bytes, t.list()[0].state), (100, "done"));
        drop(t.start("window", "m", "127.0.0.1:1", 10)); // dropped unfinished
        assert_eq!((t.list()[0].state, t.list()[0].error.as_deref()), ("failed", Some("stopped")));
        for _ in 0..40 {
            t.start("window", "m", "p", 1).finish(&Err::<(), _>(std::io::Error::other("x")));
        }
        assert_eq!((t.list()[0].state, t.list()[0].error.as_deref()), ("failed", Some("x")));
        let running = t.start("window", "m", "p", 1);
        assert_eq!(t.list().len(), KEEP_FINISHED + 1);
        assert_eq!(t.list()[0].state, "running");
        running.progress(1, 1);
    }
}
