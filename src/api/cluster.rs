//! Cluster routes: `GET /cluster` (nodes, links between every pair as measured, instances),
//! `POST /instances` (load a model with a placement), `DELETE /instances/{id}`, `POST /bench`
//! (what `exo bench` runs), `GET /placements/preview?model=NAME` (the candidate placements,
//! nothing loaded).

use super::ollama::{error, runtime_error};
use super::util::{model, parse};
use super::{status, AppState};
use crate::engine::LayerRange;
use crate::pipeline::{run_bench, BenchConfig, PipelineError};
use crate::placement::{stage_memory, ModelCost};
use crate::runtime::validate::{MAX_CONTEXT, MIN_CONTEXT};
use crate::runtime::{Field, Forced, LoadOptions, ModelRef};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;
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
            json!({ "node_id": c.hello.node_id, "name": c.hello.node_name, "address": c.hello.peer_addr, "namespace": c.hello.namespace, "self": true, "profile": c.profile(), "held": c.held_here(), "key": c.key_fingerprint(), "cluster_key_id": c.key_id().to_string() }),
            c.peers(),
        ),
        None => (json!({ "name": "local", "self": true }), vec![]),
    };
    let here = me["name"].as_str().unwrap_or("local").to_string();
    let here_id = me["node_id"].as_str().unwrap_or_default().to_string();
    let mut nodes = vec![me];
    for p in &peers {
        nodes.push(json!({ "node_id": p.node_id, "name": p.name, "address": p.address, "self": false, "last_seen_ms_ago": p.last_seen_ms_ago, "profile": p.profile, "held": p.held, "key": p.key }));
    }
    // every pair, each direction once, as its own end (else the other end) measured it
    let links = crate::cluster::links::pairwise(&here_id, &here, &peers);
    let instances: Vec<_> = rt
        .instances()
        .iter()
        .map(|i| {
            let l = &i.loaded;
            let stages = i.pipe().stages(&here);
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
            let stages: Vec<_> =
                stages.into_iter().map(|(n, r)| json!({ "node": n, "begin": r.begin, "end": r.end })).collect();
            let expires = i.expires_at().map(|t| t.duration_since(SystemTime::now()).unwrap_or_default().as_secs());
            json!({ "id": i.name(), "model": i.name(), "stages": stages, "active_requests": i.active(), "waiting_requests": i.waiting(), "sequences": l.n_seq, "context_length": l.n_ctx, "stage_memory_bytes": memory, "size": l.size, "expires_in_seconds": expires, "recoveries": i.recoveries() })
        })
        .collect();
    // stages this node runs for coordinators (itself included)
    let hosted = rt.cluster().map(|c| c.hosted()).unwrap_or_default();
    // downloads and window fetches of this node, running and recent
    let transfers = rt.store().transfers.list();
    axum::Json(json!({ "nodes": nodes, "links": links, "instances": instances, "hosted_stages": hosted, "transfers": transfers }))
        .into_response()
}

#[derive(Deserialize)]
struct StageReq {
    node: String,
    begin: u32,
    end: u32,
}

#[derive(Deserialize)]
struct CreateReq {
    model: String,
    placement: Vec<StageReq>,
    num_ctx: Option<u32>,
}

async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    let r: CreateReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let m = match model(&r.model) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    match state.runtime.place(&m, forced(r.placement), r.num_ctx, None).await {
        Ok(i) => {
            let here = state.runtime.here();
            let stages: Vec<_> = i
                .pipe()
                .stages(&here)
                .into_iter()
                .map(|(n, r)| json!({ "node": n, "begin": r.begin, "end": r.end }))
                .collect();
            axum::Json(json!({ "id": i.name(), "model": i.name(), "stages": stages })).into_response()
        }
        Err(e) => runtime_error(e),
    }
}

#[derive(Deserialize)]
struct BenchReq {
    model: String,
    /// A forced placement; without it the node places the model as for any request.
    placement: Option<Vec<StageReq>>,
    /// Tokens per decode call (the prompt's chunk size) for a forced placement.
    batch_size: Option<u32>,
    #[serde(flatten)]
    config: BenchConfig,
}

/// Runs `exo bench`'s tests on the model's instance (loaded as requested) on a sequence lent by
/// its batcher, and answers with the report once all runs are done.
async fn bench(State(state): State<AppState>, body: Bytes) -> Response {
    let r: BenchReq = match parse(&body) {
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
fn forced(placement: Vec<StageReq>) -> Forced {
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
