//! The loaded instances by key: one shared load per key (however many requests ask at once, in
//! a task of its own so a caller that leaves does not cancel it), keep_alive, and eviction of
//! idle instances when a new one does not fit.

use super::heal;
use super::instance::{Instance, Loaded, Pipe};
use super::policy::{self, Decision, Forced, View};
use super::request::{KeepAlive, ModelRef};
use super::{blocking, validate, LoadOptions, Runtime, RuntimeError};
use crate::cluster::{ClusterChain, Origin, StagePlacement};
use crate::engine::{ContextParams, LayerRange, StageHandle};
use crate::gguf::{ModelFiles, ModelShape};
use crate::pipeline::Chain;
use crate::store::{LocalModel, Location, Resolved, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

type LoadResult = Option<Result<Arc<Instance>, RuntimeError>>;

enum Entry {
    Loading(watch::Receiver<LoadResult>),
    Ready(Arc<Instance>),
}

#[derive(Default)]
pub(super) struct Registry {
    map: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    pub fn list(&self) -> Vec<Arc<Instance>> {
        let map = self.map.lock().unwrap();
        let mut v: Vec<Arc<Instance>> = map
            .values()
            .filter_map(|e| match e {
                Entry::Ready(i) => Some(i.clone()),
                Entry::Loading(_) => None,
            })
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    }

    pub fn remove(&self, key: &str) -> bool {
        let mut map = self.map.lock().unwrap();
        match map.get(key) {
            Some(Entry::Ready(_)) => map.remove(key).is_some(),
            _ => false,
        }
    }

    pub fn reap(&self) {
        let mut map = self.map.lock().unwrap();
        map.retain(|k, e| match e {
            Entry::Ready(i) if i.expired() => {
                tracing::info!(model = %k, "unloading after keep_alive");
                false
            }
            _ => true,
        });
    }

    /// Bytes the loaded instances hold on this node, except `except`'s.
    pub(super) fn held(&self, except: &str) -> u64 {
        let map = self.map.lock().unwrap();
        map.iter()
            .filter(|(k, _)| k.as_str() != except)
            .filter_map(|(_, e)| match e {
                Entry::Ready(i) => Some(i.loaded.local_memory),
                Entry::Loading(_) => None,
            })
            .sum()
    }

    /// Unloads the least recently used idle instance other than `except`; false if none.
    fn evict_one(&self, except: &str) -> bool {
        let mut map = self.map.lock().unwrap();
        let victim = map
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready(i) if k != except && !i.busy() => Some((i.idle_for(), k.clone())),
                _ => None,
            })
            .max();
        match victim {
            Some((_, k)) => {
                tracing::info!(model = %k, "unloading to make room");
                map.remove(&k);
                true
            }
            None => false,
        }
    }

    pub async fn get_or_load(
        &self,
        rt: &Arc<Runtime>,
        model: &ModelRef,
        opts: LoadOptions,
    ) -> Result<(Arc<Instance>, Duration), RuntimeError> {
        let key = model.key();
        let t = Instant::now();
        let mut waited_for_other = false;
        loop {
            let (mut done, ours) = {
                let mut map = self.map.lock().unwrap();
                match map.get(&key) {
                    Some(Entry::Ready(i)) if opts.forced.is_none() && !i.broken() && (fits(i, &opts) || i.busy()) => {
                        i.touch();
                        return Ok((i.clone(), if waited_for_other { t.elapsed() } else { Duration::ZERO }));
                    }
                    Some(Entry::Loading(rx)) => (rx.clone(), false),
                    _ => {
                        // nothing loaded, or a reload (another context, a forced placement)
                        let (tx, rx) = watch::channel(None);
                        map.insert(key.clone(), Entry::Loading(rx.clone()));
                        rt.loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (rt2, model2, opts2, key2) = (rt.clone(), model.clone(), opts.clone(), key.clone());
                        tokio::spawn(async move {
                            let r = load(&rt2, &model2, &key2, &opts2).await;
                            {
                                let mut map = rt2.registry.map.lock().unwrap();
                                match &r {
                                    Ok(i) => map.insert(key2, Entry::Ready(i.clone())),
                                    Err(_) => map.remove(&key2),
                                };
                            }
                            let _ = tx.send(Some(r));
                        });
                        (rx, true)
                    }
                }
            };
            let r = wait(&mut done).await;
            if ours {
                return r.map(|i| (i, t.elapsed()));
            }
            // someone else's load: share its result, unless this request needs another one
            waited_for_other = true;
            match r {
                Ok(i) if opts.forced.is_none() && !i.broken() && fits(&i, &opts) => return Ok((i, t.elapsed())),
                Err(e) if opts.forced.is_none() => return Err(e),
                _ => continue,
            }
        }
    }
}

