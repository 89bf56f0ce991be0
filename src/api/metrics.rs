//! `GET /metrics`: this node in Prometheus text format. The runtime's counters
//! ([`crate::metrics::Metrics`]: requests, tokens, time to first token, load times) plus what is
//! read from live state at scrape time: queue depth and active requests per instance, each
//! stage's compute time (asked of the stages of the instances this node coordinates), data sent
//! to each peer, and the measured round trip and bandwidth of each link.

use super::AppState;
use crate::metrics::{Labels, Text};
use crate::pipeline::StageReport;
use crate::runtime::{Instance, Runtime};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(metrics))
}

/// How long a scrape waits for a pipeline's stages to report (a stage answers after the batch
/// it is computing).
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Each stage's work counters of one instance; none when its stages did not answer in time.
pub(super) async fn stage_reports(i: &Instance) -> Vec<StageReport> {
    let pipe = i.pipe();
    match tokio::time::timeout(REPORT_TIMEOUT, pipe.report()).await {
        Ok(Ok(r)) => r.stages,
        Ok(Err(e)) => {
            tracing::debug!(model = i.name(), "no stage report: {e}");
            vec![]
        }
        Err(_) => vec![],
    }
}

fn l(pairs: &[(&'static str, String)]) -> Labels {
    pairs.to_vec()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = render(&state.runtime).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

pub async fn render(rt: &Arc<Runtime>) -> String {
    let mut t = Text::default();
    rt.metrics().write(&mut t);
    t.family(
        "exo_loads_total",
        "Model loads started (requests that wait for one share it).",
        "counter",
        &[(vec![], rt.loads_started() as f64)],
    );
    let instances = rt.instances();
    let per = |f: &dyn Fn(&Instance) -> f64| -> Vec<(Labels, f64)> {
        instances.iter().map(|i| (l(&[("model", i.name().to_string())]), f(i))).collect()
    };
    t.family("exo_queue_depth", "Requests waiting for a sequence.", "gauge", &per(&|i| i.waiting() as f64));
    t.family("exo_active_requests", "Requests being decoded.", "gauge", &per(&|i| i.active() as f64));
    t.family(
        "exo_instance_stages",
        "Pipeline stages of each loaded instance.",
        "gauge",
        &per(&|i| i.pipe().n_stages() as f64),
    );
    t.family(
        "exo_recoveries_total",
        "Pipeline rebuilds after a node failed.",
        "counter",
        &per(&|i| i.recoveries().len() as f64),
    );
    let spec: Vec<_> = instances.iter().map(|i| (l(&[("model", i.name().to_string())]), i.speculation())).collect();
    let spec_family = |f: &dyn Fn(&crate::runtime::speculate::SpecView) -> Option<f64>| -> Vec<(Labels, f64)> {
        spec.iter().filter_map(|(labels, v)| f(v).map(|x| (labels.clone(), x))).collect()
    };
    t.family(
        "exo_spec_windows_total",
        "Decode steps that verified speculative proposals.",
        "counter",
        &spec_family(&|v| Some(v.stats.windows as f64)),
    );
    t.family(
        "exo_spec_proposed_tokens_total",
        "Tokens proposed for verification.",
        "counter",
        &spec_family(&|v| Some(v.stats.proposed as f64)),
    );
    t.family(
        "exo_spec_accepted_tokens_total",
        "Proposed tokens the model's own sampling agreed with.",
        "counter",
        &spec_family(&|v| Some(v.stats.accepted as f64)),
    );
    t.family(
        "exo_spec_acceptance_ratio",
        "Share of proposed tokens accepted.",
        "gauge",
        &spec_family(&|v| v.acceptance),
    );
    t.family(
        "exo_spec_tokens_per_verify",
        "Tokens emitted per verify step that carried proposals.",
        "gauge",
        &spec_family(&|v| v.tokens_per_verify),
    );
    let (mut compute, mut decodes, mut rows, mut sent) = (vec![], vec![], vec![], vec![]);
    let here = rt.here();
    for i in &instances {
        for (k, s) in stage_reports(i).await.into_iter().enumerate() {
            // in-process stages report the node as "local"
            let node = if s.node == crate::pipeline::LOCAL { here.clone() } else { s.node.clone() };
            let labels = l(&[
                ("model", i.name().to_string()),
                ("stage", k.to_string()),
                ("node", node.clone()),
                ("layers", format!("{}:{}", s.range.begin, s.range.end)),
            ]);
            compute.push((labels.clone(), s.counters.compute_ns as f64 / 1e9));
            decodes.push((labels.clone(), s.counters.decodes as f64));
            rows.push((labels, s.counters.tokens as f64));
            sent.push((
                l(&[("model", i.name().to_string()), ("stage", k.to_string()), ("node", node)]),
                s.node_data_bytes_sent as f64,
            ));
        }
    }
    t.family("exo_stage_compute_seconds_total", "Time each stage spent computing batches.", "counter", &compute);
    t.family("exo_stage_decodes_total", "Batches each stage decoded.", "counter", &decodes);
    t.family("exo_stage_rows_total", "Rows (tokens or hidden states) each stage decoded.", "counter", &rows);
    t.family(
        "exo_stage_node_data_bytes_sent_total",
        "Inference data the node of each stage has sent on (all its stages together).",
        "counter",
        &sent,
    );
    if let Some(c) = rt.cluster() {
        let peers = c.peers();
        let name_at =
            |addr: &str| peers.iter().find(|p| p.address == addr).map_or_else(|| addr.to_string(), |p| p.name.clone());
        let hops: Vec<(Labels, f64)> = c
            .data_bytes_by_addr()
            .await
            .into_iter()
            .map(|(a, b)| (l(&[("from", here.clone()), ("to", name_at(&a))]), b as f64))
            .collect();
        t.family(
            "exo_hop_data_bytes_sent_total",
            "Inference data (batches, hidden states, sampled tokens) this node sent to each peer on its current connection.",
            "counter",
            &hops,
        );
        let link = |f: &dyn Fn(&crate::cluster::PeerStatus) -> Option<f64>| -> Vec<(Labels, f64)> {
            peers.iter().filter_map(|p| Some((l(&[("from", here.clone()), ("to", p.name.clone())]), f(p)?))).collect()
        };
        t.family(
            "exo_peer_rtt_seconds",
            "Measured round trip to each peer.",
            "gauge",
            &link(&|p| p.rtt_ms.map(|r| r / 1e3)),
        );
        t.family(
            "exo_peer_bandwidth_bytes_per_second",
            "Measured bandwidth to each peer.",
            "gauge",
            &link(&|p| p.bandwidth),
        );
        let prof = c.profile();
        let me = || l(&[("node", here.clone()), ("backend", prof.backend.clone())]);
        t.family(
            "exo_node_memory_offered_bytes",
            "Memory this node offers to the cluster.",
            "gauge",
            &[(me(), prof.memory_offered as f64)],
        );
        if let Some(g) = prof.decode_gbps {
            t.family(
                "exo_node_decode_gigabytes_per_second",
                "Measured decode speed (weights read per second).",
                "gauge",
                &[(me(), g)],
            );
        }
    }
    t.finish()
}
