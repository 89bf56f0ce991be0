//! The loaded instances by key: one shared load per key (however many requests ask at once, in
//! a task of its own so a caller that leaves does not cancel it), keep_alive, and eviction of
//! idle instances when a new one does not fit.

use super::build::{build, context_for, placing_again, view, Built, Target};
use super::header::read_shape;
use super::heal;
use super::instance::{Instance, Loaded, Serving};
use super::policy::{self, Decision, Forced, View};
use super::request::{KeepAlive, ModelRef};
use super::{blocking, validate, LoadOptions, Runtime, RuntimeError};
use crate::engine::LayerRange;
use crate::gguf::ModelShape;
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
    let target = Target { model, key, local: &local };
    let place = || place_and_build(rt, &target, &shape, opts, n_ctx_seq, n_batch);
    let (decision, view, built) = if opts.forced.is_some() { place().await? } else { placing_again(place).await? };
    let pipe = &built.pipe;
    let actual = pipe.info().n_ctx / decision.n_seq;
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
    let healer = healer.filter(|h| pipe.distributed() || h.faster.is_some());
    let spec = rt.limits.spec();
    let draft = match (spec.proposer, &rt.limits.draft_model) {
        (super::speculate::Proposer::Model, Some(name)) => Some(load_draft(rt, name, pipe.info(), &loaded).await?),
        _ => None,
    };
    let serving =
        Serving { n_batch, queue: rt.limits.queue, keep_alive: KeepAlive::For(rt.limits.keep_alive), spec, draft };
    Ok(Instance::start(loaded, built, serving, rt.shutdown.clone(), healer))
}

/// Decides the placement over the nodes there are now and loads it.
async fn place_and_build(
    rt: &Arc<Runtime>,
    target: &Target<'_>,
    shape: &ModelShape,
    opts: &LoadOptions,
    n_ctx_seq: u32,
    n_batch: u32,
) -> Result<(Decision, View, Built), RuntimeError> {
    let key = target.key;
    let ask = policy::Ask {
        n_ctx_seq,
        asked_ctx: opts.num_ctx.is_some(),
        max_seq: rt.limits.parallel,
        n_batch,
        forced: opts.forced.clone(),
    };
    // fit it, unloading idle instances while it does not
    let decision: Decision;
    let view = loop {
        let view = view(rt, rt.registry.held(key)).await?;
        match policy::decide_off_worker(key, shape, &view, ask.clone()).await {
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
    let built = build(rt, target, &decision, &view, opts, context).await?;
    Ok((decision, view, built))
}

fn check_ranges(ranges: &[LayerRange], n_layer: u32) -> Result<(), RuntimeError> {
    LayerRange::tiling(ranges.iter().copied(), n_layer)
        .map_err(|e| RuntimeError::BadPlacement { reason: e.to_string() })
}

/// The draft model named by `--draft`, from this node's models, for `loaded`'s sequences.
async fn load_draft(
    rt: &Arc<Runtime>,
    name: &str,
    target: &crate::engine::StageInfo,
    loaded: &super::instance::Loaded,
) -> Result<Arc<super::draft::Draft>, RuntimeError> {
    let (store, n) = (rt.store.clone(), name.to_string());
    let found = blocking(move || Ok(store.resolve_name(&n))).await?;
    let local = match found {
        Ok(crate::store::Resolved::Local(m)) => m,
        _ => {
            return Err(RuntimeError::Failed {
                reason: format!("the draft model {name} is not on this node (`exo pull {name}` first)"),
            })
        }
    };
    let (name, target, limits) = (name.to_string(), target.clone(), rt.limits.clone());
    let (n_seq, n_ctx) = (loaded.n_seq, loaded.n_ctx);
    blocking(move || super::draft::load(&name, local.first(), &target, n_seq, n_ctx, limits.threads, limits.exact))
        .await
}