/// A loaded instance serves a request that asks for no particular context, or for its own.
fn fits(i: &Instance, opts: &LoadOptions) -> bool {
    opts.num_ctx.is_none_or(|n| n == i.loaded.n_ctx)
}

async fn wait(rx: &mut watch::Receiver<LoadResult>) -> Result<Arc<Instance>, RuntimeError> {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return Err(RuntimeError::Failed { reason: "the load was abandoned".into() });
        }
    }
}

/// A model on this node by name (never a path), or a CLI path.
pub(super) fn resolve_local(store: &Store, model: &ModelRef) -> Result<LocalModel, RuntimeError> {
    let resolved = match model {
        ModelRef::Name(n) => store.resolve_name(n)?,
        ModelRef::Path(p) => store.resolve(&p.display().to_string())?,
    };
    match resolved {
        Resolved::Local(m) => Ok(m),
        Resolved::Remote(_) => {
            Err(RuntimeError::ModelNotFound { name: model.display(), hint: ": it is not on this node".into() })
        }
    }
}

pub(super) fn read_shape(m: &LocalModel) -> Result<ModelShape, RuntimeError> {
    let bad = |e: &dyn std::fmt::Display| unusable(m, e);
    let files = ModelFiles::open(m.first()).map_err(|e| bad(&e))?;
    ModelShape::from_files(&files).map_err(|e| bad(&e))
}

/// A file behind a model name that is no usable GGUF (not one, truncated, malformed): the
/// request named a model that cannot run, a 400 naming `model` (not a server error), and the
/// message names the file, not its absolute path.
pub(super) fn unusable(m: &LocalModel, e: &dyn std::fmt::Display) -> RuntimeError {
    let file = m.first().file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let reason = e.to_string().replace(&*m.first().to_string_lossy(), &file);
    RuntimeError::field(crate::runtime::Field::Model, format!("{} is not a usable GGUF model: {reason}", m.name))
}

/// The nodes a placement may use now (profiles refreshed off the async workers).
pub(super) async fn view(rt: &Runtime, held: u64) -> Result<View, RuntimeError> {
    let (cluster, limit) = (rt.cluster.clone(), rt.limits.memory_limit);
    blocking(move || {
        Ok(match &cluster {
            Some(c) => {
                policy::view(&c.hello.node_name, &c.hello.node_id, c.peer_addr(), &c.profile(), held, &c.peers())
                    .with_held_here(c.held_here())
            }
            None => policy::view("local", "", "", &crate::profile::snapshot(limit, None), held, &[]),
        })
    })
    .await
}

