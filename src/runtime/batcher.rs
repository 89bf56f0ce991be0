//! Continuous batching: one loop per instance puts the next token of every decoding sequence,
//! plus bounded chunks of waiting prompts, into each batch, and keeps up to `depth` batches in
//! flight so that in a pipeline of stages each stage works on another group of sequences
//! (pipeline fill). Samplers live per sequence on the last stage; stop, cancel and limits are per
//! sequence; a cancelled or failed sequence's KV is dropped at once. A finished sequence keeps
//! its tokens' KV as a prompt cache: the next request that shares a prefix with it reuses it
//! (each sequence has its own share of the KV pool, so a kept cache never crowds out another).
//!
//! When a node of a cluster pipeline fails, nothing is lost: the batcher waits for the batches
//! in flight, asks its instance for a new pipeline over the nodes that are left ([`Healer`]),
//! and rebuilds every sequence by decoding its prompt and every token it already produced (its
//! seeded random stream resumed where it was), then goes on; callers only see a pause. An idle
//! instance whose placement the search chose moves the same way when the cluster now offers one
//! predicted [`MOVE_WHEN_FASTER`] times as fast.

use super::draft::{Draft, DraftKv};
use super::error::RuntimeError;
use super::heal::{Healer, MOVE_WHEN_FASTER};
use super::speculate::{SpecConfig, SpecCounters, Tuner};
use crate::engine::{SamplingParams, Token, NO_DRAFT, UNSAMPLED};
use crate::pipeline::Pipe;
use crate::pipeline::{PipelineError, TokenChunk};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

// recovery and moving: rebuilding the pipeline and replaying the sequences into it
#[path = "batcher_heal.rs"]
mod heal_impl;
// speculation: the answers of verify windows and of the draft model
#[path = "batcher_spec.rs"]
mod spec_impl;
use spec_impl::{cut_at_eog, propose};

/// The pipeline an instance runs on now: replaced when a node fails.
pub(crate) type SharedPipe = Arc<std::sync::RwLock<Arc<dyn Pipe>>>;

/// One sequence's work as the batcher takes it.
pub(crate) struct SeqRequest {
    pub prompt: Vec<Token>,
    pub sampling: SamplingParams,
    /// Generated tokens after which the sequence ends (already capped).
    pub max_tokens: u32,
    pub ignore_eos: bool,
    /// Not a generation: the caller gets a sequence of its own to drive directly (`exo bench`)
    /// until it drops `events`.
    pub lease: bool,
    pub events: mpsc::UnboundedSender<SeqEvent>,
}

#[derive(Debug)]
pub(crate) enum SeqEvent {
    /// The sequence has a slot: `cached` prompt tokens were already in its KV.
    Started {
        cached: usize,
    },
    /// A lease was granted: the sequence id is the caller's until it drops the receiver.
    Leased {
        seq: i32,
    },
    Token(Token),
    /// Ended by an end-of-generation token (`false`) or a length limit (`true`).
    Done {
        length: bool,
    },
    Failed(RuntimeError),
}

/// Requests waiting for a slot and sequences being decoded, shared with the instance (which
/// refuses new requests when both are full).
#[derive(Default)]
pub(crate) struct Counts {
    pub waiting: AtomicUsize,
    pub active: AtomicUsize,
    pub recoveries: super::recovery::RecoveryLog,
    pub spec: SpecCounters,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Sequences decoded side by side (KV sequence ids 0..n_seq).
    pub n_seq: u32,
    /// Rows per batch.
    pub n_batch: u32,
    /// Positions each sequence may use.
    pub n_ctx_seq: u32,
    /// Batches in flight at once: the number of stages fills the pipeline.
    pub depth: usize,
    pub spec: SpecConfig,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for its sampler (and cache trim) on the stages.
    Admitting,
    /// Prompt tokens left to submit.
    Prefill,
    /// A batch with its output row is in flight.
    Waiting,
    /// Its last sampled token is to be decoded next.
    Ready(Token),
    /// Lent to a caller that decodes on it directly.
    Leased,
    /// The draft model is proposing what follows this token (decoded next).
    Drafting(Token),
}

