//! Who may call the API: an optional API key (`--api-key` / `EXO_API_KEY`) checked on every
//! route except `GET /` and `GET /api/version`, and CORS for browser clients, off unless
//! `EXO_ORIGINS` lists origins (like `OLLAMA_ORIGINS`: comma-separated, `*` matches anything).
//!
//! CORS is tower-http's `CorsLayer`: preflight answers, `Vary`, and the allow-* headers have
//! enough corner cases that the maintained implementation is worth the small dependency.

use super::guard::glob;
use super::server::Admission;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

#[derive(Clone, Debug, Default)]
pub struct Access {
    /// Required on every route but `GET /` and `GET /api/version` when set.
    pub api_key: Option<String>,
    /// Browser origins allowed by CORS (patterns with `*`); none: no CORS headers at all.
    pub origins: Vec<String>,
    /// Host names answered besides loopback ones when the API is bound to loopback
    /// (`EXO_ALLOWED_HOSTS`, patterns with `*`): see [`super::guard`].
    pub allowed_hosts: Vec<String>,
    /// Answer only loopback `Host` names (and `allowed_hosts`): set by the node when the API
    /// listens on a loopback address (DNS rebinding).
    pub loopback_only: bool,
}

/// Wraps `router` with the key check and, when origins are given, CORS (outermost, so that
/// preflights are answered without a key, as browsers send none, and errors carry CORS headers).
pub fn apply(router: Router, access: &Access) -> Router {
    let mut r = router;
    if let Some(key) = access.api_key.as_deref().filter(|k| !k.is_empty()) {
        let want: Arc<[u8; 32]> = Arc::new(Sha256::digest(key.as_bytes()).into());
        r = r.layer(middleware::from_fn_with_state(want, require_key));
    } else {
        // no key: a request that passed the browser checks admits its connection
        r = r.layer(middleware::from_fn(|req: Request, next: Next| async move {
            Admission::admit_request(&req);
            next.run(req).await
        }));
    }
    let origins: Vec<String> = access.origins.iter().map(|o| o.trim().to_string()).filter(|o| !o.is_empty()).collect();
    let origins_list = origins.clone();
    if !origins.is_empty() {
        let origins = Arc::new(origins);
        let cors = CorsLayer::new()
            .allow_origin(AllowOrigin::predicate(move |o: &HeaderValue, _| {
                o.to_str().is_ok_and(|o| origins.iter().any(|p| glob(p, o)))
            }))
            .allow_methods(AllowMethods::list([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::DELETE,
                Method::OPTIONS,
            ]))
            // SDKs send their own headers (x-stainless-*, anthropic-version, ...): mirror them
            .allow_headers(AllowHeaders::mirror_request())
            .max_age(std::time::Duration::from_secs(3600));
        r = r.layer(cors);
    }
    // outermost: a rebinding or cross-site request is refused before CORS or the key see it
    let rules = super::guard::Rules {
        loopback_only: access.loopback_only,
        allowed_hosts: access.allowed_hosts.iter().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect(),
        origins: origins_list,
    };
    r.layer(middleware::from_fn_with_state(Arc::new(rules), super::guard::check))
}

/// Routes anyone may call: a liveness probe and the version (what clients check first), and the
/// dashboard's static page and assets (they hold no data; the page asks for the key).
fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && (path == "/" || path == "/api/version" || crate::api::dashboard::is_asset(path))
}

/// The keys a client presented: `x-api-key: KEY` (Anthropic's SDK) and `Authorization: Bearer
/// KEY` (OpenAI's SDK, Ollama clients with a header). Empty values count as absent, so that an
/// empty `x-api-key` an SDK adds does not hide a good Bearer key.
fn presented(h: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    let x = h.get("x-api-key").map(|v| v.as_bytes().trim_ascii());
    let bearer = h.get(header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        v.get(..7)?.eq_ignore_ascii_case(b"bearer ").then(|| v[7..].trim_ascii())
    });
    x.into_iter().chain(bearer).filter(|k| !k.is_empty())
}

/// Compares digests, in constant time, so that timing says nothing about the key.
fn key_matches(given: &[u8], want: &[u8; 32]) -> bool {
    let d: [u8; 32] = Sha256::digest(given).into();
    d.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn require_key(State(want): State<Arc<[u8; 32]>>, req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let (mut given, mut ok) = (false, false);
    for k in presented(req.headers()) {
        given = true;
        // both compared whatever the first says: timing tells nothing about which matched
        ok |= key_matches(k, &want);
    }
    if ok {
        // a connection that showed the key is no longer one of the unauthenticated many
        Admission::admit_request(&req);
        return next.run(req).await;
    }
    unauthorized(req.uri().path(), given)
}

/// A 401 in the error shape of the API the path belongs to.
fn unauthorized(path: &str, given: bool) -> Response {
    let msg = if given {
        "invalid API key"
    } else {
        "missing API key: send it as `Authorization: Bearer KEY` or `x-api-key: KEY`"
    };
    let body = if path.starts_with("/v1/messages") {
        json!({ "type": "error", "error": { "type": "authentication_error", "message": msg } })
    } else if path.starts_with("/v1/") {
        json!({ "error": { "message": msg, "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } })
    } else {
        json!({ "error": msg })
    };
    let mut r = (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        assert!(glob("*", "http://anything:1"));
        assert!(glob("http://localhost:*", "http://localhost:3000"));
        assert!(!glob("http://localhost:*", "http://localhost.evil.com"));
        assert!(glob("https://*.example.com", "https://app.example.com"));
        assert!(!glob("https://*.example.com", "https://example.com"));
        assert!(!glob("https://*.example.com", "https://app.example.com.evil.org"));
        assert!(glob("https://app.example.com", "HTTPS://APP.example.com"));
        assert!(!glob("", "x"));
    }

    #[test]
    fn keys_are_read_from_either_header() {
        let want: [u8; 32] = Sha256::digest(b"k1").into();
        let ok = |h: &HeaderMap| presented(h).any(|k| key_matches(k, &want));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert!(ok(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer  k1 "));
        assert!(ok(&h));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic k1"));
        assert_eq!(presented(&h).count(), 0);
        h.insert("x-api-key", HeaderValue::from_static("k2"));
        assert!(!ok(&h));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert!(ok(&h));
        assert!(is_public(&Method::GET, "/") && is_public(&Method::GET, "/api/version"));
        assert!(!is_public(&Method::POST, "/api/version") && !is_public(&Method::GET, "/api/tags"));
    }

    #[test]
    fn an_empty_x_api_key_neither_counts_nor_hides_the_bearer_key() {
        let want: [u8; 32] = Sha256::digest(b"k1").into();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static(""));
        assert_eq!(presented(&h).count(), 0, "an empty key is no key");
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert!(presented(&h).any(|k| key_matches(k, &want)));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(presented(&h).count(), 0);
        // and an empty key never matches a digest of anything
        assert!(!key_matches(b"", &want));
    }
}
