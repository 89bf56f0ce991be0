//! Every route through axum's `oneshot`: shapes, streaming formats, error shapes, limits.

use crate::common;

use common::http::{app, call, limits, lines, models_dir, post, sse, store};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use exo::api::{self, AppState};
use exo::runtime::{Limits, Runtime};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

#[tokio::test]
async fn root_version_tags_show() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let (s, _, body) = call(&app, Method::GET, "/", None).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "exo is running"));
    let (s, _, _) = call(&app, Method::HEAD, "/", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = call(&app, Method::GET, "/api/version", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["version"].as_str().unwrap().split('.').all(|p| p.parse::<u32>().is_ok()), "bare semver: {v}");

    let (s, _, body) = call(&app, Method::GET, "/api/tags", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["name"], "tiny-llama:latest", "tagged as Ollama lists names");
    assert_eq!(m["details"]["format"], "gguf");
    assert_eq!(m["details"]["family"], "llama");
    // named without its quantization: the header's general.file_type gives it
    assert_eq!(m["details"]["quantization_level"], "F32");
    assert!(m["size"].as_u64().unwrap() > 0 && m["modified_at"].is_string() && m["digest"].is_string());

    let (s, _, body) = post(&app, "/api/show", json!({ "model": "tiny-llama:latest" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["model_info"]["general.architecture"], "llama");
    assert_eq!(v["model_info"]["llama.context_length"], 2048);
    assert!(v["capabilities"].as_array().unwrap().contains(&json!("completion")));
    assert!(v["template"].as_str().unwrap().contains("im_start"));
    let (s, _, body) = post(&app, "/api/show", json!({ "model": "nope" })).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (s, _, _) = post(&app, "/api/show", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, _, body) = call(&app, Method::GET, "/v1/models", None).await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny-llama");
    let (s, _, _) = call(&app, Method::GET, "/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ollama_generate_and_chat_stream_and_not() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let opts = json!({ "num_predict": 8, "seed": 7, "temperature": 0 });
    let (s, ctype, body) =
        post(&app, "/api/generate", json!({ "model": "tiny-llama", "prompt": "Hello", "options": opts })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(ctype, "application/x-ndjson");
    let ls = lines(&body);
    assert!(ls.len() >= 2);
    let streamed: String = ls.iter().filter_map(|l| l["response"].as_str()).collect();
    let last = ls.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 8);
    for k in ["total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_duration"] {
        assert!(last[k].is_u64(), "{k} missing in {last}");
    }
    assert!(ls[..ls.len() - 1].iter().all(|l| l["done"] == false && l["created_at"].is_string()));

    // the same request unstreamed gives the same text (greedy)
    let (s, ctype, body) = post(
        &app,
        "/api/generate",
        json!({ "model": "tiny-llama", "prompt": "Hello", "options": opts, "stream": false }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("application/json"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["response"].as_str().unwrap(), streamed);
    assert_eq!(v["done"], true);

    // a stop sequence taken from that text ends the answer right before it
    let chars: Vec<char> = streamed.chars().collect();
    if chars.len() >= 4 {
        let stop: String = chars[2..4].iter().collect();
        let (_, _, body) = post(
            &app,
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "Hello", "options": { "num_predict": 8, "temperature": 0, "stop": [stop] }, "stream": false }),
        )
        .await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let want = &streamed[..streamed.find(&stop).unwrap()];
        assert_eq!(v["response"].as_str().unwrap(), want, "stop {stop:?}");
        assert_eq!(v["done_reason"], "stop");
    }

    let msgs = json!([{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }]);
    let (s, _, body) =
        post(&app, "/api/chat", json!({ "model": "tiny-llama", "messages": msgs, "options": opts })).await;
    assert_eq!(s, StatusCode::OK);
    let ls = lines(&body);
    assert!(ls.iter().all(|l| l["message"]["role"] == "assistant"));
    assert_eq!(ls.last().unwrap()["done"], true);
    let (s, _, body) =
        post(&app, "/api/chat", json!({ "model": "tiny-llama", "messages": msgs, "options": opts, "stream": false }))
            .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["message"]["content"].is_string() && v["done"] == true && v["eval_count"] == 8);
}

#[tokio::test]
async fn load_on_demand_keep_alive_ps_and_unload() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let (_, _, body) = call(&app, Method::GET, "/api/ps", None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["models"].as_array().unwrap().len(), 0);
    // empty prompt: load only
    let (s, _, body) = post(&app, "/api/generate", json!({ "model": "tiny-llama" })).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["done_reason"], "load");
    let (_, _, body) = call(&app, Method::GET, "/api/ps", None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["models"][0]["name"], "tiny-llama:latest");
    assert!(v["models"][0]["expires_at"].is_string());
    // keep_alive 0: unload now
    let (_, _, body) = post(&app, "/api/chat", json!({ "model": "tiny-llama", "messages": [], "keep_alive": 0 })).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["done_reason"], "unload");
    let (_, _, body) = call(&app, Method::GET, "/api/ps", None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["models"].as_array().unwrap().len(), 0);
    // a short keep_alive on a real request: loaded, then gone once idle
    let (s, _, _) = post(&app, "/api/generate", json!({ "model": "tiny-llama", "prompt": "x", "stream": false, "keep_alive": "300ms", "options": { "num_predict": 2 } })).await;
    assert_eq!(s, StatusCode::OK);
    let (_, _, body) = call(&app, Method::GET, "/api/ps", None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["models"].as_array().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (_, _, body) = call(&app, Method::GET, "/api/ps", None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["models"].as_array().unwrap().len(), 0, "{body}");
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_message_and_the_server_keeps_serving() {
    let d = models_dir();
    let (app, _) = app(d.path(), Limits { default_ctx: 64, ..limits() });
    let long = "word ".repeat(400);
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        ("/api/generate", json!({ "prompt": "hi" }), StatusCode::BAD_REQUEST, "model"),
        ("/api/generate", json!({ "model": "nope", "prompt": "hi" }), StatusCode::NOT_FOUND, "not found"),
        (
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "hi", "options": { "temperature": 1e9 } }),
            StatusCode::BAD_REQUEST,
            "temperature",
        ),
        (
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "hi", "options": { "num_predict": -5 } }),
            StatusCode::BAD_REQUEST,
            "num_predict",
        ),
        (
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": long, "stream": false }),
            StatusCode::BAD_REQUEST,
            "but the context holds",
        ),
        ("/api/chat", json!({ "model": "tiny-llama", "messages": "hi" }), StatusCode::BAD_REQUEST, "invalid request"),
        (
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "hi", "keep_alive": "soon" }),
            StatusCode::BAD_REQUEST,
            "keep_alive",
        ),
    ];
    for (uri, body, status, says) in cases {
        let (s, _, text) = post(&app, uri, body.clone()).await;
        assert_eq!(s, status, "{uri} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].as_str().unwrap().contains(says), "{uri}: {text}");
    }
    // malformed JSON
    let req = Request::post("/api/chat").body(Body::from("{not json")).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // OpenAI and Anthropic error shapes
    let (s, _, text) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": -1 }),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("max_tokens") && v["error"]["type"] == "invalid_request_error"
    );
    let (s, _, text) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "nope", "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{text}");
    let (s, _, text) =
        post(&app, "/v1/messages", json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "hi" }] }))
            .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "error");
    assert!(v["error"]["message"].as_str().unwrap().contains("max_tokens"), "{text}");
    let (s, _, _) = post(&app, "/v1/messages", json!({ "model": "tiny-llama", "max_tokens": 5, "messages": [{ "role": "user", "content": "hi" }], "temperature": 1e9 })).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // still serving
    let (s, _, _) = post(
        &app,
        "/api/generate",
        json!({ "model": "tiny-llama", "prompt": "hi", "stream": false, "options": { "num_predict": 2 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn openai_chat_and_completions() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let m = json!([{ "role": "user", "content": [{ "type": "text", "text": "Hi" }] }]);
    let (s, _, body) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": m, "max_tokens": 6, "temperature": 0 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().unwrap() + 6);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let (s, ctype, body) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": m, "max_tokens": 6, "temperature": 0, "stream": true, "stream_options": { "include_usage": true } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "text/event-stream");
    let events = sse(&body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(&e.1).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, text);
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "length"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);

    let (s, _, body) = post(
        &app,
        "/v1/completions",
        json!({ "model": "tiny-llama", "prompt": "Once upon", "max_tokens": 5, "temperature": 0 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let (_, _, body) = post(
        &app,
        "/v1/completions",
        // greedy: a random seed could sample end-of-generation before the 5th token
        json!({ "model": "tiny-llama", "prompt": "Once upon", "max_tokens": 5, "stream": true, "temperature": 0 }),
    )
    .await;
    let events = sse(&body);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn anthropic_messages() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let req = json!({ "model": "tiny-llama", "max_tokens": 5, "system": "Be brief.", "messages": [{ "role": "user", "content": "Hi" }], "temperature": 0 });
    let (s, _, body) = post(&app, "/v1/messages", req.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 5);
    let text = v["content"][0]["text"].as_str().unwrap().to_string();

    let mut sreq = req;
    sreq["stream"] = json!(true);
    let (s, ctype, body) = post(&app, "/v1/messages", sreq).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "text/event-stream");
    let events = sse(&body);
    let names: Vec<&str> = events.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names[1], "content_block_start");
    assert_eq!(&names[names.len() - 3..], &["content_block_stop", "message_delta", "message_stop"]);
    assert!(names[2..names.len() - 3].iter().all(|n| *n == "content_block_delta"));
    let streamed: String = events
        .iter()
        .filter(|e| e.0.as_deref() == Some("content_block_delta"))
        .map(|e| serde_json::from_str::<Value>(&e.1).unwrap()["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
}

#[tokio::test]
async fn full_queue_is_503_and_a_dropped_client_frees_its_slot() {
    let d = models_dir();
    let (app, _) = app(d.path(), Limits { parallel: 1, queue: 0, ..limits() });
    // a stream nobody reads holds the only slot (the generation blocks on the full channel)
    let req = Request::post("/api/generate")
        .body(Body::from(
            json!({ "model": "tiny-llama", "prompt": "go", "options": { "num_predict": 400 } }).to_string(),
        ))
        .unwrap();
    let held = app.clone().oneshot(req).await.unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let (s, _, body) =
        post(&app, "/api/generate", json!({ "model": "tiny-llama", "prompt": "hi", "stream": false })).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("try again"), "{body}");
    let (s, _, body) = post(
        &app,
        "/v1/messages",
        json!({ "model": "tiny-llama", "max_tokens": 3, "messages": [{ "role": "user", "content": "hi" }] }),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["type"], "overloaded_error");
    // the client goes away: its generation is cancelled and the slot comes back
    drop(held);
    let mut ok = false;
    // generous: a loaded machine (parallel test binaries) slows every step
    for _ in 0..200 {
        let (s, _, _) = post(
            &app,
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "hi", "stream": false, "options": { "num_predict": 2 } }),
        )
        .await;
        if s == StatusCode::OK {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the slot of the dropped client was never freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_streams_progress_and_delete_removes() {
    use common::hub::{self, Hub};
    let hub = Arc::new(Hub::default());
    hub.add("org/Tiny-GGUF", "Tiny-Q8_0.gguf", std::fs::read(common::model("tiny-qwen2")).unwrap());
    let url = hub::serve(hub).await;
    let d = tempfile::tempdir().unwrap();
    let mut st = store(d.path());
    st.offline = false;
    st.endpoint = url;
    let app = api::router(AppState { runtime: Runtime::new(st, limits(), None) });
    let (s, ctype, body) = post(&app, "/api/pull", json!({ "model": "hf.co/org/Tiny-GGUF:Q8_0" })).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "application/x-ndjson");
    let ls = lines(&body);
    assert_eq!(ls[0]["status"], "pulling manifest");
    assert!(ls.iter().any(|l| l["total"].as_u64().is_some_and(|t| t > 0) && l["completed"] == l["total"]), "{body}");
    assert!(ls.iter().any(|l| l["status"] == "verifying sha256 digest"));
    assert_eq!(ls.last().unwrap()["status"], "success");
    let (_, _, body) = call(&app, Method::GET, "/api/tags", None).await;
    assert!(body.contains("hf.co/org/Tiny-GGUF:q8_0"), "{body}");
    // the download is listed as a finished transfer (the dashboard's panel)
    let (_, _, body) = call(&app, Method::GET, "/cluster", None).await;
    let t = serde_json::from_str::<Value>(&body).unwrap()["transfers"][0].clone();
    let size = std::fs::metadata(common::model("tiny-qwen2")).unwrap().len();
    assert_eq!(
        (t["kind"].as_str(), t["state"].as_str(), t["source"].as_str()),
        (Some("download"), Some("done"), Some("org/Tiny-GGUF")),
        "{t}"
    );
    assert_eq!((t["done_bytes"].as_u64(), t["total_bytes"].as_u64()), (Some(size), Some(size)), "{t}");
    let (s, _, _) = post(&app, "/api/pull", json!({ "model": "hf.co/org/Nothing-GGUF", "stream": false })).await;
    assert!(s.is_client_error() || s.is_server_error());
    let (s, _, body) =
        call(&app, Method::DELETE, "/api/delete", Some(json!({ "model": "hf.co/org/Tiny-GGUF:q8_0" }))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, _, _) =
        call(&app, Method::DELETE, "/api/delete", Some(json!({ "model": "hf.co/org/Tiny-GGUF:q8_0" }))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// The hostile inputs of the runtime issue: each is refused with a 4xx that says why, in under a
/// second, touching nothing; the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_are_refused_fast_and_touch_nothing() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.join("tiny-llama.gguf")).unwrap();
    let victim = elsewhere.join("victim.gguf");
    std::fs::copy(common::model("tiny-llama"), &victim).unwrap();
    // a link in the models dir that leads out of it
    std::os::unix::fs::symlink(&victim, models.join("escape.gguf")).unwrap();
    let (app, _) = app(&models, limits());
    let out = |p: &Path| p.display().to_string();
    let traversal = format!("{}/../elsewhere/victim", models.display());
    let gen = |extra: Value| {
        let mut b = json!({ "model": "tiny-llama", "prompt": "hi", "stream": false, "options": { "num_predict": 2 } });
        for (k, v) in extra.as_object().unwrap() {
            if k == "options" {
                for (ok, ov) in v.as_object().unwrap() {
                    b["options"][ok] = ov.clone();
                }
            } else {
                b[k] = v.clone();
            }
        }
        b
    };
    let cases: Vec<(Method, &str, Value, StatusCode, &str)> = vec![
        (Method::DELETE, "/api/delete", json!({ "model": traversal }), StatusCode::BAD_REQUEST, "not paths"),
        (
            Method::DELETE,
            "/api/delete",
            json!({ "model": "../elsewhere/victim" }),
            StatusCode::BAD_REQUEST,
            "not paths",
        ),
        // its target is outside the models dirs (and EXO_LINK_TARGETS): no model at all
        (Method::DELETE, "/api/delete", json!({ "model": "escape" }), StatusCode::NOT_FOUND, "not found"),
        (Method::POST, "/api/show", json!({ "model": "/etc/passwd" }), StatusCode::BAD_REQUEST, "not paths"),
        (Method::POST, "/api/show", json!({ "model": "/no/such/file" }), StatusCode::BAD_REQUEST, "not paths"),
        (
            Method::POST,
            "/api/pull",
            json!({ "model": "/etc/passwd", "stream": false }),
            StatusCode::BAD_REQUEST,
            "not paths",
        ),
        (Method::POST, "/api/generate", gen(json!({ "model": out(&victim) })), StatusCode::BAD_REQUEST, "not paths"),
        (Method::POST, "/api/generate", gen(json!({ "keep_alive": 1e300 })), StatusCode::BAD_REQUEST, "keep_alive"),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "keep_alive": "99999999999999999h" })),
            StatusCode::BAD_REQUEST,
            "keep_alive",
        ),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "options": { "repeat_last_n": 2_000_000_000 } })),
            StatusCode::BAD_REQUEST,
            "options.repeat_last_n",
        ),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "options": { "repeat_last_n": 100_000 } })),
            StatusCode::BAD_REQUEST,
            "options.repeat_last_n",
        ),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "options": { "num_ctx": 100_000 } })),
            StatusCode::BAD_REQUEST,
            "options.num_ctx: 100000 is more than the model's trained context",
        ),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "options": { "num_predict": 1_000_000_000_000u64 } })),
            StatusCode::BAD_REQUEST,
            "options.num_predict",
        ),
        (
            Method::POST,
            "/api/generate",
            gen(json!({ "options": { "top_k": -3 } })),
            StatusCode::BAD_REQUEST,
            "options.top_k",
        ),
    ];
    for (method, uri, body, status, says) in cases {
        let t = std::time::Instant::now();
        let (s, _, text) = call(&app, method, uri, Some(body.clone())).await;
        assert!(t.elapsed() < Duration::from_secs(1), "{uri} {body}: took {:?}", t.elapsed());
        assert_eq!(s, status, "{uri} {body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{uri}: {text}"));
        assert!(v["error"].as_str().unwrap().contains(says), "{uri} {body}: {text}");
    }
    assert!(victim.is_file(), "the file outside the models dir was deleted");
    // OpenAI: the field as OpenAI names it
    let (s, _, text) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 1_000_000_000_000u64 }),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains("max_tokens"), "{text}");
    // a 20 MB body is refused before it is read whole
    let big = json!({ "model": "tiny-llama", "prompt": "x".repeat(20 << 20) }).to_string();
    let t = std::time::Instant::now();
    let resp = app.clone().oneshot(Request::post("/api/generate").body(Body::from(big)).unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(t.elapsed() < Duration::from_secs(1));
    // still serving, and a large max_tokens within the context is simply capped
    let (s, _, text) = post(&app, "/api/generate", gen(json!({ "options": { "num_predict": 100_000 } }))).await;
    assert_eq!(s, StatusCode::OK, "{text}");
}