struct Job {
    req: SeqRequest,
    phase: Phase,
    /// Order of admission (prefill chunks go first come, first served).
    ticket: u64,
    /// Prompt tokens submitted so far (the cached prefix counts as submitted).
    next_prompt: usize,
    /// Generated tokens that have been submitted for decoding (their KV exists once answered).
    decoded: Vec<Token>,
    generated: u32,
    in_flight: usize,
    /// Set when the caller left or a batch failed: the sequence is dropped once nothing of it
    /// is in flight.
    doomed: bool,
    /// Tokens sent to the caller since `req.prompt` was (re)built: a rebuilt sequence decodes
    /// them as part of its prompt.
    emitted: Vec<Token>,
    /// Speculation: how long a window is worth (None: this sequence does not speculate).
    tuner: Option<Tuner>,
    /// Tokens proposed after the last decoded one, in flight with it.
    drafts: Vec<Token>,
    /// Positions from here on hold rejected proposals: the next batch drops them first.
    trim: Option<usize>,
    /// The draft model's proposals for the next step, and what its KV holds for this sequence.
    proposed: Option<Vec<Token>>,
    draft_kv: DraftKv,
}

impl Job {
    /// Positions of this sequence submitted so far.
    fn pos(&self) -> usize {
        self.next_prompt + self.decoded.len()
    }
}

#[derive(Default)]
struct Slot {
    /// Tokens whose KV this sequence holds while it is free (its prompt cache).
    cached: Vec<Token>,
    /// When it was last given out (least recently used caches go first).
    used: u64,
    job: Option<Job>,
    /// A KV drop is in flight: not free yet.
    freeing: bool,
    /// The KV holds positions past `cached` (a window decoded beyond where its sequence ended):
    /// the next admission trims them.
    stale: bool,
}

enum Done {
    Admitted {
        slot: usize,
        epoch: u64,
        keep: Result<usize, PipelineError>,
    },
    Batch {
        outputs: Vec<usize>,
        members: Vec<usize>,
        result: Result<Vec<Token>, PipelineError>,
        /// Rows and seconds of a batch without prompt rows (what a decode step costs).
        step: Option<(usize, f64)>,
    },
    Freed {
        slot: usize,
    },
    /// The draft model's proposals for the job of `ticket`.
    Drafted {
        slot: usize,
        ticket: u64,
        result: Result<(Vec<Token>, DraftKv), PipelineError>,
    },
    Recovered(Result<(Arc<dyn Pipe>, f64), RuntimeError>),
    /// The predicted tokens/s of the best placement now.
    Faster(Option<f64>),
}

struct Batcher {
    pipe: SharedPipe,
    healer: Option<Healer>,
    /// A faster placement is being looked for.
    checking: bool,
    last_check: std::time::Instant,
    /// A node failed: no new work until the pipeline is rebuilt.
    recovering: bool,
    /// The rebuild is under way.
    rebuilding: bool,
    /// Bumped with every new pipeline: answers about the old one are stale.
    epoch: u64,
    /// Set when the pipeline could not be rebuilt: the instance must be loaded anew.
    broken: Arc<AtomicBool>,
    cfg: Config,
    eog: Vec<Token>,
    slots: Vec<Slot>,
    queue: VecDeque<SeqRequest>,
    counts: Arc<Counts>,
    shutdown: Arc<AtomicBool>,
    tasks: JoinSet<Done>,
    batches: usize,
    tick: u64,
    /// What a decode step costs here, for the speculation windows.
    step_cost: super::speculate::StepCost,
    draft: Option<Arc<Draft>>,
}

/// What the batcher shares with its instance.
pub(crate) struct Shared {
    pub pipe: SharedPipe,
    pub counts: Arc<Counts>,
    pub shutdown: Arc<AtomicBool>,
    pub broken: Arc<AtomicBool>,
    pub healer: Option<Healer>,
    /// The draft model, when one proposes.
    pub draft: Option<Arc<Draft>>,
}

