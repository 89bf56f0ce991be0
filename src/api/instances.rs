//! Loaded model instances: loaded on demand, shared by concurrent requests (one KV sequence
//! each), unloaded after `keep_alive` of idleness; a bounded queue per instance.

use super::core::{CoreError, KeepAlive};
use crate::cluster::{ClusterChain, ClusterNode};
use crate::engine::ContextParams;
use crate::engine::{SamplingParams, StageHandle, StageInfo, Token};
use crate::gguf::{ModelFiles, ModelShape};
use crate::pipeline::{Chain, Pipeline, PipelineError, TokenChunk};
use crate::store::{Resolved, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct Limits {
    /// Requests decoded side by side per instance (KV sequences).
    pub parallel: u32,
    /// Requests that may wait for a free sequence; beyond that: 503.
    pub queue: usize,
    pub default_ctx: u32,
    pub keep_alive: Duration,
    pub threads: i32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            parallel: 4,
            queue: 32,
            default_ctx: 4096,
            keep_alive: Duration::from_secs(300),
            threads: crate::engine::ContextParams::default().n_threads,
        }
    }
}

/// Where an instance's stages run: all in this process, or across the cluster.
pub enum Pipe {
    Local(Chain),
    Cluster(Box<ClusterChain>),
}

impl Pipe {
    /// (node, layers) of each stage, for `/api/ps` and `/cluster`.
    pub fn stages(&self, here: &str) -> Vec<(String, crate::engine::LayerRange)> {
        match self {
            Pipe::Local(c) => c.stages().iter().map(|s| (here.to_string(), s.info().range)).collect(),
            Pipe::Cluster(c) => c.stages().iter().map(|s| (s.node.clone(), s.range)).collect(),
        }
    }
}

impl Pipeline for Pipe {
    fn info(&self) -> &StageInfo {
        match self {
            Pipe::Local(c) => Pipeline::info(c),
            Pipe::Cluster(c) => c.info(),
        }
    }
    fn vocab(&self) -> &StageHandle {
        match self {
            Pipe::Local(c) => c.vocab(),
            Pipe::Cluster(c) => c.vocab(),
        }
    }
    async fn set_sampler(&self, seq: i32, params: SamplingParams, history: Vec<Token>) -> Result<(), PipelineError> {
        match self {
            Pipe::Local(c) => Pipeline::set_sampler(c, seq, params, history).await,
            Pipe::Cluster(c) => c.set_sampler(seq, params, history).await,
        }
    }
    async fn run(&self, chunks: Vec<TokenChunk>) -> Result<Vec<Token>, PipelineError> {
        match self {
            Pipe::Local(c) => c.run(chunks).await,
            Pipe::Cluster(c) => c.run(chunks).await,
        }
    }
    async fn seq_rm(&self, seq: i32, p0: i32, p1: i32) -> Result<bool, PipelineError> {
        match self {
            Pipe::Local(c) => Pipeline::seq_rm(c, seq, p0, p1).await,
            Pipe::Cluster(c) => Pipeline::seq_rm(c.as_ref(), seq, p0, p1).await,
        }
    }
    async fn report(&self) -> Result<crate::pipeline::PipelineReport, PipelineError> {
        match self {
            Pipe::Local(c) => c.report().await,
            Pipe::Cluster(c) => c.report().await,
        }
    }
}

pub struct Instance {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub quant: Option<String>,
    pub shape: ModelShape,
    pub chain: Arc<Pipe>,
    pub n_ctx: u32,
    permits: Arc<Semaphore>,
    free_seqs: Mutex<Vec<i32>>,
    waiting: AtomicUsize,
    active: AtomicUsize,
    queue: usize,
    last_used: Mutex<Instant>,
    keep_alive: Mutex<KeepAlive>,
}

/// A KV sequence held by one request; returned on drop.
pub struct Slot {
    pub seq: i32,
    inst: Arc<Instance>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inst.free_seqs.lock().unwrap().push(self.seq);
        self.inst.active.fetch_sub(1, Ordering::Relaxed);
        self.inst.touch();
    }
}