async fn load(
    rt: &Arc<Runtime>,
    model: &ModelRef,
    key: &str,
    opts: &LoadOptions,
) -> Result<Arc<Instance>, RuntimeError> {
    let t = Instant::now();
    // on a cluster, a model this node lacks comes as its header alone (stages fetch windows)
    let local = super::header::locate(rt, model).await?;
    let (local, shape) = blocking(move || {
        let shape = read_shape(&local)?;
        Ok((local, shape))
    })
    .await?;
    let n_ctx_seq = validate::num_ctx(opts.num_ctx, rt.limits.default_ctx, shape.context_length)?;
    let n_batch = opts.n_batch.unwrap_or(512);
    if let Some(Forced::Local(ranges)) = &opts.forced {
        check_ranges(ranges, shape.n_layer)?;
    }
    // a node the placement chose may have died a moment ago (the view has not caught up): an
    // automatic placement is tried again over the nodes there are then
    let mut attempt = 0;
    let (decision, view, pipe, vocab) = loop {
        match place_and_build(rt, model, key, &local, &shape, opts, n_ctx_seq, n_batch).await {
            Err(RuntimeError::NodeLost { node, reason, .. }) if opts.forced.is_none() && attempt < heal::RETRIES => {
                attempt += 1;
                tracing::warn!(%node, "{reason}: placing again");
                tokio::time::sleep(heal::RETRY_AFTER).await;
            }
            r => break r?,
        }
    };
    let actual = crate::pipeline::Pipeline::info(&pipe).n_ctx / decision.n_seq;
    let here = view.here.clone();
    let local_memory = decision.plan.stages.iter().filter(|s| s.node == here).map(|s| s.memory_bytes).sum();
    let loaded = Loaded {
        name: key.to_string(),
        path: local.first().to_path_buf(),
        size: local.size,
        quant: local.quant.clone(),
        shape: shape.clone(),
        n_ctx: decision.n_ctx_seq.min(actual.max(1)),
        n_seq: decision.n_seq,
        local_memory,
    };
    tracing::info!(model = key, n_ctx = loaded.n_ctx, n_seq = loaded.n_seq, secs = t.elapsed().as_secs_f64(), "loaded");
    rt.metrics.load.observe(&[("model", key)], t.elapsed());
    // a cluster pipeline can be rebuilt over the nodes left when one fails; one the placement
    // search chose moves when the cluster offers a clearly faster placement
    let fixed = heal::Fixed {
        model: model.clone(),
        key: key.to_string(),
        local,
        shape,
        n_seq: decision.n_seq,
        n_ctx_seq: loaded.n_ctx,
        n_batch,
    };
    let healer = rt.cluster.is_some().then(|| heal::Healer {
        rebuild: heal::rebuild(rt, fixed.clone()),
        faster: opts.forced.is_none().then(|| heal::faster(rt, fixed)),
        predicted: decision.plan.tokens_per_second,
    });
    let healer = healer.filter(|h| matches!(pipe, Pipe::Cluster(_)) || h.faster.is_some());
    Ok(Instance::start(
        loaded,
        pipe,
        vocab,
        n_batch,
        rt.limits.queue,
        KeepAlive::For(rt.limits.keep_alive),
        rt.shutdown.clone(),
        healer,
    ))
}

