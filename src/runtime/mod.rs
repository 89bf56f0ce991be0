//! The runtime: the one scheduler between the APIs (and `exo run`) and the pipelines. It owns
//! the loaded instances (loaded on demand, one shared load per model, kept alive, evicted), the
//! load policy ([`policy`]), validation of every request ([`validate`]), and generation: each
//! instance's batcher decodes all its sequences together ([`batcher`]), each request reads its
//! own event stream ([`Generation`]). Errors are one typed [`RuntimeError`]; the APIs map it once.

mod batcher;
mod build;
mod chat;
mod draft;
mod embed;
pub mod error;
#[cfg(test)]
mod fake_pipe;
mod formatter;
mod header;
mod heal;
mod instance;
pub mod policy;
pub mod preview;
mod recovery;
mod registry;
pub mod request;
mod session;
pub mod speculate;
mod thinking;
mod tokens;
pub mod validate;

pub use formatter::capabilities;
pub use recovery::RecoveryRecord;

pub use embed::{EmbedInput, EmbedRequest, Embeddings, MAX_EMBED_INPUTS, MAX_EMBED_TOKENS};
pub use error::{ErrorKind, Field, RuntimeError};
pub use instance::{Instance, Loaded};
pub use policy::Forced;
pub use request::{Event, Finish, GenRequest, Generation, Input, KeepAlive, ModelRef, Stats, MAX_KEEP_ALIVE};
pub use session::StopMatcher;

use crate::cluster::ClusterNode;
use crate::engine::StageHandle;
use crate::gguf::ModelShape;
use crate::store::{LocalModel, PullProgress, Store};
use registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Most sequences decoded side by side per instance (fewer when their KV does not fit).
    pub parallel: u32,
    /// Requests that may wait for a sequence per instance; beyond that: busy.
    pub queue: usize,
    /// Context per sequence when a request does not set one (at most the model's).
    pub default_ctx: u32,
    pub keep_alive: Duration,
    pub threads: i32,
    /// Caps the memory this node offers when it is not part of a cluster (a cluster node's
    /// profile carries its own limit).
    pub memory_limit: Option<u64>,
    /// Most tokens one request may generate (None: the context).
    pub max_tokens: Option<u32>,
    /// Batch-invariant kernels on every stage (`engine::ContextParams::exact`): a request's
    /// tokens never depend on what else the instance computes, and recovery replays exactly.
    pub exact: bool,
    /// Where speculative proposals come from (None: the default for `exact`, see
    /// [`Limits::spec`]).
    pub draft: Option<speculate::Proposer>,
    /// Overrides the window and batch width that speculate (tests, benchmarks).
    pub spec_tuning: Option<speculate::SpecConfig>,
    /// The draft model's name (a model of this node) when `draft` is [`speculate::Proposer::Model`].
    pub draft_model: Option<String>,
}

impl Limits {
    /// How instances speculate: as asked, or by default n-gram lookup under `exact` (where a
    /// verified window gives the very logits of one-token steps) and none without it (a window's
    /// rows use other kernels than a single row, so near-ties could flip).
    pub fn spec(&self) -> speculate::SpecConfig {
        let default = if self.exact { speculate::Proposer::Ngram } else { speculate::Proposer::None };
        let proposer = self.draft.unwrap_or(default);
        match self.spec_tuning {
            Some(t) => speculate::SpecConfig { proposer, ..t },
            None => speculate::SpecConfig::new(proposer),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            parallel: 4,
            queue: 32,
            default_ctx: 4096,
            keep_alive: Duration::from_secs(300),
            threads: crate::engine::ContextParams::default().n_threads,
            memory_limit: None,
            max_tokens: None,
            exact: crate::engine::ContextParams::default().exact,
            draft: None,
            spec_tuning: None,
            draft_model: None,
        }
    }
}

/// How a model is to be loaded.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Context per sequence (None: the default).
    pub num_ctx: Option<u32>,
    /// Rows per decode call (None: 512).
    pub n_batch: Option<u32>,
    /// A placement given by the caller (None: the placement search decides).
    pub forced: Option<Forced>,
    /// Read weights with read() instead of mmap (`exo run --no-mmap`).
    pub no_mmap: bool,
}

/// Largest batch a caller may ask for.
pub const MAX_BATCH: u32 = 8192;

pub struct Runtime {
    store: Store,
    limits: Limits,
    cluster: Option<Arc<ClusterNode>>,
    registry: Registry,
    shutdown: Arc<AtomicBool>,
    /// Loads started since this runtime began (each one shared by every request that waits).
    loads: std::sync::atomic::AtomicU64,
    /// What `/metrics` reports: incremented where requests, tokens and loads happen.
    metrics: Arc<crate::metrics::Metrics>,
}

