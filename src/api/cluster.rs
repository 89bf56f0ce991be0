//! Cluster routes: `GET /cluster` (nodes, links between every pair as measured, instances),
//! `POST /instances` (load a model with a placement), `DELETE /instances/{id}`, `POST /bench`
//! (what `exo bench` runs), `GET /placements/preview?model=NAME` (the candidate placements,
//! nothing loaded).

use super::cluster_view::{BenchRequest, ClusterView, InstanceView, NodeStage, NodeView, PlaceRequest, Placed};
use super::ollama::{error, runtime_error};
use super::util::{model, parse};
use super::{status, AppState};
use crate::engine::LayerRange;
use crate::pipeline::{run_bench, PipelineError};
use crate::placement::{stage_memory, ModelCost};
use crate::runtime::validate::{MAX_CONTEXT, MIN_CONTEXT};
use crate::runtime::{Field, Forced, Instance, LoadOptions, ModelRef};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use std::time::SystemTime;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cluster", get(cluster))
        .route("/instances", post(create))
        .route("/instances/{id}", delete(remove))
        .route("/bench", post(bench))
        .route("/placements/preview", get(preview))
}

/// `?model=NAME[&ctx=N]`: names only; every parameter checked, a 400 names the one at fault.
async fn preview(State(state): State<AppState>, q: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Response {
    let Ok(Query(pairs)) = q else {
        return error(StatusCode::BAD_REQUEST, "query: not a valid query string");
    };
    let (mut name, mut ctx) = (None, None);
    for (k, v) in pairs {
        let slot_taken = match k.as_str() {
            "model" => name.replace(v).is_some(),
            "ctx" => match v.parse::<u32>() {
                Ok(n) if (MIN_CONTEXT..=MAX_CONTEXT as u32).contains(&n) => ctx.replace(n).is_some(),
                _ => {
                    let msg = format!("ctx: must be a number of tokens in [{MIN_CONTEXT}, {MAX_CONTEXT}]");
                    return error(StatusCode::BAD_REQUEST, msg);
                }
            },
            _ => return error(StatusCode::BAD_REQUEST, format!("{:?}: unknown parameter (model, ctx)", trunc(&k))),
        };
        if slot_taken {
            return error(StatusCode::BAD_REQUEST, format!("{k}: given more than once"));
        }
    }
    let Some(name) = name else {
        return error(StatusCode::BAD_REQUEST, "model: missing (?model=NAME)");
    };
    let m = match model(&name) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    match state.runtime.preview(&m, ctx).await {
        Ok(p) => axum::Json(p).into_response(),
        // the context is this route's `ctx`
        Err(e) => error(status(&e), e.message_with(|f| if f == Field::NumCtx { "ctx".into() } else { f.ollama() })),
    }
}

/// At most 64 characters of a caller's text, for an error message.
fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

async fn cluster(State(state): State<AppState>) -> Response {
    let rt = &state.runtime;
    let (me, peers) = match rt.cluster() {
        Some(c) => (
            NodeView {
                node_id: Some(c.hello.node_id.clone()),
                name: c.hello.node_name.clone(),
                address: Some(c.hello.peer_addr.clone()),
                namespace: Some(c.hello.namespace.clone()),
                is_self: true,
                last_seen_ms_ago: None,
                profile: Some(c.profile()),
                held: Some(c.held_here()),
                key: Some(c.key_fingerprint()),
                cluster_key_id: Some(c.key_id().to_string()),
            },
            c.peers(),
        ),
        None => (NodeView { name: "local".into(), is_self: true, ..NodeView::default() }, vec![]),
    };
    let (here, here_id) = (me.name.clone(), me.node_id.clone().unwrap_or_default());
    let mut nodes = vec![me];
    nodes.extend(peers.iter().map(|p| NodeView {
        node_id: Some(p.node_id.clone()),
        name: p.name.clone(),
        address: Some(p.address.clone()),
        namespace: None,
        is_self: false,
        last_seen_ms_ago: Some(p.last_seen_ms_ago),
        profile: p.profile.clone(),
        held: Some(p.held.clone()),
        key: Some(p.key.clone()),
        cluster_key_id: None,
    }));
    // every pair, each direction once, as its own end (else the other end) measured it
    let links = crate::cluster::links::pairwise(&here_id, &here, &peers);
    let instances = rt.instances().iter().map(|i| instance_view(i, &here)).collect();
    let view = ClusterView {
        nodes,
        links,
        instances,
        hosted_stages: rt.cluster().map(|c| c.hosted()).unwrap_or_default(),
        transfers: rt.store().transfers.list(),
    };
    axum::Json(view).into_response()
}

fn instance_view(i: &Instance, here: &str) -> InstanceView {
    let l = &i.loaded;
    let stages = i.pipe().stages(here);
    let k = stages.len();
    let cost = ModelCost::from_shape(&l.name, &l.shape);
    // each stage's memory as the placement estimates it: weights, KV and compute buffers
    let memory: Vec<u64> = stages
        .iter()
        .enumerate()
        .map(|(j, (_, r))| {
            let (w, kv, c) = stage_memory(&cost, r.begin, r.end, j == 0, j + 1 == k, l.n_ctx * l.n_seq, 512);
            w + kv + c
        })
        .collect();
    let expires = i.expires_at().map(|t| t.duration_since(SystemTime::now()).unwrap_or_default().as_secs());
    InstanceView {
        id: i.name().to_string(),
        model: i.name().to_string(),
        stages: stages.into_iter().map(|(node, r)| NodeStage { node, begin: r.begin, end: r.end }).collect(),
        active_requests: i.active(),
        waiting_requests: i.waiting(),
        sequences: l.n_seq,
        context_length: l.n_ctx,
        stage_memory_bytes: memory,
        size: l.size,
        expires_in_seconds: expires,
        recoveries: i.recoveries(),
        speculation: i.speculation(),
    }
}

async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    let r: PlaceRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let m = match model(&r.model) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    match state.runtime.place(&m, forced(r.placement), r.num_ctx, None).await {
        Ok(i) => {
            let stages = i.pipe().stages(&state.runtime.here());
            let stages = stages.into_iter().map(|(node, r)| NodeStage { node, begin: r.begin, end: r.end }).collect();
            axum::Json(Placed { id: i.name().to_string(), model: i.name().to_string(), stages }).into_response()
        }
        Err(e) => runtime_error(e),
    }
}