impl Instance {
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, CoreError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(CoreError::Busy(format!(
                        "{} is serving {} requests and {} more are waiting; try again shortly",
                        self.name,
                        self.active(),
                        self.queue
                    )));
                }
                let p = self.permits.clone().acquire_owned().await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                p.map_err(|_| CoreError::Internal("the model was unloaded".into()))?
            }
        };
        let seq = self.free_seqs.lock().unwrap().pop().expect("a permit guarantees a free sequence");
        self.active.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { seq, inst: self.clone(), _permit: permit })
    }

    pub fn touch(&self) {
        *self.last_used.lock().unwrap() = Instant::now();
    }

    pub fn set_keep_alive(&self, k: KeepAlive) {
        *self.keep_alive.lock().unwrap() = k;
        self.touch();
    }

    /// When it will be unloaded if nothing uses it (None: never).
    pub fn expires_at(&self) -> Option<SystemTime> {
        match *self.keep_alive.lock().unwrap() {
            KeepAlive::Forever => None,
            KeepAlive::For(d) => {
                let idle = self.last_used.lock().unwrap().elapsed();
                Some(SystemTime::now() + d.saturating_sub(idle))
            }
        }
    }

    fn expired(&self) -> bool {
        self.active.load(Ordering::Relaxed) == 0
            && self.waiting.load(Ordering::Relaxed) == 0
            && match *self.keep_alive.lock().unwrap() {
                KeepAlive::Forever => false,
                KeepAlive::For(d) => self.last_used.lock().unwrap().elapsed() >= d,
            }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

pub struct Instances {
    pub store: Store,
    pub limits: Limits,
    /// The peer side of this node, when it serves a cluster.
    pub cluster: Option<Arc<ClusterNode>>,
    loaded: Mutex<HashMap<String, Arc<Instance>>>,
    /// One load at a time per model name.
    loading: tokio::sync::Mutex<()>,
    /// Set when the node stops: running generations end with an error.
    pub shutting_down: std::sync::atomic::AtomicBool,
}

impl Instances {
    pub fn new(store: Store, limits: Limits) -> Arc<Instances> {
        Self::with_cluster(store, limits, None)
    }

    pub fn with_cluster(store: Store, limits: Limits, cluster: Option<Arc<ClusterNode>>) -> Arc<Instances> {
        let me = Arc::new(Instances {
            store,
            limits,
            cluster,
            loaded: Mutex::new(HashMap::new()),
            loading: tokio::sync::Mutex::new(()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        });
        // the reaper: unload what outlived its keep_alive
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(me) = weak.upgrade() else { break };
                me.reap();
            }
        });
        me
    }

    fn reap(&self) {
        let mut map = self.loaded.lock().unwrap();
        let expired: Vec<String> = map.iter().filter(|(_, i)| i.expired()).map(|(k, _)| k.clone()).collect();
        for k in expired {
            tracing::info!(model = %k, "unloading after keep_alive");
            map.remove(&k);
        }
    }

    /// Normalized instance key: Ollama clients add `:latest`.
    fn key(model: &str) -> String {
        model.strip_suffix(":latest").unwrap_or(model).to_string()
    }

    /// The loaded instance of `model`, loading it first if needed; returns the load time.
    pub async fn get(&self, model: &str, num_ctx: Option<u32>) -> Result<(Arc<Instance>, Duration), CoreError> {
        let key = Self::key(model);
        if let Some(i) = self.find(&key, num_ctx) {
            i.touch();
            return Ok((i, Duration::ZERO));
        }
        let _guard = self.loading.lock().await;
        if let Some(i) = self.find(&key, num_ctx) {
            return Ok((i, Duration::ZERO));
        }
        let local = match self.store.resolve(model) {
            Ok(Resolved::Local(m)) => m,
            Ok(Resolved::Remote(_)) | Err(crate::store::StoreError::NotFound { .. }) => {
                return Err(CoreError::ModelNotFound(model.to_string()))
            }
            Err(e) => return Err(CoreError::BadRequest(e.to_string())),
        };
        let path = local.first().to_path_buf();
        let shape = ModelShape::from_files(&ModelFiles::open(&path).map_err(|e| CoreError::Internal(e.to_string()))?)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let train = if shape.context_length > 0 { shape.context_length } else { self.limits.default_ctx };
        let n_ctx = num_ctx.unwrap_or(self.limits.default_ctx.min(train));
        // with peers around, placement decides; one local stage is the common answer
        if let Some(stages) = self.cluster_placement(model, &shape, n_ctx)? {
            drop(_guard);
            let t = Instant::now();
            let inst = self.load_placed(model, stages, Some(n_ctx), None).await?;
            return Ok((inst, t.elapsed()));
        }
        let parallel = self.limits.parallel.max(1);
        let context =
            ContextParams { n_ctx, n_batch: 512, n_ubatch: 512, n_threads: self.limits.threads, n_seq_max: parallel };
        // a different context size for a loaded model: replace it once it is idle
        if let Some(old) = self.loaded.lock().unwrap().get(&key) {
            if old.active() > 0 {
                return Ok((old.clone(), Duration::ZERO));
            }
        }
        self.loaded.lock().unwrap().remove(&key);
        let t = Instant::now();
        let p = path.clone();
        let chain = tokio::task::spawn_blocking(move || Chain::load(&p, None, context, true))
            .await
            .map_err(|e| CoreError::Internal(e.to_string()))?
            .map_err(|e| CoreError::Internal(format!("loading {}: {e}", path.display())))?;
        let load = t.elapsed();
        let inst = self.insert(key, local.size, local.quant.clone(), shape, path, Pipe::Local(chain));
        Ok((inst, load))
    }

    fn insert(
        &self,
        key: String,
        size: u64,
        quant: Option<String>,
        shape: ModelShape,
        path: PathBuf,
        pipe: Pipe,
    ) -> Arc<Instance> {
        let parallel = self.limits.parallel.max(1);
        let n_ctx = pipe.info().n_ctx;
        let inst = Arc::new(Instance {
            name: key.clone(),
            path,
            size,
            quant,
            shape,
            n_ctx,
            chain: Arc::new(pipe),
            permits: Arc::new(Semaphore::new(parallel as usize)),
            free_seqs: Mutex::new((0..parallel as i32).rev().collect()),
            waiting: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            queue: self.limits.queue,
            last_used: Mutex::new(Instant::now()),
            keep_alive: Mutex::new(KeepAlive::For(self.limits.keep_alive)),
        });
        tracing::info!(model = %key, n_ctx, "loaded");
        self.loaded.lock().unwrap().insert(key, inst.clone());
        inst
    }

    /// The placement across the cluster when it is not one local stage (None: load here).
    fn cluster_placement(
        &self,
        model: &str,
        shape: &ModelShape,
        n_ctx: u32,
    ) -> Result<Option<Vec<crate::cluster::StagePlacement>>, CoreError> {
        use crate::placement::{self, Backend, Cluster, LinkSpec, ModelCost, NodeSpec, Options};
        let Some(node) = &self.cluster else { return Ok(None) };
        let peers = node.peers();
        if peers.is_empty() {
            return Ok(None);
        }
        // unmeasured speeds and unmeasured links get plain defaults (documented estimates)
        const DEFAULT_GBPS: f64 = 10.0;
        const DEFAULT_BANDWIDTH: f64 = 125e6; // 1 Gbit/s
        let spec = |name: &str, p: &crate::profile::Profile| NodeSpec {
            name: name.to_string(),
            memory: p.memory_offered,
            backend: match p.backend.as_str() {
                "cuda" => Backend::Cuda,
                "metal" => Backend::Metal,
                "vulkan" => Backend::Vulkan,
                _ => Backend::Cpu,
            },
            decode_gbps: p.decode_gbps.unwrap_or(DEFAULT_GBPS),
            prefill_tflops: None,
        };
        let me = node.hello.node_name.clone();
        let mut nodes = vec![spec(&me, &node.profile())];
        let mut addrs = vec![(me.clone(), node.peer_addr().to_string())];
        for p in &peers {
            if let Some(prof) = &p.profile {
                nodes.push(spec(&p.name, prof));
                addrs.push((p.name.clone(), p.address.clone()));
            }
        }
        let mut links = Vec::new();
        for a in &nodes {
            for b in &nodes {
                if a.name != b.name {
                    let rtt = peers
                        .iter()
                        .find(|p| p.name == a.name || p.name == b.name)
                        .and_then(|p| p.rtt_ms)
                        .unwrap_or(1.0);
                    links.push(LinkSpec {
                        from: a.name.clone(),
                        to: b.name.clone(),
                        bandwidth: DEFAULT_BANDWIDTH,
                        latency: rtt / 2e3,
                    });
                }
            }
        }
        let cost = ModelCost::from_shape(model, shape);
        let opts = Options { ctx: n_ctx, ..Options::default() };
        let plan = placement::place(&cost, &Cluster { nodes, links }, &opts)
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        if plan.stages.len() == 1 && plan.stages[0].node == me {
            return Ok(None);
        }
        tracing::info!(model, stages = ?plan.stages.iter().map(|s| format!("{}={}:{}", s.node, s.begin, s.end)).collect::<Vec<_>>(), predicted_tok_s = plan.tokens_per_second, "placed across the cluster");
        Ok(Some(
            plan.stages
                .iter()
                .map(|s| crate::cluster::StagePlacement {
                    node: s.node.clone(),
                    addr: addrs.iter().find(|(n, _)| *n == s.node).map(|(_, a)| a.clone()).unwrap_or_default(),
                    range: crate::engine::LayerRange { begin: s.begin, end: s.end },
                })
                .collect(),
        ))
    }

    /// Loads `model` with a given placement across the cluster (`POST /instances`), replacing a
    /// loaded instance of it.
    pub async fn load_placed(
        &self,
        model: &str,
        stages: Vec<crate::cluster::StagePlacement>,
        num_ctx: Option<u32>,
        n_batch: Option<u32>,
    ) -> Result<Arc<Instance>, CoreError> {
        let node =
            self.cluster.clone().ok_or_else(|| CoreError::BadRequest("this node is not part of a cluster".into()))?;
        let key = Self::key(model);
        let _guard = self.loading.lock().await;
        let local = match self.store.resolve(model) {
            Ok(Resolved::Local(m)) => m,
            _ => return Err(CoreError::ModelNotFound(model.to_string())),
        };
        let path = local.first().to_path_buf();
        let shape = ModelShape::from_files(&ModelFiles::open(&path).map_err(|e| CoreError::Internal(e.to_string()))?)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let n_ctx = num_ctx.unwrap_or(self.limits.default_ctx.min(if shape.context_length > 0 {
            shape.context_length
        } else {
            u32::MAX
        }));
        let n_batch = n_batch.unwrap_or(512).max(1);
        let context = ContextParams {
            n_ctx,
            n_batch,
            n_ubatch: n_batch,
            n_threads: self.limits.threads,
            n_seq_max: self.limits.parallel.max(1),
        };
        self.loaded.lock().unwrap().remove(&key);
        let chain = ClusterChain::load(node, &key, &path, local.size, stages, context)
            .await
            .map_err(|e| CoreError::BadRequest(e.to_string()))?;
        Ok(self.insert(key, local.size, local.quant.clone(), shape, path, Pipe::Cluster(Box::new(chain))))
    }

    fn find(&self, key: &str, num_ctx: Option<u32>) -> Option<Arc<Instance>> {
        let map = self.loaded.lock().unwrap();
        let i = map.get(key)?;
        (num_ctx.is_none() || num_ctx == Some(i.n_ctx)).then(|| i.clone())
    }

    /// Loaded instances (for `/api/ps`).
    pub fn list(&self) -> Vec<Arc<Instance>> {
        let mut v: Vec<Arc<Instance>> = self.loaded.lock().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Unloads `model` now (running requests finish first: they hold the instance).
    pub fn unload(&self, model: &str) -> bool {
        self.loaded.lock().unwrap().remove(&Self::key(model)).is_some()
    }
}