/// A sequence of an instance lent to a caller that drives the pipeline itself (`exo bench`):
/// nothing else decodes on it until this is dropped.
pub struct Lease {
    pub instance: Arc<Instance>,
    pub seq: i32,
    _events: mpsc::UnboundedReceiver<batcher::SeqEvent>,
}

impl Runtime {
    /// A runtime for this process; with `cluster`, models may be placed across its peers.
    pub fn new(store: Store, limits: Limits, cluster: Option<Arc<ClusterNode>>) -> Arc<Runtime> {
        let rt = Arc::new(Runtime {
            store,
            limits,
            cluster,
            registry: Registry::default(),
            shutdown: Arc::default(),
            loads: Default::default(),
            metrics: Arc::default(),
        });
        // the reaper: unload what outlived its keep_alive
        let weak = Arc::downgrade(&rt);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(rt) = weak.upgrade() else { break };
                rt.registry.reap();
            }
        });
        rt
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterNode>> {
        self.cluster.as_ref()
    }

    /// This node's name (as placements and `/cluster` show it).
    pub fn here(&self) -> String {
        self.cluster.as_ref().map_or_else(|| "local".to_string(), |c| c.hello.node_name.clone())
    }

    /// Running generations end with an error; nothing new starts.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// Loads started so far (concurrent first requests for a model share one).
    pub fn loads_started(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Loaded instances, by name.
    pub fn instances(&self) -> Vec<Arc<Instance>> {
        self.registry.list()
    }

    /// Unloads a model now (running requests finish first: they hold the instance).
    pub fn unload(&self, model: &ModelRef) -> bool {
        self.registry.remove(&model.key())
    }

    /// The loaded instance of `model`, loading it first if needed (one load however many ask at
    /// once); also returns how long this caller waited for a load.
    pub async fn instance(
        self: &Arc<Self>,
        model: &ModelRef,
        opts: LoadOptions,
    ) -> Result<(Arc<Instance>, Duration), RuntimeError> {
        if self.shutting_down() {
            return Err(RuntimeError::ShuttingDown);
        }
        if let Some(b) = opts.n_batch {
            if !(1..=MAX_BATCH).contains(&b) {
                return Err(RuntimeError::BadPlacement {
                    reason: format!("batch size {b} is outside [1, {MAX_BATCH}]"),
                });
            }
        }
        self.registry.get_or_load(self, model, opts).await
    }

    /// Loads (or reloads) `model` with a forced placement.
    pub async fn place(
        self: &Arc<Self>,
        model: &ModelRef,
        forced: Forced,
        num_ctx: Option<u32>,
        n_batch: Option<u32>,
    ) -> Result<Arc<Instance>, RuntimeError> {
        let opts = LoadOptions { num_ctx, n_batch, forced: Some(forced), no_mmap: false };
        Ok(self.instance(model, opts).await?.0)
    }

    /// Checks, loads, formats and tokenizes, then queues the request on its instance's batcher.
    pub async fn generate(self: &Arc<Self>, req: GenRequest) -> Result<Generation, RuntimeError> {
        validate::request(&req)?;
        let t0 = Instant::now();
        let opts = LoadOptions { num_ctx: req.num_ctx, ..LoadOptions::default() };
        let (inst, load) = self.instance(&req.model, opts).await?;
        if let Some(k) = req.keep_alive {
            inst.set_keep_alive(k);
        }
        let prepared = chat::prepare(&inst, &req).await?;
        let prompt = inst.tokenize_prompt(&prepared.text).await?;
        let n_ctx = inst.loaded.n_ctx;
        if prompt.is_empty() {
            return Err(RuntimeError::field(Field::Prompt, "the prompt is empty"));
        }
        if prompt.len() >= n_ctx as usize {
            return Err(RuntimeError::PromptTooLong { prompt: prompt.len(), n_ctx });
        }
        let mut sampling = req.sampling.clone();
        sampling.grammar = prepared.grammar;
        sampling.repeat_last_n = validate::repeat_last_n(sampling.repeat_last_n, n_ctx)?;
        let n_vocab = inst.vocab.info().n_vocab;
        if let Some((t, _)) = sampling.logit_bias.iter().find(|(t, _)| *t < 0 || *t as usize >= n_vocab) {
            return Err(RuntimeError::field(
                Field::LogitBias,
                format!("token {t} is outside the vocabulary of {n_vocab}"),
            ));
        }
        let max_tokens = validate::shared_max_tokens(req.max_tokens, self.limits.max_tokens, n_ctx, req.shares);
        let (seq_tx, seq_rx) = mpsc::unbounded_channel();
        let prompt_tokens = prompt.len();
        inst.enqueue(batcher::SeqRequest {
            prompt,
            sampling,
            max_tokens,
            ignore_eos: req.ignore_eos,
            lease: false,
            events: seq_tx,
        })?;
        let labels = [("model", inst.name())];
        self.metrics.requests.inc(&labels);
        self.metrics.prompt_tokens.add(&labels, prompt_tokens as f64);
        let (tx, rx) = mpsc::channel(64);
        let special = prepared.parse.is_some();
        let metrics = self.metrics.clone();
        let session =
            session::Session { instance: inst.clone(), stop: req.stop, prompt_tokens, t0, load, special, metrics };
        tokio::spawn(session.run(seq_rx, tx));
        let events = match (prepared.parse, prepared.split_thinking) {
            (Some(format), _) => chat::parse_output(rx, format),
            (None, Some(opened)) => thinking::split(rx, opened),
            (None, None) => rx,
        };
        Ok(Generation { model: inst.name().to_string(), prompt_tokens, events })
    }

    /// A sequence of `model`'s instance for the caller alone (waits for a free one).
    pub async fn lease(self: &Arc<Self>, model: &ModelRef, opts: LoadOptions) -> Result<Lease, RuntimeError> {
        let (instance, _) = self.instance(model, opts).await?;
        let (tx, mut rx) = mpsc::unbounded_channel();
        instance.enqueue(batcher::SeqRequest {
            prompt: vec![],
            sampling: Default::default(),
            max_tokens: 0,
            ignore_eos: false,
            lease: true,
            events: tx,
        })?;
        loop {
            match rx.recv().await {
                Some(batcher::SeqEvent::Leased { seq }) => return Ok(Lease { instance, seq, _events: rx }),
                Some(batcher::SeqEvent::Failed(e)) => return Err(e),
                Some(_) => continue,
                None => return Err(RuntimeError::Failed { reason: "the model was unloaded".into() }),
            }
        }
    }

    /// A model on this node and its header, for `/api/show`.
    pub async fn show(&self, model: &ModelRef) -> Result<(LocalModel, ModelShape), RuntimeError> {
        let (store, model) = (self.store.clone(), model.clone());
        blocking(move || {
            let local = header::resolve_local(&store, &model)?;
            let shape = header::read_shape(&local)?;
            Ok((local, shape))
        })
        .await
    }

    /// The model a load would use and its header: on this node, or, on a cluster where this
    /// node lacks it, a header-only partial fetched from a holder or the hub (each stage then
    /// fetches only its window).
    pub async fn locate(&self, model: &ModelRef) -> Result<(LocalModel, ModelShape), RuntimeError> {
        let local = header::locate(self, model).await?;
        let l = local.clone();
        let shape = blocking(move || header::read_shape(&l)).await?;
        Ok((local, shape))
    }

    /// Models on this node (blocking scans run off the async workers).
    pub async fn local_models(&self) -> Vec<LocalModel> {
        let store = self.store.clone();
        blocking(move || Ok(store.local_models())).await.unwrap_or_default()
    }

    /// Unloads and deletes a model from a writable models dir.
    pub async fn delete(&self, model: &ModelRef) -> Result<LocalModel, RuntimeError> {
        let ModelRef::Name(name) = model else {
            return Err(RuntimeError::InvalidName {
                name: model.display(),
                reason: "only names can be deleted".into(),
            });
        };
        self.unload(model);
        let (store, name) = (self.store.clone(), name.clone());
        blocking(move || Ok(store.remove(&name)?)).await
    }

    /// Downloads a model by name.
    pub async fn pull(&self, model: &ModelRef, progress: Arc<dyn PullProgress>) -> Result<LocalModel, RuntimeError> {
        let ModelRef::Name(name) = model else {
            return Err(RuntimeError::InvalidName { name: model.display(), reason: "only names can be pulled".into() });
        };
        Ok(self.store.pull(name, progress).await?)
    }

    /// Loads the vocabulary-only stage of a file (tokenizer and template, no weights).
    fn vocab_of(path: &std::path::Path, context: crate::engine::ContextParams) -> Result<StageHandle, RuntimeError> {
        let window = crate::engine::ModelWindow { vocab_only: true, ..crate::engine::ModelWindow::full(path) };
        StageHandle::load(crate::engine::StageSpec { window, context })
            .map_err(|e| RuntimeError::Load { model: path.display().to_string(), reason: e.to_string() })
    }
}

/// Runs blocking work (file system, headers, hashing) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RuntimeError> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Failed { reason: format!("a blocking task failed: {e}") })?
}