/// OpenAI's `logit_bias`: -100 bans a token (greedy then picks another), values outside
/// [-100, 100], keys that are not token ids and ids outside the vocabulary are 400s naming it.
#[tokio::test]
async fn openai_logit_bias() {
    let d = models_dir();
    let (app, _) = app(d.path(), limits());
    let ask = |bias: Value| json!({ "model": "tiny-llama", "prompt": "Once upon", "max_tokens": 1, "temperature": 0, "logit_bias": bias, "logprobs": null });
    let (s, _, body) = post(&app, "/v1/completions", ask(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let first = serde_json::from_str::<Value>(&body).unwrap()["choices"][0]["text"].as_str().unwrap().to_string();
    // find the id of that token by banning ids until the text changes
    let mut banned = None;
    for id in 0..600 {
        let (_, _, body) = post(&app, "/v1/completions", ask(json!({ id.to_string(): -100 }))).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["choices"][0]["text"].as_str() != Some(first.as_str()) {
            banned = Some(id);
            break;
        }
    }
    assert!(banned.is_some(), "banning no token changed the greedy choice");
    for (bias, says) in [
        (json!({ "1": 250 }), "outside [-100, 100]"),
        (json!({ "x": 1 }), "not a token id"),
        (json!({ "99999999": -100 }), "outside the vocabulary"),
    ] {
        let (s, _, body) = post(&app, "/v1/completions", ask(bias)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("logit_bias") && body.contains(says), "{body}");
    }
}
