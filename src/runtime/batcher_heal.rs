//! The batcher's side of self-healing: noticing that the pipeline must be rebuilt (a node
//! failed, or an idle instance has a clearly faster placement), rebuilding it once the batches
//! in flight have answered, and replaying every sequence into the new one.

use super::*;

impl Batcher {
    /// A node of a cluster pipeline failed: the pipeline can be rebuilt without it.
    pub(super) fn recoverable(&self, e: &PipelineError) -> bool {
        self.healer.is_some() && matches!(e, PipelineError::Remote(_))
    }

    pub(super) fn idle(&self) -> bool {
        self.queue.is_empty() && self.batches == 0 && self.slots.iter().all(|s| s.job.is_none())
    }

    /// Now and then, while idle: is there a clearly faster placement than this one?
    pub(super) fn look_for_faster(&mut self) {
        let Some(faster) = self.healer.as_ref().and_then(|h| h.faster.clone()) else { return };
        if self.checking || !self.idle() || self.last_check.elapsed() < std::time::Duration::from_secs(2) {
            return;
        }
        self.checking = true;
        self.tasks.spawn(async move { Done::Faster(faster().await) });
    }

    pub(super) fn found(&mut self, best: Option<f64>) {
        self.checking = false;
        self.last_check = std::time::Instant::now();
        let Some(h) = &self.healer else { return };
        let Some(best) = best.filter(|&t| t >= h.predicted * MOVE_WHEN_FASTER) else { return };
        if self.idle() && !self.recovering {
            let why = format!("a placement predicted at {best:.0} tokens/s instead of {:.0}", h.predicted);
            tracing::info!("{why}: moving the instance");
            self.counts.recoveries.detected(why);
            self.recovering = true;
        }
    }

    /// Stops new work; the pipeline is rebuilt once the batches in flight have answered.
    pub(super) fn begin_recovery(&mut self, e: &PipelineError) {
        if !self.recovering {
            // the fault names the stage that failed (and its node), as the stage operation saw it
            match e {
                PipelineError::Remote(f) => tracing::warn!(stage = f.stage, node = %f.node,
                    "{e}: rebuilding the pipeline without it and replaying its sequences"),
                _ => tracing::warn!("{e}: rebuilding the pipeline and replaying its sequences"),
            }
            self.counts.recoveries.detected(e.to_string());
        }
        self.recovering = true;
    }

    pub(super) fn maybe_rebuild(&mut self) {
        if !self.recovering || self.rebuilding || self.batches > 0 {
            return;
        }
        let Some(rebuild) = self.healer.as_ref().map(|h| h.rebuild.clone()) else { return };
        self.rebuilding = true;
        self.tasks.spawn(async move { Done::Recovered(rebuild().await) });
    }

    /// The new pipeline is there (or cannot be): every sequence is decoded again up to where it
    /// was, or fails with the reason.
    pub(super) fn rebuilt(&mut self, r: Result<(Arc<dyn Pipe>, f64), RuntimeError>) {
        self.rebuilding = false;
        self.recovering = false;
        self.epoch += 1;
        let pipe = match r {
            Ok((p, predicted)) => {
                if let Some(h) = self.healer.as_mut() {
                    h.predicted = predicted;
                }
                p
            }
            Err(e) => {
                tracing::error!("cannot rebuild the pipeline: {e}");
                self.counts.recoveries.failed(e.to_string());
                self.broken.store(true, Ordering::Relaxed);
                for slot in &mut self.slots {
                    slot.cached.clear();
                    slot.freeing = false;
                    if let Some(job) = slot.job.as_mut() {
                        if !job.doomed {
                            let _ = job.req.events.send(SeqEvent::Failed(e.clone()));
                            job.doomed = true;
                        }
                        job.in_flight = 0;
                        job.phase = Phase::Prefill;
                    }
                }
                return;
            }
        };
        *self.pipe.write().unwrap() = pipe;
        let (mut sequences, mut replayed) = (0, 0);
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            slot.cached.clear();
            slot.freeing = false;
            slot.stale = false;
            let Some(job) = slot.job.as_mut() else { continue };
            job.in_flight = 0;
            if job.doomed {
                job.phase = Phase::Prefill; // dropped by the next reap
                continue;
            }
            if job.req.lease {
                let _ = job.req.events.send(SeqEvent::Failed(RuntimeError::Failed {
                    reason: "a node of the pipeline failed during the benchmark".into(),
                }));
                job.doomed = true;
                job.phase = Phase::Prefill;
                continue;
            }
            // the prompt now ends with everything already sent: its last row samples what comes
            // next
            let emitted = std::mem::take(&mut job.emitted);
            job.req.prompt.extend(emitted);
            (sequences, replayed) = (sequences + 1, replayed + job.req.prompt.len());
            job.decoded.clear();
            job.drafts.clear();
            job.trim = None;
            job.proposed = None;
            job.next_prompt = 0;
            job.phase = Phase::Admitting;
            self.start_admission(i, 0, 0);
        }
        self.counts.recoveries.rebuilt(sequences, replayed);
    }
}
