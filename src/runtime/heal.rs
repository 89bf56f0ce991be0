//! What an instance needs to heal itself: rebuild its pipeline over the nodes left when one
//! fails (the batcher replays its sequences into it), and notice when the cluster offers a
//! clearly faster placement than the one it runs on (a node joined or came back), so that an
//! idle instance moves.

use super::build::{build, context_for, placing_again, view, Target};
use super::request::ModelRef;
use super::{policy, LoadOptions, Runtime, RuntimeError};
use crate::gguf::ModelShape;
use crate::pipeline::Pipe;
use crate::store::LocalModel;
use std::sync::Arc;
use std::time::Instant;

type BoxFuture<T> = crate::pipeline::BoxFuture<'static, T>;

/// Builds a new pipeline for the instance (same sequences and context) over the nodes there are
/// now; with its predicted tokens/s.
pub(crate) type Rebuild = Arc<dyn Fn() -> BoxFuture<Result<(Arc<dyn Pipe>, f64), RuntimeError>> + Send + Sync>;

/// The predicted tokens/s of the best placement there is now (None: none fits).
pub(crate) type Faster = Arc<dyn Fn() -> BoxFuture<Option<f64>> + Send + Sync>;

/// An idle instance moves when a placement is predicted at least this much faster.
pub(crate) const MOVE_WHEN_FASTER: f64 = 1.2;

pub(crate) struct Healer {
    pub rebuild: Rebuild,
    /// Only for placements the search chose (a forced one stays as given while its nodes live).
    pub faster: Option<Faster>,
    /// Predicted tokens/s of the placement loaded now.
    pub predicted: f64,
}

/// What a rebuilt pipeline must keep: the model, the sequences and their context.
#[derive(Clone)]
pub(crate) struct Fixed {
    pub model: ModelRef,
    pub key: String,
    pub local: LocalModel,
    pub shape: ModelShape,
    pub n_seq: u32,
    pub n_ctx_seq: u32,
    pub n_batch: u32,
}

/// The placement for `f` over the nodes there are now, keeping its sequences and context.
async fn decide(rt: &Runtime, f: &Fixed) -> Result<(policy::Decision, policy::View), RuntimeError> {
    let view = view(rt, rt.registry.held(&f.key)).await?;
    let fits = |reason: String| RuntimeError::DoesNotFit {
        model: f.key.clone(),
        reason: format!("no placement over the nodes there are now fits: {reason}"),
    };
    let ask =
        policy::Ask { n_ctx_seq: f.n_ctx_seq, asked_ctx: true, max_seq: f.n_seq, n_batch: f.n_batch, forced: None };
    match policy::decide_off_worker(&f.key, &f.shape, &view, ask).await {
        Ok(d) if d.n_seq == f.n_seq => Ok((d, view)),
        Ok(_) => Err(fits(format!("{} sequences of {} tokens do not fit", f.n_seq, f.n_ctx_seq))),
        Err(e @ (RuntimeError::DoesNotFit { .. } | RuntimeError::InvalidField { .. })) => Err(fits(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Rebuilds an instance's pipeline over the nodes there are (a failed node has dropped out of
/// the cluster view by the time its batches fail).
pub(crate) fn rebuild(rt: &Arc<Runtime>, f: Fixed) -> Rebuild {
    let weak = Arc::downgrade(rt);
    Arc::new(move || {
        let (weak, f) = (weak.clone(), f.clone());
        Box::pin(async move {
            let rt = weak.upgrade().ok_or(RuntimeError::ShuttingDown)?;
            let t = Instant::now();
            let (pipe, d, view) = placing_again(|| {
                let (rt, f) = (&rt, &f);
                async move {
                    let (d, view) = decide(rt, f).await?;
                    let opts = LoadOptions { n_batch: Some(f.n_batch), ..LoadOptions::default() };
                    let context = context_for(rt, &d, f.n_batch);
                    let target = Target { model: &f.model, key: &f.key, local: &f.local };
                    let built = build(rt, &target, &d, &view, &opts, context).await?;
                    Ok((built.pipe, d, view))
                }
            })
            .await?;
            let stages: Vec<String> = pipe.stages(&view.here).iter().map(|(n, r)| format!("{n}={r}")).collect();
            tracing::info!(model = %f.key, ?stages, secs = t.elapsed().as_secs_f64(), "pipeline rebuilt");
            Ok((pipe, d.plan.tokens_per_second))
        })
    })
}

pub(crate) fn faster(rt: &Arc<Runtime>, f: Fixed) -> Faster {
    let weak = Arc::downgrade(rt);
    Arc::new(move || {
        let (weak, f) = (weak.clone(), f.clone());
        Box::pin(async move {
            let rt = weak.upgrade()?;
            decide(&rt, &f).await.ok().map(|(d, _)| d.plan.tokens_per_second)
        })
    })
}
