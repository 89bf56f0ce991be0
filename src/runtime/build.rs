//! Building an instance's pipeline: the nodes a placement may use now, the context a decision
//! implies, and the stages it places loaded (in this process or across the cluster). Used by
//! the first load ([`super::registry`]) and by healing ([`super::heal`]).

use super::header::hub_of;
use super::policy::{self, Decision, Forced, View};
use super::request::ModelRef;
use super::{blocking, LoadOptions, Runtime, RuntimeError};
use crate::cluster::{ClusterChain, Origin, StagePlacement};
use crate::engine::{ContextParams, LayerRange, StageHandle};
use crate::pipeline::{Chain, Pipe};
use crate::store::{LocalModel, Location};
use std::sync::Arc;

/// A placement whose node turns out to be gone (it died a moment ago and the view has not
/// caught up) is tried again this many times, this long apart.
pub(crate) const RETRIES: u32 = 8;
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs `place` (decide over the nodes there are, then build) until it succeeds or fails for
/// another reason than a lost node, at most [`RETRIES`] times more: the first load and every
/// rebuild place the same way.
pub(super) async fn placing_again<T, F, Fut>(mut place: F) -> Result<T, RuntimeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RuntimeError>>,
{
    let mut attempt = 0;
    loop {
        match place().await {
            Err(RuntimeError::NodeLost { node, reason, .. }) if attempt < RETRIES => {
                attempt += 1;
                tracing::warn!(%node, "{reason}: placing again");
                tokio::time::sleep(RETRY_AFTER).await;
            }
            r => return r,
        }
    }
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

/// The model a load is about: as it was asked for, the key its instance is found by, and its
/// files on this node (or only its header).
pub(super) struct Target<'a> {
    pub model: &'a ModelRef,
    pub key: &'a str,
    pub local: &'a LocalModel,
}

/// A loaded pipeline and the stage that tokenizes and formats for it.
pub(crate) struct Built {
    pub pipe: Arc<dyn Pipe>,
    pub vocab: StageHandle,
}

/// Loads the stages a decision places: in this process, or across the cluster.
pub(super) async fn build(
    rt: &Arc<Runtime>,
    target: &Target<'_>,
    decision: &Decision,
    view: &View,
    opts: &LoadOptions,
    context: ContextParams,
) -> Result<Built, RuntimeError> {
    let Target { model, key, local } = *target;
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
            Ok(Built { pipe: Arc::new(chain), vocab })
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
    let origin = Origin { here: !header_only, hub: blocking(move || Ok(hub_of(&l))).await? };
    let chain = ClusterChain::load_from(node, &name, &path, local.size, stages, context, origin).await.map_err(
        |e| match e {
            crate::pipeline::PipelineError::Remote(ref f) => {
                RuntimeError::NodeLost { model: key.to_string(), node: f.node.clone(), reason: e.to_string() }
            }
            e => RuntimeError::Load { model: key.to_string(), reason: e.to_string() },
        },
    )?;
    let vocab = chain.vocab().clone();
    Ok(Built { pipe: Arc::new(chain), vocab })
}