/// Runs `exo bench`'s tests on the model's instance (loaded as requested) on a sequence lent by
/// its batcher, and answers with the report once all runs are done.
async fn bench(State(state): State<AppState>, body: Bytes) -> Response {
    let r: BenchRequest = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = r.config.validate() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let m = match model(&r.model) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    let rt = &state.runtime;
    let needed = r.config.n_ctx_needed();
    // the instance's usual context when it is long enough, so an existing one is reused
    let num_ctx = (needed > rt.limits().default_ctx).then_some(needed);
    let opts = LoadOptions { num_ctx, n_batch: r.batch_size, forced: r.placement.map(forced), no_mmap: false };
    let lease = match rt.lease(&m, opts).await {
        Ok(l) => l,
        Err(e) => return runtime_error(e),
    };
    let name = lease.instance.name().to_string();
    match run_bench(&*lease.instance.pipe(), &name, lease.seq, &r.config, |step| tracing::info!(step, "bench")).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(
            e @ (PipelineError::PromptTooLong { .. } | PipelineError::Bench { .. } | PipelineError::BenchConfig(_)),
        ) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A placement as the API takes it: node names and layer ranges (checked by the runtime).
fn forced(placement: Vec<NodeStage>) -> Forced {
    Forced::Nodes(placement.into_iter().map(|s| (s.node, LayerRange { begin: s.begin, end: s.end })).collect())
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let m = match ModelRef::name(&id) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    if state.runtime.unload(&m) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no instance {id:?}"))
    }
}
