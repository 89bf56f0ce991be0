//! Cluster routes: `GET /cluster` (nodes, measured links, instances), `POST /instances` (load a
//! model with a placement), `DELETE /instances/{id}`, `POST /bench` (what `exo bench` runs).

use super::ollama::{core_error, error};
use super::util::parse;
use super::AppState;
use crate::cluster::{ClusterNode, StagePlacement};
use crate::engine::LayerRange;
use crate::pipeline::{run_bench, BenchConfig, PipelineError};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/cluster", get(cluster))
        .route("/instances", post(create))
        .route("/instances/{id}", delete(remove))
        .route("/bench", post(bench))
}

async fn cluster(State(state): State<AppState>) -> Response {
    let inst = &state.instances;
    let (me, peers) = match &inst.cluster {
        Some(c) => (
            json!({ "node_id": c.hello.node_id, "name": c.hello.node_name, "address": c.hello.peer_addr, "namespace": c.hello.namespace, "self": true, "profile": c.profile(), "key": c.key_fingerprint(), "cluster_key_id": c.key_id().to_string() }),
            c.peers(),
        ),
        None => (json!({ "name": "local", "self": true }), vec![]),
    };
    let here = me["name"].as_str().unwrap_or("local").to_string();
    let mut nodes = vec![me];
    let mut links = Vec::new();
    for p in &peers {
        nodes.push(json!({ "node_id": p.node_id, "name": p.name, "address": p.address, "self": false, "last_seen_ms_ago": p.last_seen_ms_ago, "profile": p.profile, "key": p.key }));
        links
            .push(json!({ "from": here, "to": p.name, "rtt_ms": p.rtt_ms, "bandwidth_bytes_per_second": p.bandwidth }));
    }
    let instances: Vec<_> = inst
        .list()
        .iter()
        .map(|i| {
            let stages: Vec<_> = i.chain.stages(&here).into_iter().map(|(n, r)| json!({ "node": n, "begin": r.begin, "end": r.end })).collect();
            json!({ "id": i.name, "model": i.name, "stages": stages, "active_requests": i.active(), "context_length": i.n_ctx })
        })
        .collect();
    axum::Json(json!({ "nodes": nodes, "links": links, "instances": instances })).into_response()
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
    let Some(node) = &state.instances.cluster else {
        return error(StatusCode::BAD_REQUEST, "this node is not part of a cluster");
    };
    let stages = match placed(node, r.placement) {
        Ok(s) => s,
        Err(e) => return e,
    };
    match state.instances.load_placed(&r.model, stages, r.num_ctx, None).await {
        Ok(i) => {
            let here = node.hello.node_name.clone();
            let stages: Vec<_> = i
                .chain
                .stages(&here)
                .into_iter()
                .map(|(n, r)| json!({ "node": n, "begin": r.begin, "end": r.end }))
                .collect();
            axum::Json(json!({ "id": i.name, "model": i.name, "stages": stages })).into_response()
        }
        Err(e) => core_error(e),
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

/// Runs `exo bench`'s tests on the model's instance (loaded as requested) on one of its
/// sequences, and answers with the report once all runs are done.
async fn bench(State(state): State<AppState>, body: Bytes) -> Response {
    let r: BenchReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = r.config.validate() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let inst = &state.instances;
    let needed = r.config.n_ctx_needed();
    // the instance's usual context when it is long enough, so an existing one is reused
    let num_ctx = (needed > inst.limits.default_ctx).then_some(needed);
    let loaded = match (r.placement, &inst.cluster) {
        (Some(p), Some(node)) => match placed(node, p) {
            Ok(stages) => inst.load_placed(&r.model, stages, num_ctx, r.batch_size).await,
            Err(e) => return e,
        },
        (Some(_), None) => return error(StatusCode::BAD_REQUEST, "this node is not part of a cluster"),
        (None, _) => inst.get(&r.model, num_ctx).await.map(|(i, _)| i),
    };
    let instance = match loaded {
        Ok(i) => i,
        Err(e) => return core_error(e),
    };
    let slot = match instance.acquire().await {
        Ok(s) => s,
        Err(e) => return core_error(e),
    };
    match run_bench(&*instance.chain, &instance.name, slot.seq, &r.config, |step| tracing::info!(step, "bench")).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e @ (PipelineError::PromptTooLong { .. } | PipelineError::Bench { .. })) => {
            error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Node names to peer addresses; an unknown name is a 400 that lists the known ones.
#[allow(clippy::result_large_err)]
fn placed(node: &ClusterNode, placement: Vec<StageReq>) -> Result<Vec<StagePlacement>, Response> {
    let mut stages = Vec::new();
    for s in placement {
        let Some(addr) = node.address_of(&s.node) else {
            let known: Vec<String> = node.peers().into_iter().map(|p| p.name).collect();
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "no node named {:?} in the cluster (known: {}, {})",
                    s.node,
                    node.hello.node_name,
                    known.join(", ")
                ),
            ));
        };
        stages.push(StagePlacement { node: s.node, addr, range: LayerRange { begin: s.begin, end: s.end } });
    }
    Ok(stages)
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if state.instances.unload(&id) {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no instance {id:?}"))
    }
}
