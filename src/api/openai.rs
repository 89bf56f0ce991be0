//! OpenAI's shapes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`; SSE streams ending
//! with `data: [DONE]`; errors as `{"error": {"message", "type", ...}}`.

use super::util::{model, parse, random_seed, stream_body, unix_now, TextContent};
use super::AppState;
use crate::engine::{ChatMessage, SamplingParams};
use crate::runtime::{Event, Finish, GenRequest, Input, RuntimeError, Stats};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::SERVICE_UNAVAILABLE => "server_busy",
        s if s.is_client_error() => "invalid_request_error",
        _ => "server_error",
    };
    (status, axum::Json(json!({ "error": { "message": msg.to_string(), "type": kind, "param": null, "code": null } })))
        .into_response()
}

pub(super) fn runtime_error(e: RuntimeError) -> Response {
    error(super::status(&e), e.message_with(|f| f.openai().to_string()))
}

async fn models(State(state): State<AppState>) -> Response {
    let names: Vec<String> = state.runtime.local_models().await.into_iter().map(|m| m.name).collect();
    let data: Vec<Value> =
        names.iter().map(|n| json!({ "id": n, "object": "model", "created": 0, "owned_by": "exo" })).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<TextContent>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias in [-100, 100].
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
}

#[derive(Deserialize)]
struct ChatReq {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
struct CompletionReq {
    prompt: String,
    #[serde(flatten)]
    common: Common,
}

fn request(c: &Common, input: Input) -> Result<GenRequest, RuntimeError> {
    let max = match c.max_completion_tokens.or(c.max_tokens) {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            return Err(RuntimeError::field(crate::runtime::Field::MaxTokens, format!("must be positive, got {n}")))
        }
    };
    // OpenAI's defaults: temperature 1, top_p 1, no penalty
    let mut sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: 0,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: 0.0,
        repeat_penalty: 1.0 + c.frequency_penalty.unwrap_or(0.0).max(0.0),
        repeat_last_n: 64,
        seed: c.seed.map(|s| s as u32).unwrap_or_else(random_seed),
        banned: Vec::new(),
        logit_bias: Vec::new(),
        draws: 0,
    };
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.iter().flatten() {
        let t = k
            .parse::<i32>()
            .map_err(|_| RuntimeError::field(crate::runtime::Field::LogitBias, format!("{k:?} is not a token id")))?;
        logit_bias.push((t, *v));
    }
    sampling.logit_bias = logit_bias;
    let stop = match &c.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    let mut r = GenRequest::new(model(&c.model)?, input, sampling);
    r.stop = stop;
    r.max_tokens = max;
    Ok(r)
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::StopSequence => "stop",
        Finish::Length => "length",
    }
}

fn usage(s: &Stats) -> Value {
    json!({ "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens })
}

fn sse(rx: mpsc::Receiver<String>) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], stream_body(rx))
        .into_response()
}

async fn serve(state: AppState, c: Common, input: Input, chat: bool) -> Response {
    let req = match request(&c, input) {
        Ok(r) => r,
        Err(e) => return runtime_error(e),
    };
    let mut gen = match state.runtime.generate(req).await {
        Ok(g) => g,
        Err(e) => return runtime_error(e),
    };
    let id = format!("{}-{:x}", if chat { "chatcmpl" } else { "cmpl" }, super::util::random_seed());
    let created = unix_now();
    let model = c.model.clone();
    let (object, chunk_object) =
        if chat { ("chat.completion", "chat.completion.chunk") } else { ("text_completion", "text_completion") };
    if !c.stream {
        let mut text = String::new();
        while let Some(ev) = gen.events.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Done { finish, stats, .. } => {
                    let choice = if chat {
                        json!({ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish_reason(finish), "logprobs": null })
                    } else {
                        json!({ "index": 0, "text": text, "finish_reason": finish_reason(finish), "logprobs": null })
                    };
                    return axum::Json(json!({ "id": id, "object": object, "created": created, "model": model, "choices": [choice], "usage": usage(&stats) }))
                        .into_response();
                }
                Event::Failed(e) => return runtime_error(e),
            }
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, "generation ended without a result");
    }
    let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let (tx, rx) = mpsc::channel::<String>(32);
    tokio::spawn(async move {
        let chunk = |choice: Value, usage: Value| {
            let mut v =
                json!({ "id": id, "object": chunk_object, "created": created, "model": model, "choices": [choice] });
            if include_usage {
                v["usage"] = usage;
            }
            format!("data: {v}\n\n")
        };
        if chat {
            let first = chunk(
                json!({ "index": 0, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }),
                Value::Null,
            );
            if tx.send(first).await.is_err() {
                return;
            }
        }
        while let Some(ev) = gen.events.recv().await {
            let out = match ev {
                Event::Text(t) => {
                    let choice = if chat {
                        json!({ "index": 0, "delta": { "content": t }, "finish_reason": null })
                    } else {
                        json!({ "index": 0, "text": t, "finish_reason": null })
                    };
                    chunk(choice, Value::Null)
                }
                Event::Done { finish, stats, .. } => {
                    let choice = if chat {
                        json!({ "index": 0, "delta": {}, "finish_reason": finish_reason(finish) })
                    } else {
                        json!({ "index": 0, "text": "", "finish_reason": finish_reason(finish) })
                    };
                    let mut s = chunk(choice, Value::Null);
                    if include_usage {
                        let v = json!({ "id": id, "object": chunk_object, "created": created, "model": model, "choices": [], "usage": usage(&stats) });
                        s.push_str(&format!("data: {v}\n\n"));
                    }
                    s.push_str("data: [DONE]\n\n");
                    s
                }
                Event::Failed(e) => {
                    let m = e.message_with(|f| f.openai().to_string());
                    format!("data: {}\n\n", json!({ "error": { "message": m, "type": "server_error" } }))
                }
            };
            if tx.send(out).await.is_err() {
                return; // client left: dropping `gen` cancels
            }
        }
    });
    sse(rx)
}

async fn chat(State(state): State<AppState>, body: Bytes) -> Response {
    let r: ChatReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if r.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages must not be empty");
    }
    let mut messages = Vec::new();
    for m in r.messages {
        let content = match m.content.map(TextContent::text).transpose() {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
        let role = if m.role == "developer" { "system".to_string() } else { m.role };
        messages.push(ChatMessage { role, content });
    }
    serve(state, r.common, Input::Messages(messages), true).await
}

async fn completions(State(state): State<AppState>, body: Bytes) -> Response {
    let r: CompletionReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    serve(state, r.common, Input::Raw(r.prompt), false).await
}