/// Runs until the instance is dropped (its request channel closes) and every sequence ended.
pub(crate) async fn run(cfg: Config, mut rx: mpsc::Receiver<SeqRequest>, shared: Shared) {
    let Shared { pipe, counts, shutdown, broken, healer, draft } = shared;
    let eog = current(&pipe).info().eog_tokens.clone();
    let slots = (0..cfg.n_seq).map(|_| Slot::default()).collect();
    let mut b = Batcher {
        pipe,
        healer,
        checking: false,
        last_check: std::time::Instant::now(),
        recovering: false,
        rebuilding: false,
        epoch: 0,
        broken,
        cfg,
        eog,
        slots,
        queue: VecDeque::new(),
        counts,
        shutdown,
        tasks: JoinSet::new(),
        batches: 0,
        tick: 0,
        step_cost: Default::default(),
        draft,
    };
    let mut open = true;
    // a timer that outlives each turn of the loop: busy turns must not keep resetting it
    let mut watch_tick = tokio::time::interval(std::time::Duration::from_millis(250));
    watch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        b.admit();
        b.reap();
        b.maybe_rebuild();
        while b.batches < b.cfg.depth.max(1) {
            if !b.submit_next().await {
                break;
            }
        }
        if !open && b.queue.is_empty() && b.tasks.is_empty() && b.slots.iter().all(|s| s.job.is_none()) {
            return;
        }
        let leased = b.slots.iter().any(|s| s.job.as_ref().is_some_and(|j| j.phase == Phase::Leased));
        // a cluster pipeline is watched, busy or idle: a node that fails or leaves (and may
        // still answer while it drains) is replaced at once, not at the next error
        let watch = b.healer.is_some() && !b.recovering && !b.broken.load(Ordering::Relaxed);
        tokio::select! {
            r = rx.recv(), if open => match r {
                Some(req) => b.queue.push_back(req),
                None => open = false,
            },
            Some(done) = b.tasks.join_next(), if !b.tasks.is_empty() => match done {
                Ok(d) => b.complete(d),
                Err(e) => tracing::error!("a batcher task failed: {e}"),
            },
            // a lease ends when its holder drops the receiver: look now and then
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)), if leased => {}
            _ = watch_tick.tick(), if watch => {
                if !current(&b.pipe).healthy() {
                    b.recovering = true;
                    b.counts.recoveries.detected("a node of the pipeline is gone".into());
                    tracing::warn!("a node of the pipeline is gone: rebuilding it");
                } else {
                    b.look_for_faster();
                }
            }
        }
    }
}

fn current(p: &SharedPipe) -> Arc<dyn Pipe> {
    p.read().unwrap().clone()
}

