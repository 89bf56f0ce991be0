//! The dashboard every node serves at `/dashboard`: one page of plain ES modules and SVG,
//! embedded in the binary (no CDN, no JavaScript toolchain). The page itself is public; the data
//! it polls (`/cluster`, `/dashboard/status`, `/placements/preview`, `/api/tags`) and its actions
//! (`/api/chat`, `POST /instances`, `DELETE /instances/{id}`) go through the API key check.

use super::metrics::stage_reports;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

/// (path, content type, body) of each embedded asset.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/dashboard", "text/html; charset=utf-8", include_str!("index.html")),
    ("/dashboard/app.js", "text/javascript; charset=utf-8", include_str!("app.js")),
    ("/dashboard/views.js", "text/javascript; charset=utf-8", include_str!("views.js")),
    ("/dashboard/style.css", "text/css; charset=utf-8", include_str!("style.css")),
];

/// Whether `path` is one of the page's static assets (served without the API key).
pub fn is_asset(path: &str) -> bool {
    ASSETS.iter().any(|(p, _, _)| *p == path)
}

pub fn routes() -> Router<AppState> {
    let mut r = Router::new().route("/dashboard/status", get(status));
    for &(path, kind, body) in ASSETS {
        r = r.route(
            path,
            get(move || async move { ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], body) }),
        );
    }
    r
}

/// What the page shows besides `/cluster`: per loaded instance, the runtime's counters (the
/// page turns them into rates between polls) and each stage's compute counters.
async fn status(State(state): State<AppState>) -> Response {
    let rt = &state.runtime;
    let m = rt.metrics();
    let here = rt.here();
    let mut instances = Vec::new();
    for i in rt.instances() {
        let name = i.name();
        let stages: Vec<_> = stage_reports(&i)
            .await
            .into_iter()
            .map(|s| {
                let node = if s.node == crate::pipeline::LOCAL { here.clone() } else { s.node };
                json!({ "node": node, "begin": s.range.begin, "end": s.range.end, "compute_seconds": s.counters.compute_ns as f64 / 1e9, "decodes": s.counters.decodes, "rows": s.counters.tokens })
            })
            .collect();
        let (ttft_n, ttft_sum) = m.ttft.totals_where("model", name);
        instances.push(json!({
            "model": name,
            "requests": m.requests.sum_where("model", name),
            "prompt_tokens": m.prompt_tokens.sum_where("model", name),
            "generated_tokens": m.generated_tokens.sum_where("model", name),
            "mean_ttft_seconds": (ttft_n > 0).then(|| ttft_sum / ttft_n as f64),
            "active_requests": i.active(),
            "queue_depth": i.waiting(),
            "stages": stages,
        }));
    }
    let models: Vec<String> = rt.local_models().await.into_iter().map(|m| m.name).collect();
    axum::Json(json!({ "node": here, "instances": instances, "local_models": models })).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn assets_are_public_and_data_is_not() {
        assert!(super::is_asset("/dashboard") && super::is_asset("/dashboard/app.js"));
        assert!(!super::is_asset("/dashboard/status") && !super::is_asset("/dashboard/../cluster"));
    }
}
