//! The API key and CORS through the router (`api::router_with`), by `oneshot`: every route but
//! `GET /` and `GET /api/version` needs the key, refused with a 401 in its API's error shape;
//! CORS is off by default and answers preflights for the origins EXO_ORIGINS lists.

use crate::common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use exo::api::{self, Access, AppState};
use exo::runtime::{Limits, Runtime};
use serde_json::Value;
use tower::ServiceExt;

fn app(dir: &std::path::Path, access: Access) -> Router {
    let runtime = Runtime::new(common::offline_store(dir), Limits::default(), None);
    api::router_with(AppState { runtime }, &access)
}

fn keyed() -> Access {
    Access { api_key: Some("s3cret".into()), ..Access::default() }
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    let r = app.clone().oneshot(req).await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn req(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri).header("content-type", "application/json")
}

const ROUTES: [(&str, &str); 15] = [
    ("GET", "/api/tags"),
    ("POST", "/api/show"),
    ("GET", "/api/ps"),
    ("POST", "/api/pull"),
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("DELETE", "/api/delete"),
    ("GET", "/v1/models"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/messages"),
    ("GET", "/cluster"),
    ("POST", "/instances"),
    ("POST", "/bench"),
    ("GET", "/no/such/route"),
];

#[tokio::test]
async fn every_route_but_two_needs_the_key_and_refuses_in_its_own_shape() {
    let d = tempfile::tempdir().unwrap();
    let app = app(d.path(), keyed());
    for (m, uri) in ROUTES {
        let m: Method = m.parse().unwrap();
        for auth in [None, Some(("authorization", "Bearer wrong")), Some(("x-api-key", "s3cre"))] {
            let mut r = req(m.clone(), uri);
            if let Some((h, v)) = auth {
                r = r.header(h, v);
            }
            let (status, headers, v) = send(&app, r.body(Body::from("{}")).unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {uri} {auth:?}: {v}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            if uri == "/v1/messages" {
                assert_eq!(
                    (v["type"].as_str(), v["error"]["type"].as_str()),
                    (Some("error"), Some("authentication_error")),
                    "{v}"
                );
            } else if uri.starts_with("/v1/") {
                assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
                assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                assert!(v["error"]["message"].as_str().unwrap().contains("API key"), "{v}");
            } else {
                assert!(v["error"].as_str().unwrap().contains("API key"), "{uri}: {v}");
            }
        }
        // with the key (either header) the route itself answers: whatever it says, not a 401
        for (h, v) in [("authorization", "Bearer s3cret"), ("x-api-key", "s3cret"), ("authorization", "bearer s3cret")]
        {
            let (status, _, body) = send(&app, req(m.clone(), uri).header(h, v).body(Body::from("{}")).unwrap()).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{m} {uri} with {h}: {body}");
        }
    }
    for uri in ["/", "/api/version"] {
        let r = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{uri} is public");
    }
    // only GET is public there
    let (status, _, _) = send(&app, req(Method::POST, "/api/version").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn no_key_configured_means_no_check() {
    let d = tempfile::tempdir().unwrap();
    let app = app(d.path(), Access::default());
    let (status, _, v) = send(&app, req(Method::GET, "/api/tags").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

fn preflight(origin: &str) -> Request<Body> {
    Request::builder()
        .method(Method::OPTIONS)
        .uri("/v1/chat/completions")
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization,content-type,x-stainless-lang")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn cors_is_off_by_default_and_follows_exo_origins() {
    let d = tempfile::tempdir().unwrap();
    // without EXO_ORIGINS: no CORS headers anywhere, so browsers refuse
    let off = app(d.path(), Access::default());
    let (_, h, _) = send(&off, preflight("http://localhost:3000")).await;
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
    let r = Request::get("/api/tags").header("origin", "http://localhost:3000").body(Body::empty()).unwrap();
    let (_, h, _) = send(&off, r).await;
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");

    // with origins (and a key): preflight answered without the key, for listed origins only
    let access = Access { origins: vec!["http://localhost:*".into(), "https://*.example.com".into()], ..keyed() };
    let on = app(d.path(), access);
    for origin in ["http://localhost:3000", "https://chat.example.com"] {
        let (status, h, _) = send(&on, preflight(origin)).await;
        assert!(status.is_success(), "{origin}: {status}");
        assert_eq!(h["access-control-allow-origin"], origin);
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        assert!(methods.contains("POST"), "{methods}");
        let allowed = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("x-stainless-lang"), "{allowed}");
    }
    let (_, h, _) = send(&on, preflight("https://evil.org")).await;
    assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
    // the real request: CORS headers on the answer, the 401 included (so the page can read it)
    let r = req(Method::GET, "/api/tags").header("origin", "http://localhost:5173").body(Body::empty()).unwrap();
    let (status, h, _) = send(&on, r).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
    let r = req(Method::GET, "/api/tags")
        .header("origin", "http://localhost:5173")
        .header("authorization", "Bearer s3cret")
        .body(Body::empty())
        .unwrap();
    let (status, h, _) = send(&on, r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "http://localhost:5173");
}