impl Batcher {
    /// Gives free slots to waiting requests, the slot whose cache shares the longest prefix first.
    fn admit(&mut self) {
        while !self.queue.is_empty() && !self.recovering {
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.job.is_none() && !s.freeing)
                .map(|(i, s)| (common_prefix(&s.cached, &self.queue[0].prompt), std::cmp::Reverse(s.used), i))
                .max();
            let Some((shared, _, i)) = best else { return };
            let req = self.queue.pop_front().expect("not empty");
            self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
            self.counts.active.fetch_add(1, Ordering::Relaxed);
            self.tick += 1;
            // at least one prompt token is decoded: its logits give the first token
            let keep = if req.lease { 0 } else { shared.min(req.prompt.len() - 1) };
            let req_lease = req.lease;
            let slot = &mut self.slots[i];
            slot.used = self.tick;
            let cached = std::mem::take(&mut slot.cached).len();
            // a stale tail counts as cached: the admission trims it away
            let cached = if std::mem::take(&mut slot.stale) { usize::MAX } else { cached };
            slot.job = Some(Job {
                req,
                phase: Phase::Admitting,
                ticket: self.tick,
                next_prompt: 0,
                decoded: Vec::new(),
                generated: 0,
                in_flight: 0,
                doomed: false,
                emitted: Vec::new(),
                tuner: (self.cfg.spec.on() && !req_lease).then(|| Tuner::new(self.cfg.spec.max_window)),
                drafts: Vec::new(),
                trim: None,
                proposed: None,
                draft_kv: DraftKv::default(),
            });
            self.start_admission(i, keep, cached);
        }
    }

    /// Trims the sequence's cache to `keep` tokens and installs its sampler on the stages.
    fn start_admission(&mut self, i: usize, keep: usize, cached: usize) {
        let job = self.slots[i].job.as_ref().expect("admitting a job");
        let (pipe, seq, epoch) = (current(&self.pipe), i as i32, self.epoch);
        let (lease, history) = (job.req.lease, job.req.prompt.clone());
        let mut params = job.req.sampling.clone();
        // a rebuilt sequence resumes its random stream after the draws it took
        params.draws = if params.temperature > 0.0 { job.generated } else { 0 };
        params.generated = job.generated;
        self.tasks.spawn(async move {
            let keep = async {
                let mut keep = keep;
                if keep < cached && !(keep > 0 && pipe.seq_rm(seq, keep as i32, -1).await?) {
                    pipe.seq_rm(seq, -1, -1).await?;
                    keep = 0;
                }
                if !lease {
                    pipe.set_sampler(seq, params, history).await?;
                }
                Ok(keep)
            }
            .await;
            Done::Admitted { slot: i, epoch, keep }
        });
    }

    /// Drops sequences whose caller left (or that failed) once nothing of theirs is in flight.
    fn reap(&mut self) {
        let shutting = self.shutdown.load(Ordering::Relaxed);
        if shutting {
            for req in self.queue.drain(..) {
                self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = req.events.send(SeqEvent::Failed(RuntimeError::ShuttingDown));
            }
        }
        for i in 0..self.slots.len() {
            let Some(job) = self.slots[i].job.as_mut() else { continue };
            if job.req.events.is_closed() {
                job.doomed = true;
            }
            if shutting && !job.doomed {
                let _ = job.req.events.send(SeqEvent::Failed(RuntimeError::ShuttingDown));
                job.doomed = true;
            }
            let busy = matches!(job.phase, Phase::Admitting | Phase::Drafting(_));
            if job.doomed && job.in_flight == 0 && !busy {
                self.release(i);
            }
        }
    }

    /// Ends the slot's job and drops its KV.
    fn release(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if slot.job.take().is_some() {
            self.counts.active.fetch_sub(1, Ordering::Relaxed);
        }
        slot.cached.clear();
        slot.stale = false;
        slot.freeing = true;
        let pipe = current(&self.pipe);
        self.tasks.spawn(async move {
            if let Err(e) = pipe.seq_rm(i as i32, -1, -1).await {
                tracing::warn!(seq = i, "cannot drop a sequence's KV: {e}");
            }
            Done::Freed { slot: i }
        });
    }

    /// Builds and queues the next batch; false when there is nothing to decode now.
    async fn submit_next(&mut self) -> bool {
        if self.recovering {
            return false;
        }
        let n_batch = self.cfg.n_batch.max(1) as usize;
        let decoding = self
            .slots
            .iter()
            .filter_map(|s| s.job.as_ref())
            .filter(|j| !j.doomed && matches!(j.phase, Phase::Ready(_) | Phase::Waiting | Phase::Drafting(_)))
            .count();
        // one group of sequences per batch in flight, so that every stage has work
        let group = decoding.div_ceil(self.cfg.depth.max(1)).max(1);
        let mut chunk =
            TokenChunk { tokens: vec![], pos: vec![], seq: vec![], output: vec![], spec: Default::default() };
        let (mut outputs, mut members) = (Vec::new(), Vec::new());
        // a wide batch is compute-bound already: proposals would cost more than they save
        let speculate = self.cfg.spec.on() && decoding <= self.cfg.spec.max_sequences;
        let (n_ctx, eog, cost) = (self.cfg.n_ctx_seq as usize, &self.eog, self.step_cost.model());
        let mut drafted = false;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if members.len() >= group.min(n_batch) || chunk.tokens.len() >= n_batch {
                break;
            }
            let Some(job) = slot.job.as_mut() else { continue };
            let Phase::Ready(t) = job.phase else { continue };
            if job.doomed {
                continue;
            }
            let pos = job.pos();
            // the window never outruns the sequence's limits, so it only ends early on an
            // end-of-generation token
            let room = (n_batch - chunk.tokens.len() - 1)
                .min(job.req.max_tokens.saturating_sub(job.generated).saturating_sub(1) as usize)
                .min(n_ctx.saturating_sub(pos + 2));
            let proposed = job.proposed.take();
            let k = match job.tuner.as_mut() {
                Some(tuner) if speculate && room > 0 && proposed.is_none() => tuner.window(cost).min(room),
                _ if speculate => room.min(proposed.as_ref().map_or(0, Vec::len)),
                _ => 0,
            };
            job.drafts = match (proposed, &self.draft) {
                (Some(mut p), _) => {
                    p.truncate(k);
                    cut_at_eog(p, eog, job.req.ignore_eos)
                }
                (None, Some(draft)) if k > 0 => {
                    // the draft model works while the other sequences decode
                    let history: Vec<Token> = job.req.prompt.iter().chain(&job.emitted).copied().collect();
                    let (draft, kv, ticket) = (draft.clone(), std::mem::take(&mut job.draft_kv), job.ticket);
                    self.tasks.spawn(async move {
                        let result = draft.propose(i as i32, history, kv, k).await;
                        Done::Drafted { slot: i, ticket, result }
                    });
                    job.phase = Phase::Drafting(t);
                    continue;
                }
                (None, _) if k > 0 => propose(&job.req.prompt, &job.emitted, k, eog, job.req.ignore_eos),
                _ => vec![],
            };
            if let Some(p0) = job.trim.take() {
                chunk.spec.trim.push((i as i32, p0 as i32));
            }
            let window = std::iter::once(t).chain(job.drafts.iter().copied());
            for (j, tok) in window.enumerate() {
                chunk.tokens.push(tok);
                chunk.pos.push((pos + j) as i32);
                chunk.seq.push(i as i32);
                chunk.output.push(true);
                chunk.spec.draft.push(job.drafts.get(j).copied().unwrap_or(NO_DRAFT));
                outputs.push(i);
            }
            drafted |= !job.drafts.is_empty();
            job.decoded.push(t);
            job.phase = Phase::Waiting;
            job.in_flight += 1;
            members.push(i);
        }
        // prompt chunks fill the rest of the batch, first come first served
        let mut prefill: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.job.as_ref().filter(|j| j.phase == Phase::Prefill && !j.doomed).map(|j| (j.ticket, i))
            })
            .collect();
        prefill.sort();
        for (_, i) in prefill {
            let budget = n_batch - chunk.tokens.len();
            if budget == 0 {
                break;
            }
            let job = self.slots[i].job.as_mut().expect("listed above");
            let start = job.next_prompt;
            let n = budget.min(job.req.prompt.len() - start);
            for k in start..start + n {
                chunk.tokens.push(job.req.prompt[k]);
                chunk.pos.push(k as i32);
                chunk.seq.push(i as i32);
                chunk.output.push(false);
            }
            job.next_prompt += n;
            job.in_flight += 1;
            members.push(i);
            if job.next_prompt == job.req.prompt.len() {
                *chunk.output.last_mut().expect("n >= 1") = true;
                job.phase = Phase::Waiting;
                outputs.push(i);
            }
        }
        if chunk.tokens.is_empty() {
            return false;
        }
        if drafted {
            // prompt rows carry no proposal
            chunk.spec.draft.resize(chunk.tokens.len(), NO_DRAFT);
        } else {
            chunk.spec.draft.clear();
        }
        let sample = !outputs.is_empty();
        let (rows, decode_only) = (chunk.tokens.len(), chunk.output.iter().all(|&o| o));
        let t0 = std::time::Instant::now();
        match current(&self.pipe).submit(chunk, sample).await {
            Ok(pending) => {
                self.batches += 1;
                self.tasks.spawn(async move {
                    let result = pending.await;
                    let step = decode_only.then(|| (rows, t0.elapsed().as_secs_f64()));
                    Done::Batch { outputs, members, result, step }
                });
            }
            Err(e) => self.fail(&members, e),
        }
        true
    }

    fn complete(&mut self, done: Done) {
        match done {
            Done::Freed { slot } => self.slots[slot].freeing = false,
            Done::Drafted { slot, ticket, result } => self.drafted(slot, ticket, result),
            Done::Recovered(r) => self.rebuilt(r),
            Done::Faster(t) => self.found(t),
            Done::Admitted { slot, epoch, keep } => {
                if epoch != self.epoch {
                    return; // about the old pipeline: the job is being admitted again
                }
                if let Err(e) = &keep {
                    if self.recoverable(e) {
                        self.begin_recovery(e);
                        return;
                    }
                }
                let job = self.slots[slot].job.as_mut().expect("admitting");
                match keep {
                    Ok(_) if job.req.lease => {
                        let _ = job.req.events.send(SeqEvent::Leased { seq: slot as i32 });
                        job.phase = Phase::Leased;
                    }
                    Ok(keep) => {
                        let _ = job.req.events.send(SeqEvent::Started { cached: keep });
                        job.next_prompt = keep;
                        job.phase = Phase::Prefill;
                    }
                    Err(e) => {
                        let _ = job.req.events.send(SeqEvent::Failed(e.into()));
                        job.phase = Phase::Prefill;
                        job.doomed = true;
                    }
                }
            }
            Done::Batch { outputs, members, result, step } => {
                self.batches -= 1;
                if let (Some((rows, secs)), true) = (step, result.is_ok()) {
                    self.step_cost.observe(rows, secs);
                    tracing::debug!(rows, ms = secs * 1e3, model = ?self.step_cost.model(), "decode step");
                }
                for &i in &members {
                    if let Some(j) = self.slots[i].job.as_mut() {
                        j.in_flight -= 1;
                    }
                }
                match result {
                    Ok(tokens) if tokens.len() == outputs.len() => {
                        // a sequence's rows are consecutive: one window (or one row) each
                        let mut at = 0;
                        while at < outputs.len() {
                            let i = outputs[at];
                            let n = outputs[at..].iter().take_while(|&&o| o == i).count();
                            self.verified(i, &tokens[at..at + n]);
                            at += n;
                        }
                    }
                    Ok(tokens) => {
                        let index = 0;
                        let what = if tokens.len() < outputs.len() { "too few tokens" } else { "too many tokens" };
                        self.fail(&members, PipelineError::Protocol { index, what });
                    }
                    Err(e) => self.fail(&members, e),
                }
            }
        }
    }

    /// A sequence's next token arrived.
    fn sampled(&mut self, i: usize, t: Token) {
        let n_ctx = self.cfg.n_ctx_seq as usize;
        let eog = self.eog.contains(&t);
        let slot = &mut self.slots[i];
        let Some(job) = slot.job.as_mut() else { return };
        if job.doomed {
            return;
        }
        if let Some(f) = crate::engine::GrammarFault::of_token(t) {
            // its grammar ended this sequence; its KV is dropped like a failed one's
            let _ = job.req.events.send(SeqEvent::Failed(crate::engine::EngineError::from(f).into()));
            job.doomed = true;
            return;
        }
        let end = if !job.req.ignore_eos && eog {
            Some(false)
        } else {
            job.generated += 1;
            job.emitted.push(t);
            let _ = job.req.events.send(SeqEvent::Token(t));
            self.counts.recoveries.resumed();
            (job.generated >= job.req.max_tokens || job.pos() + 1 >= n_ctx).then_some(true)
        };
        match end {
            None => job.phase = Phase::Ready(t),
            Some(length) => {
                let _ = job.req.events.send(SeqEvent::Done { length });
                let job = slot.job.take().expect("checked");
                self.counts.active.fetch_sub(1, Ordering::Relaxed);
                // what is in the KV now: the prompt and every generated token but the last
                slot.cached = job.req.prompt;
                slot.cached.extend(job.decoded);
            }
        }
    }

    /// Every sequence of a failed batch fails; its KV is dropped once nothing of it is in flight.
    /// A node failure in a cluster pipeline fails nothing: the pipeline is rebuilt instead.
    fn fail(&mut self, members: &[usize], e: PipelineError) {
        if self.recoverable(&e) {
            self.begin_recovery(&e);
            return;
        }
        let e = RuntimeError::from(e);
        for &i in members {
            if let Some(job) = self.slots[i].job.as_mut() {
                if !job.doomed {
                    let _ = job.req.events.send(SeqEvent::Failed(e.clone()));
                    job.doomed = true;
                }
            }
        }
    }
}

fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
#[path = "batcher_tests.rs"]
mod fake_tests;

#[cfg(test)]
mod tests {
    #[test]
    fn common_prefix_lengths() {
        assert_eq!(super::common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(super::common_prefix(&[], &[1]), 0);
        assert_eq!(super::common_prefix(&[1, 2], &[1, 2, 3]), 2);
    }
}
