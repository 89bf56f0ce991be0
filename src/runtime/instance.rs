//! A loaded model: its pipeline (in this process or across the cluster), its vocabulary, its
//! batcher, and how long it stays loaded.

use super::batcher::{self, Counts, SeqRequest, SharedPipe};
use super::build::Built;
use super::error::RuntimeError;
use super::formatter::Formatter;
use super::heal::Healer;
use super::request::KeepAlive;
use crate::engine::{StageHandle, StageInfo, Token};
use crate::gguf::ModelShape;
use crate::pipeline::Pipe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// What an instance was loaded from and with.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The key it is found by (a model name, or a canonical path from the CLI).
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub quant: Option<String>,
    pub shape: ModelShape,
    /// Positions each sequence may use.
    pub n_ctx: u32,
    /// Sequences decoded side by side.
    pub n_seq: u32,
    /// Estimated bytes of weights, KV and buffers this node holds for it.
    pub local_memory: u64,
}

/// How an instance serves: its batch size, how many requests may wait beyond its sequences, and
/// how long it stays loaded when idle.
pub(crate) struct Serving {
    pub n_batch: u32,
    pub queue: usize,
    pub keep_alive: KeepAlive,
    pub spec: super::speculate::SpecConfig,
    /// The draft model when the proposer is one.
    pub draft: Option<Arc<super::draft::Draft>>,
}

pub struct Instance {
    pub loaded: Loaded,
    spec: super::speculate::SpecConfig,
    draft_name: Option<String>,
    /// Replaced when a node of the pipeline fails (see [`Instance::pipe`]).
    pipe: SharedPipe,
    /// The pipeline failed and could not be rebuilt: the next request loads the model anew.
    broken: Arc<AtomicBool>,
    /// Tokenizes, formats and detokenizes, apart from the stages so it never waits for a decode.
    pub vocab: StageHandle,
    requests: mpsc::Sender<SeqRequest>,
    counts: Arc<Counts>,
    queue: usize,
    last_used: Mutex<Instant>,
    keep_alive: Mutex<KeepAlive>,
    /// When this instance was made (placement changes replace the instance).
    pub created: SystemTime,
    /// The chat template and tool format, read once ([`super::chat`]).
    formatter: tokio::sync::OnceCell<Arc<Formatter>>,
    /// What bounds a prompt's tokens before tokenizing it ([`super::tokens`]), read once.
    vocab_facts: tokio::sync::OnceCell<Arc<super::tokens::VocabFacts>>,
}

impl Instance {
    /// Starts the batcher for a loaded pipeline; `healer` rebuilds a cluster pipeline whose
    /// node failed.
    pub(crate) fn start(
        loaded: Loaded,
        built: Built,
        serving: Serving,
        shutdown: Arc<AtomicBool>,
        healer: Option<Healer>,
    ) -> Arc<Instance> {
        let (Built { pipe, vocab }, Serving { n_batch, queue, keep_alive, spec, draft }) = (built, serving);
        let draft_name = draft.as_ref().map(|d| d.name.clone());
        let counts = Arc::new(Counts::default());
        let cfg =
            batcher::Config { n_seq: loaded.n_seq, n_batch, n_ctx_seq: loaded.n_ctx, depth: pipe.n_stages(), spec };
        let pipe: SharedPipe = Arc::new(std::sync::RwLock::new(pipe));
        let broken = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel(loaded.n_seq as usize + queue + 1);
        let shared = batcher::Shared {
            pipe: pipe.clone(),
            counts: counts.clone(),
            shutdown,
            broken: broken.clone(),
            healer,
            draft,
        };
        tokio::spawn(batcher::run(cfg, rx, shared));
        Arc::new(Instance {
            spec,
            draft_name,
            loaded,
            pipe,
            broken,
            vocab,
            requests: tx,
            counts,
            queue,
            last_used: Mutex::new(Instant::now()),
            keep_alive: Mutex::new(keep_alive),
            created: SystemTime::now(),
            formatter: Default::default(),
            vocab_facts: Default::default(),
        })
    }

    /// Tokenizes a prompt with its cost bounded before and during the work ([`super::tokens`]);
    /// refuses one that needs `n_ctx` tokens or more.
    pub(crate) async fn tokenize_prompt(&self, text: &str) -> Result<Vec<Token>, RuntimeError> {
        super::tokens::prompt(&self.vocab, self.vocab_facts().await?, text, self.loaded.n_ctx).await
    }

