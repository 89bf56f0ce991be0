//! A hostile-input corpus over every route of the API, replayed through the router on a runtime
//! with a generated model, a file that is no GGUF behind a model name and a truncated GGUF: no
//! answer is a server error (a 503 "busy" aside), none panics, none takes long. The corpus is
//! built here (deterministic) from a few hundred bodies: malformed JSON, wrong types, names that
//! are paths, hostile options, schemas, tools, grammars, sizes.

use crate::common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tower::ServiceExt;

/// (method, uri, body): the body is sent as is (not always JSON).
fn corpus() -> Vec<(Method, String, String)> {
    let mut out = Vec::new();
    let mut add = |m: Method, uri: &str, body: String| out.push((m, uri.to_string(), body));
    let raw_bodies = [
        "",
        "{",
        "[]",
        "null",
        "1",
        "\"x\"",
        "{\"model\": 1}",
        "{\"model\": null}",
        "{\"model\": []}",
        "{\"model\": {}}",
        "\u{feff}{}",
        "{\"model\": \"tiny-llama\", \"model\": \"x\"}",
    ];
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let names = [
        "",
        "/etc/passwd",
        "../x",
        "not-gguf",
        "truncated",
        "nothing-here",
        "hf.co/../../etc",
        "a:b:c",
        "tiny-llama:latest:x",
        "\u{0}",
        "x\ny",
        "ñ-模型",
    ];
    let long_name = "m".repeat(10_000);
    let posts = [
        "/api/show",
        "/api/pull",
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",
        "/instances",
        "/bench",
    ];
    for uri in posts {
        for b in raw_bodies.iter().map(|s| s.to_string()).chain([deep.clone()]) {
            add(Method::POST, uri, b);
        }
        for n in names.iter().copied().chain([long_name.as_str()]) {
            let body = json!({ "model": n, "prompt": "hi", "input": "hi", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2, "stream": false, "options": {"num_predict": 2}, "pp": [8], "tg": 0, "repeat": 1 });
            add(Method::POST, uri, body.to_string());
        }
    }
    for n in names.iter().copied().chain(["tiny-llama"]) {
        add(Method::DELETE, "/api/delete", json!({ "model": n }).to_string());
    }
    for b in raw_bodies {
        add(Method::DELETE, "/api/delete", b.to_string());
    }
    // Ollama generate/chat with hostile options, formats, tools
    let gen = |extra: Value| {
        let mut b = json!({ "model": "tiny-llama", "prompt": "hi", "stream": false, "options": { "num_predict": 2 } });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let options = [
        json!([]),
        json!([1, 2]),
        json!("x"),
        json!({"num_ctx": -1}),
        json!({"num_ctx": 0}),
        json!({"num_ctx": 1e20}),
        json!({"num_ctx": 4_294_967_295u64}),
        json!({"temperature": "hot"}),
        json!({"temperature": -1, "num_predict": 2}),
        json!({"temperature": 1e300, "num_predict": 2}),
        json!({"num_predict": -5}),
        json!({"num_predict": 0}),
        json!({"seed": 1e30, "num_predict": 2}),
        json!({"stop": [""], "num_predict": 2}),
        json!({"stop": "x", "num_predict": 2}),
        json!({"stop": vec!["a"; 10_000], "num_predict": 2}),
        json!({"repeat_last_n": -100, "num_predict": 2}),
        json!({"top_k": 2_000_000_000, "num_predict": 2}),
        json!({"top_p": 5, "num_predict": 2}),
        json!({"min_p": -1, "num_predict": 2}),
        json!({"repeat_penalty": -3, "num_predict": 2}),
    ];
    let formats = [
        json!("json"),
        json!("yaml"),
        json!(5),
        json!({"type": "object"}),
        json!({"type": "string", "pattern": "(((("}),
        json!({"type": "string", "pattern": "a{99999999}"}),
        json!({"$ref": "#/nowhere"}),
        json!({"$ref": "#"}),
        json!({"type": ["string", 5]}),
        json!({"type": "integer", "minimum": 10, "maximum": 1}),
        json!({"type": "array", "minItems": 1_000_000_000}),
        json!({"type": "array", "maxItems": -1}),
        json!({"type": "string", "minLength": 99999999}),
        json!({"enum": []}),
        json!({"oneOf": []}),
        json!({"properties": {"a": {"$ref": "#/properties/a"}}, "required": ["a"]}),
        json!({"type": "object", "properties": 5}),
        json!({"type": "object", "additionalProperties": "x"}),
        json!({"format": "date-time", "type": "string"}),
        json!({"type": "number", "multipleOf": 0}),
    ];
    let tools = [
        json!([{"type": "function"}]),
        json!([{"type": "function", "function": {}}]),
        json!([{"type": "function", "function": {"name": ""}}]),
        json!([{"type": "function", "function": {"name": "f", "parameters": 5}}]),
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "pattern": "(("}}}]),
        json!([{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}]),
        json!("tools"),
        json!([1, 2, 3]),
        json!([{"type": "retrieval"}]),
    ];
    for o in &options {
        add(Method::POST, "/api/generate", gen(json!({ "options": o })));
        add(Method::POST, "/api/chat", gen(json!({ "options": o, "messages": [{"role": "user", "content": "hi"}] })));
    }
    for f in &formats {
        add(Method::POST, "/api/generate", gen(json!({ "format": f })));
        let body = json!({ "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": f}} });
        add(Method::POST, "/v1/chat/completions", body.to_string());
    }
    for t in &tools {
        let chat = json!({ "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "tools": t,
            "stream": false, "options": {"num_predict": 2} });
        add(Method::POST, "/api/chat", chat.to_string());
        let oai = json!({ "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "tools": t,
            "max_tokens": 2 });
        add(Method::POST, "/v1/chat/completions", oai.to_string());
        add(
            Method::POST,
            "/v1/messages",
            json!({ "model": "tiny-llama", "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}], "tools": t })
            .to_string(),
        );
    }
    // other fields of the OpenAI and Anthropic APIs
    let oai = |extra: Value| {
        let mut b = json!({ "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2 });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    for extra in [
        json!({"n": 0}),
        json!({"n": -1}),
        json!({"n": 17}),
        json!({"n": 1e10}),
        json!({"n": 2}),
        json!({"max_tokens": -1}),
        json!({"max_tokens": 0}),
        json!({"max_tokens": 1e20}),
        json!({"logit_bias": {"abc": 1}}),
        json!({"logit_bias": {"999999999": 1}}),
        json!({"logit_bias": {"-1": 1}}),
        json!({"logit_bias": {"1": "x"}}),
        json!({"logit_bias": []}),
        json!({"stop": vec!["x"; 100]}),
        json!({"stop": 5}),
        json!({"temperature": "x"}),
        json!({"stream": "yes"}),
        json!({"stream_options": 5}),
        json!({"messages": []}),
        json!({"messages": [{"role": "wizard", "content": "hi"}]}),
        json!({"messages": [{"role": "user"}]}),
        json!({"messages": [{"role": "user", "content": null}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}),
        json!({"messages": [{"role": "user", "content": 5}]}),
        json!({"messages": "hi"}),
        json!({"tool_choice": "required"}),
        json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
        json!({"response_format": {"type": "nonsense"}}),
        json!({"response_format": 5}),
        json!({"seed": -1}),
        json!({"top_logprobs": 1000}),
        json!({"logprobs": "x"}),
        json!({"frequency_penalty": 1e300}),
    ] {
        add(Method::POST, "/v1/chat/completions", oai(extra.clone()));
        add(Method::POST, "/v1/messages", oai(extra));
    }
    for prompt in [json!(""), json!([]), json!([1, 2, 3]), json!([[1, 2]]), json!(null), json!(5), json!(["a", 5])] {
        add(
            Method::POST,
            "/v1/completions",
            json!({ "model": "tiny-llama", "prompt": prompt, "max_tokens": 2 }).to_string(),
        );
    }
    for input in
        [json!(""), json!([]), json!([[]]), json!([1e20]), json!([[-1]]), json!({"a": 1}), json!(vec!["a"; 3000])]
    {
        add(Method::POST, "/api/embed", json!({ "model": "tiny-llama", "input": input }).to_string());
        add(Method::POST, "/v1/embeddings", json!({ "model": "tiny-llama", "input": input }).to_string());
    }
    for extra in [
        json!({"pp": vec![1; 100_000]}),
        json!({"pp": [4_294_967_295u64]}),
        json!({"tg": 4_294_967_295u64}),
        json!({"repeat": 1_000_000}),
        json!({"pp": [0]}),
        json!({"pp": "x"}),
        json!({"placement": [{"node": "x", "begin": 5, "end": 1}]}),
        json!({"placement": 5}),
        json!({"batch_size": 0}),
        json!({"batch_size": 4_294_967_295u64}),
    ] {
        let mut b = json!({ "model": "tiny-llama", "pp": [8], "tg": 0, "repeat": 1 });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        add(Method::POST, "/bench", b.to_string());
    }
    for extra in [
        json!({"placement": [{"node": "nobody", "begin": 0, "end": 4}]}),
        json!({"placement": [{"node": "x", "begin": 0, "end": 4_294_967_295u64}]}),
        json!({"num_ctx": 4_294_967_295u64}),
        json!({"num_ctx": -1}),
        json!({"placement": []}),
    ] {
        let mut b = json!({ "model": "tiny-llama" });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        add(Method::POST, "/instances", b.to_string());
    }
    for uri in [
        "/",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/v1/models",
        "/cluster",
        "/metrics",
        "/dashboard",
        "/dashboard/status",
        "/v1/models/tiny-llama",
        "/v1/models/..%2F..%2Fetc%2Fpasswd",
        "/v1/models/%00",
        "/placements/preview",
        "/placements/preview?model=tiny-llama",
        "/placements/preview?model=../x",
        "/placements/preview?model=tiny-llama&ctx=-1",
        "/placements/preview?model=tiny-llama&ctx=99999999999",
        "/placements/preview?model=not-gguf",
        "/placements/preview?model=truncated",
        "/no/such/route",
        "/v1/nothing",
    ] {
        add(Method::GET, uri, String::new());
    }
    for uri in ["/instances/nothing", "/instances/..%2Fx", "/instances/tiny-llama"] {
        add(Method::DELETE, uri, String::new());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_gets_no_server_error_and_no_panic() {
    let models = common::http::models_dir();
    std::fs::write(models.path().join("not-gguf.gguf"), b"this is not a model").unwrap();
    let mut truncated = std::fs::read(common::model("tiny-llama")).unwrap();
    truncated.truncate(truncated.len() / 3);
    std::fs::write(models.path().join("truncated.gguf"), truncated).unwrap();
    let (app, _rt) = common::http::app(models.path(), common::http::limits());
    let corpus = corpus();
    assert!(corpus.len() >= 300, "{} requests", corpus.len());
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let mut bad = Vec::new();
    let t0 = Instant::now();
    for (method, uri, body) in &corpus {
        let req = Request::builder()
            .method(method.clone())
            .uri(uri.as_str())
            .header("content-type", "application/json")
            .body(Body::from(body.clone()))
            .unwrap();
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(30), app.clone().oneshot(req)).await;
        let short: String = body.chars().take(160).collect();
        let Ok(r) = r else {
            bad.push(format!("{method} {uri} {short}: no answer in 30 s"));
            continue;
        };
        let r = r.unwrap();
        let status = r.status();
        let text = tokio::time::timeout(Duration::from_secs(30), axum::body::to_bytes(r.into_body(), 8 << 20)).await;
        let text = match text {
            Ok(Ok(b)) => String::from_utf8_lossy(&b).into_owned(),
            _ => {
                bad.push(format!("{method} {uri} {short}: body not read in 30 s"));
                continue;
            }
        };
        *statuses.entry(status.as_u16()).or_default() += 1;
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            bad.push(format!("{method} {uri} {short}: {status} {}", text.chars().take(300).collect::<String>()));
        }
        if t.elapsed() > Duration::from_millis(500) {
            println!("slow: {method} {uri} {short}: {status} in {:?}", t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bad.push(format!("{method} {uri} {short}: took {:?}", t.elapsed()));
        }
    }
    println!("{} requests in {:?}: {statuses:?}", corpus.len(), t0.elapsed());
    assert!(bad.is_empty(), "{} bad answers:\n{}", bad.len(), bad.join("\n"));
}
