//! A record of each rebuild of a cluster pipeline: when the failure was noticed, when the new
//! pipeline was loaded and when the first token after it reached the client, as wall-clock
//! milliseconds so that a tool on the same machine can put its own "killed at" beside them
//! (`/cluster` lists them; bench/recovery.rs splits recovery time into detect, load and replay).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Records kept per instance (the oldest go first).
const KEEP: usize = 16;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RecoveryRecord {
    /// Why the pipeline was rebuilt.
    pub cause: String,
    pub detected_unix_ms: u64,
    /// The new pipeline is loaded (absent while loading, or when it could not be).
    pub rebuilt_unix_ms: Option<u64>,
    /// The first token after the rebuild was sent (absent until then, or with no request).
    pub resumed_unix_ms: Option<u64>,
    /// Requests replayed into the new pipeline and the tokens that took (prompt and output).
    pub sequences: usize,
    pub replayed_tokens: usize,
    /// Why the rebuild failed (the requests failed with it).
    pub error: Option<String>,
}

#[derive(Default)]
pub(crate) struct RecoveryLog(Mutex<VecDeque<RecoveryRecord>>);

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl RecoveryLog {
    pub fn detected(&self, cause: String) {
        let mut q = self.0.lock().unwrap();
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(RecoveryRecord {
            cause,
            detected_unix_ms: now_ms(),
            rebuilt_unix_ms: None,
            resumed_unix_ms: None,
            sequences: 0,
            replayed_tokens: 0,
            error: None,
        });
    }

    fn with_last(&self, f: impl FnOnce(&mut RecoveryRecord)) {
        if let Some(r) = self.0.lock().unwrap().back_mut() {
            f(r)
        }
    }

    pub fn rebuilt(&self, sequences: usize, replayed_tokens: usize) {
        self.with_last(|r| {
            r.rebuilt_unix_ms = Some(now_ms());
            (r.sequences, r.replayed_tokens) = (sequences, replayed_tokens);
        })
    }

    pub fn failed(&self, error: String) {
        self.with_last(|r| r.error = Some(error))
    }

    pub fn resumed(&self) {
        self.with_last(|r| {
            if r.resumed_unix_ms.is_none() && r.rebuilt_unix_ms.is_some() {
                r.resumed_unix_ms = Some(now_ms())
            }
        })
    }

    pub fn records(&self) -> Vec<RecoveryRecord> {
        self.0.lock().unwrap().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_follows_one_rebuild_and_old_ones_go() {
        let log = RecoveryLog::default();
        log.resumed(); // nothing to resume: ignored
        log.detected("b failed".into());
        log.resumed(); // not rebuilt yet: a token of the old pipeline
        assert_eq!(log.records()[0].resumed_unix_ms, None);
        log.rebuilt(2, 300);
        log.resumed();
        let r = &log.records()[0];
        assert!(r.detected_unix_ms <= r.rebuilt_unix_ms.unwrap() && r.rebuilt_unix_ms <= r.resumed_unix_ms);
        assert_eq!((r.sequences, r.replayed_tokens, r.error.clone()), (2, 300, None));
        for i in 0..KEEP + 3 {
            log.detected(format!("{i}"));
        }
        let all = log.records();
        assert_eq!((all.len(), all[0].cause.as_str()), (KEEP, "3"));
    }
}
