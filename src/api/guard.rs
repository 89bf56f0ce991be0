//! Browser safety, on whether or not an API key is set: web pages must not drive a node.
//!
//! - DNS rebinding: a page on `attacker.example` whose name resolves to 127.0.0.1 is same-origin
//!   with the node as far as the browser knows, so it can read and write the API. A node whose API
//!   is bound to loopback therefore answers only loopback `Host` names (`localhost`, `*.localhost`,
//!   loopback IPs) and the names `EXO_ALLOWED_HOSTS` lists (like Ollama).
//! - CSRF: a cross-origin `POST` with a "simple" content type (`text/plain`, a form) runs without
//!   a preflight. Browsers send `Origin` on every state-changing request, so any method but
//!   GET/HEAD/OPTIONS whose `Origin` is neither this node (same origin) nor one `EXO_ORIGINS`
//!   allows is refused before it reaches a handler. Clients that are not browsers send no `Origin`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;

/// What the guard checks against (from [`super::Access`]).
#[derive(Debug)]
pub(super) struct Rules {
    /// Check `Host` (the API is bound to loopback).
    pub loopback_only: bool,
    /// Host name patterns answered besides loopback ones (`*` wildcards).
    pub allowed_hosts: Vec<String>,
    /// Origins allowed to make cross-origin calls (EXO_ORIGINS patterns).
    pub origins: Vec<String>,
}

pub(super) async fn check(State(rules): State<Arc<Rules>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if let Err((field, msg)) = allowed(&rules, req.method(), req.headers(), req.uri()) {
        return refused(&path, field, &msg);
    }
    next.run(req).await
}

/// Ok, or the header at fault and why.
fn allowed(r: &Rules, m: &Method, h: &HeaderMap, uri: &axum::http::Uri) -> Result<(), (&'static str, String)> {
    // HTTP/1.1 requires Host (hyper fills it from an absolute URI); a request with none came
    // from no browser
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    if r.loopback_only {
        if let Some(host) = host {
            let name = host_name(host);
            if !is_loopback_name(name) && !r.allowed_hosts.iter().any(|p| glob(p.trim(), name)) {
                return Err((
                    "host",
                    format!(
                        "this node answers only loopback host names; `{}` is not one (allow it with EXO_ALLOWED_HOSTS)",
                        clip(host)
                    ),
                ));
            }
        }
    }
    if matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let Some(origin) = h.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("");
    let same = host.is_some_and(|host| same_origin(origin, host));
    if same || (!origin.is_empty() && r.origins.iter().any(|p| glob(p, origin))) {
        return Ok(());
    }
    Err(("origin", format!("cross-origin {m} from `{}` refused (allow the origin with EXO_ORIGINS)", clip(origin))))
}

/// `Origin: http://HOST[:PORT]` naming exactly the authority the request was sent to.
fn same_origin(origin: &str, host: &str) -> bool {
    let rest = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|a| !a.is_empty() && a.eq_ignore_ascii_case(host))
}

/// The name in a `Host` value: `[::1]:80` → `::1`, `localhost:80` → `localhost`, `a.b.` → `a.b`.
fn host_name(host: &str) -> &str {
    let name = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => host,
        }
    };
    name.strip_suffix('.').unwrap_or(name)
}

fn is_loopback_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Header values echoed in errors, bounded.
fn clip(s: &str) -> String {
    s.chars().take(100).collect()
}

/// A 403 in the error shape of the API the path belongs to, naming the header at fault.
fn refused(path: &str, field: &str, msg: &str) -> Response {
    let body = if path.starts_with("/v1/messages") {
        json!({ "type": "error", "error": { "type": "permission_error", "message": msg } })
    } else if path.starts_with("/v1/") {
        json!({ "error": { "message": msg, "type": "invalid_request_error", "param": field, "code": null } })
    } else {
        json!({ "error": msg })
    };
    (StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// `*` matches any run of characters (`http://localhost:*`, `https://*.example.com`, `*`).
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut i, mut j) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while j < s.len() {
        if i < p.len() && p[i] != b'*' && p[i].eq_ignore_ascii_case(&s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(st) = star {
            i = st + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Uri};

    fn rules(loopback_only: bool) -> Rules {
        Rules {
            loopback_only,
            allowed_hosts: vec!["box.lan".into(), "*.tail.net".into()],
            origins: vec!["http://localhost:*".into()],
        }
    }

    fn check(r: &Rules, m: Method, host: Option<&str>, origin: Option<&str>) -> Result<(), &'static str> {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(header::HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        allowed(r, &m, &h, &Uri::from_static("/api/chat")).map_err(|(f, _)| f)
    }

    #[test]
    fn loopback_bound_nodes_answer_loopback_and_allowed_host_names_only() {
        let r = rules(true);
        for ok in
            ["127.0.0.1:52415", "localhost", "LOCALHOST:1", "[::1]:52415", "127.9.9.9", "app.localhost:3", "localhost."]
        {
            assert_eq!(check(&r, Method::GET, Some(ok), None), Ok(()), "{ok}");
        }
        for ok in ["box.lan:52415", "x.tail.net"] {
            assert_eq!(check(&r, Method::DELETE, Some(ok), None), Ok(()), "{ok}");
        }
        for bad in
            ["attacker.example", "attacker.example:52415", "localhost.attacker.example", "127.0.0.1.nip.io", "0.0.0.0"]
        {
            assert_eq!(check(&r, Method::GET, Some(bad), None), Err("host"), "{bad}");
            assert_eq!(check(&r, Method::DELETE, Some(bad), None), Err("host"), "{bad}");
        }
        // no Host at all: no browser sent it
        assert_eq!(check(&r, Method::GET, None, None), Ok(()));
        // bound beyond loopback: any name (the key is what protects it)
        assert_eq!(check(&rules(false), Method::GET, Some("attacker.example"), None), Ok(()));
    }

    #[test]
    fn cross_origin_state_changes_are_refused_same_origin_and_allowed_ones_pass() {
        for r in [rules(true), rules(false)] {
            let host = Some("127.0.0.1:52415");
            // the dashboard served by the node itself
            assert_eq!(check(&r, Method::POST, host, Some("http://127.0.0.1:52415")), Ok(()));
            // no Origin: not a browser
            assert_eq!(check(&r, Method::POST, host, None), Ok(()));
            // EXO_ORIGINS
            assert_eq!(check(&r, Method::POST, host, Some("http://localhost:3000")), Ok(()));
            for bad in ["https://evil.example", "null", "http://127.0.0.1:52416", "http://127.0.0.1:52415.evil", ""] {
                assert_eq!(check(&r, Method::POST, host, Some(bad)), Err("origin"), "{bad}");
                assert_eq!(check(&r, Method::DELETE, host, Some(bad)), Err("origin"), "{bad}");
            }
            // reads stay readable only through CORS, which the browser enforces
            assert_eq!(check(&r, Method::GET, host, Some("https://evil.example")), Ok(()));
            assert_eq!(check(&r, Method::OPTIONS, host, Some("https://evil.example")), Ok(()));
        }
    }

    #[test]
    fn host_names_are_cut_from_their_port() {
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("a.b:1"), "a.b");
        assert_eq!(host_name("a.b"), "a.b");
        assert_eq!(host_name("a.b.:1"), "a.b");
    }
}