    /// Tokenizes a text in bounded pieces, stopping past `max` tokens ([`super::tokens::up_to`]).
    pub(crate) async fn tokenize_up_to(
        &self,
        text: &str,
        max: usize,
        bound_first: bool,
    ) -> Result<super::tokens::Counted, RuntimeError> {
        super::tokens::up_to(&self.vocab, self.vocab_facts().await?, text, max, bound_first).await
    }

    async fn vocab_facts(&self) -> Result<&super::tokens::VocabFacts, RuntimeError> {
        let facts = self
            .vocab_facts
            .get_or_try_init(|| async { super::tokens::VocabFacts::read(&self.vocab).await.map(Arc::new) })
            .await
            .map_err(RuntimeError::from)?;
        Ok(facts)
    }

    /// The chat template and tool format, read on first use.
    pub(crate) async fn formatter(&self) -> Arc<Formatter> {
        self.formatter.get_or_init(|| async { Arc::new(Formatter::new(&self.vocab, self.name()).await) }).await.clone()
    }

    pub fn name(&self) -> &str {
        &self.loaded.name
    }

    /// The pipeline the instance runs on now.
    pub fn pipe(&self) -> Arc<dyn Pipe> {
        self.pipe.read().unwrap().clone()
    }

    /// The pipeline failed and could not be rebuilt.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    pub fn info(&self) -> StageInfo {
        self.pipe().info().clone()
    }

    /// Hands a sequence to the batcher, or refuses when the slots and the queue are full.
    pub(crate) fn enqueue(&self, req: SeqRequest) -> Result<(), RuntimeError> {
        let (waiting, active) = (self.counts.waiting.load(Ordering::SeqCst), self.active());
        if waiting + active >= self.loaded.n_seq as usize + self.queue {
            return Err(RuntimeError::Busy { model: self.loaded.name.clone(), active, waiting });
        }
        self.counts.waiting.fetch_add(1, Ordering::SeqCst);
        if self.requests.try_send(req).is_err() {
            self.counts.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(RuntimeError::Busy { model: self.loaded.name.clone(), active, waiting });
        }
        self.touch();
        Ok(())
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    pub fn set_keep_alive(&self, k: KeepAlive) {
        *self.keep_alive.lock().unwrap() = k;
        self.touch();
    }

    /// Requests being decoded.
    pub fn active(&self) -> usize {
        self.counts.active.load(Ordering::SeqCst)
    }

    /// Rebuilds of this instance's pipeline after a node failed (the latest last).
    pub fn recoveries(&self) -> Vec<super::RecoveryRecord> {
        self.counts.recoveries.records()
    }

    /// How this instance speculates and how well it pays.
    pub fn speculation(&self) -> super::speculate::SpecView {
        let proposer = if self.spec.on() { self.spec.proposer } else { super::speculate::Proposer::None };
        let mut v = super::speculate::SpecView::new(proposer, self.counts.spec.snapshot());
        if let Some(name) = &self.draft_name {
            v.draft = name.clone();
        }
        v
    }

    /// Requests waiting for a sequence.
    pub fn waiting(&self) -> usize {
        self.counts.waiting.load(Ordering::SeqCst)
    }

    pub fn busy(&self) -> bool {
        self.active() + self.waiting() > 0
    }

    /// When it will be unloaded if nothing uses it (None: never).
    pub fn expires_at(&self) -> Option<SystemTime> {
        match *self.keep_alive.lock().unwrap() {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => {
                let idle = if self.busy() { Duration::ZERO } else { self.last_used.lock().unwrap().elapsed() };
                Some(SystemTime::now() + d.saturating_sub(idle))
            }
        }
    }

    pub(crate) fn expired(&self) -> bool {
        // a broken instance goes whatever its keep_alive: the next request loads it anew
        !self.busy()
            && (self.broken()
                || match *self.keep_alive.lock().unwrap() {
                    KeepAlive::Forever => false,
                    KeepAlive::For(d) => self.last_used.lock().unwrap().elapsed() >= d,
                })
    }

    pub(crate) fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap().elapsed()
    }
}