/// Decides the placement over the nodes there are now and loads it.
#[allow(clippy::too_many_arguments)]
async fn place_and_build(
    rt: &Arc<Runtime>,
    model: &ModelRef,
    key: &str,
    local: &LocalModel,
    shape: &ModelShape,
    opts: &LoadOptions,
    n_ctx_seq: u32,
    n_batch: u32,
) -> Result<(Decision, View, Pipe, StageHandle), RuntimeError> {
    // fit it, unloading idle instances while it does not
    let decision: Decision;
    let view = loop {
        let view = view(rt, rt.registry.held(key)).await?;
        match policy::decide_off_worker(
            key,
            shape,
            &view,
            n_ctx_seq,
            opts.num_ctx.is_some(),
            rt.limits.parallel,
            n_batch,
            opts.forced.as_ref(),
        )
        .await
        {
            Ok(d) => {
                decision = d;
                break view;
            }
            Err(e @ (RuntimeError::DoesNotFit { .. } | RuntimeError::InvalidField { .. })) => {
                if !rt.registry.evict_one(key) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    };
    let context = context_for(rt, &decision, n_batch);
    let (pipe, vocab) = build(rt, model, key, local, &decision, &view, opts, context).await?;
    Ok((decision, view, pipe, vocab))
}

pub(super) fn context_for(rt: &Runtime, d: &Decision, n_batch: u32) -> ContextParams {
    ContextParams {
        n_ctx: d.n_ctx_seq * d.n_seq,
        n_batch,
        n_ubatch: n_batch,
        n_threads: rt.limits.threads,
        n_seq_max: d.n_seq,
        exact: rt.limits.exact,
    }
}

/// Loads the stages a decision places: in this process, or across the cluster.
#[allow(clippy::too_many_arguments)]
pub(super) async fn build(
    rt: &Arc<Runtime>,
    model: &ModelRef,
    key: &str,
    local: &LocalModel,
    decision: &Decision,
    view: &View,
    opts: &LoadOptions,
    context: ContextParams,
) -> Result<(Pipe, StageHandle), RuntimeError> {
    let path = local.first().to_path_buf();
    let local_forced = matches!(opts.forced, Some(Forced::Local(_)));
    // only the header here: every stage, one on this node too, fetches its window
    let header_only = local.location == Location::HeaderOnly;
    if header_only && local_forced {
        return Err(RuntimeError::BadPlacement {
            reason: format!("{key} is not on this node (only its header): stages in this process need the whole file"),
        });
    }
    // a named placement runs as named, even when every stage is on this node
    if !header_only && (local_forced || (opts.forced.is_none() && decision.is_local(view))) {
        let ranges: Option<Vec<LayerRange>> = match &opts.forced {
            Some(Forced::Local(r)) => Some(r.clone()),
            _ => None,
        };
        let (p, mmap) = (path.clone(), !opts.no_mmap);
        return blocking(move || {
            let chain = Chain::load(&p, ranges.as_deref(), context, mmap)
                .map_err(|e| RuntimeError::Load { model: p.display().to_string(), reason: e.to_string() })?;
            let vocab = Runtime::vocab_of(&p, context)?;
            Ok((Pipe::Local(chain), vocab))
        })
        .await;
    }
    let node = rt.cluster.clone().ok_or(RuntimeError::NoCluster)?;
    let stages: Vec<StagePlacement> = decision
        .plan
        .stages
        .iter()
        .map(|s| StagePlacement {
            node: s.node.clone(),
            addr: view.addr_of(&s.node).unwrap_or_default().to_string(),
            range: LayerRange { begin: s.begin, end: s.end },
        })
        .collect();
    tracing::info!(
        model = key,
        stages = ?stages.iter().map(|s| format!("{}={}", s.node, s.range)).collect::<Vec<_>>(),
        predicted_tok_s = decision.plan.tokens_per_second,
        "placing across the cluster"
    );
    // peers look the model up by name: a CLI path travels as its file's model name
    let name = match model {
        ModelRef::Name(n) => n.clone(),
        ModelRef::Path(p) => crate::store::model_name(p).unwrap_or_else(|| local.name.clone()),
    };
    let l = local.clone();
    let origin = Origin { here: !header_only, hub: blocking(move || Ok(super::header::hub_of(&l))).await? };
    let chain = ClusterChain::load_from(node, &name, &path, local.size, stages, context, origin).await.map_err(
        |e| match e {
            crate::pipeline::PipelineError::Remote(ref f) => {
                RuntimeError::NodeLost { model: key.to_string(), node: f.node.clone(), reason: e.to_string() }
            }
            e => RuntimeError::Load { model: key.to_string(), reason: e.to_string() },
        },
    )?;
    let vocab = crate::pipeline::Pipeline::vocab(&chain).clone();
    Ok((Pipe::Cluster(Box::new(chain)), vocab))
}

fn check_ranges(ranges: &[LayerRange], n_layer: u32) -> Result<(), RuntimeError> {
    let mut next = 0;
    for r in ranges {
        if r.begin != next || r.end <= r.begin {
            return Err(RuntimeError::BadPlacement { reason: format!("stage {r} does not continue at layer {next}") });
        }
        next = r.end;
    }
    if next != n_layer {
        return Err(RuntimeError::BadPlacement { reason: format!("the stages end at layer {next} of {n_layer}") });
    }
    Ok(())
}
