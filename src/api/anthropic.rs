//! Anthropic's Messages API: `/v1/messages`, JSON or the SSE event sequence (message_start,
//! content_block_start, content_block_delta, content_block_stop, message_delta, message_stop).

use super::util::{model, parse, random_seed, stream_body, TextContent};
use super::{tools, AppState};
use crate::chat::ToolCall;
use crate::engine::{ChatMessage, SamplingParams};
use crate::runtime::{Event, Finish, GenRequest, Input, RuntimeError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages))
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    let kind = match status {
        StatusCode::NOT_FOUND => "not_found_error",
        StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
        s if s.is_client_error() => "invalid_request_error",
        _ => "api_error",
    };
    (status, axum::Json(json!({ "type": "error", "error": { "type": kind, "message": msg.to_string() } })))
        .into_response()
}

fn runtime_error(e: RuntimeError) -> Response {
    error(super::status(&e), e.message_with(|f| f.openai().to_string()))
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

#[derive(Deserialize)]
struct MessagesReq {
    model: String,
    max_tokens: i64,
    messages: Vec<Message>,
    system: Option<TextContent>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i32>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
}

/// A message's content blocks as chat messages: text (and tool_use calls) of its role, and one
/// `tool` message per tool_result.
fn convert(m: Message, names: &mut Vec<(String, String)>) -> Result<Vec<ChatMessage>, String> {
    let blocks = match m.content {
        Value::String(s) => return Ok(vec![ChatMessage::new(m.role, s)]),
        Value::Array(b) => b,
        _ => return Err("messages: content must be a string or a list of blocks".into()),
    };
    let mut out = Vec::new();
    let mut main = ChatMessage::new(m.role.clone(), "");
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => main.content.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") if m.role == "assistant" => {
                let (Some(id), Some(name)) =
                    (b.get("id").and_then(Value::as_str), b.get("name").and_then(Value::as_str))
                else {
                    return Err("messages: a tool_use block needs id and name".into());
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if !input.is_object() {
                    return Err("messages: tool_use input must be an object".into());
                }
                names.push((id.to_string(), name.to_string()));
                main.tool_calls.push(ToolCall { id: id.into(), name: name.into(), arguments: input });
            }
            Some("tool_result") if m.role == "user" => {
                let id =
                    b.get("tool_use_id").and_then(Value::as_str).ok_or("messages: tool_result needs tool_use_id")?;
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => serde_json::from_value::<TextContent>(v.clone())
                        .map_err(|e| format!("messages: tool_result content: {e}"))?
                        .text()?,
                };
                let mut t = ChatMessage::new("tool", content);
                t.tool_call_id = Some(id.to_string());
                t.name = names.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone());
                out.push(t);
            }
            Some(k) => return Err(format!("messages: content blocks of type {k:?} are not supported here")),
            None => return Err("messages: a content block without a type".into()),
        }
    }
    if !main.content.is_empty() || !main.tool_calls.is_empty() || out.is_empty() {
        out.insert(0, main);
    }
    Ok(out)
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::StopSequence => "stop_sequence",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

async fn messages(State(state): State<AppState>, body: Bytes) -> Response {
    let r: MessagesReq = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if r.max_tokens <= 0 {
        return error(StatusCode::BAD_REQUEST, format!("max_tokens must be positive, got {}", r.max_tokens));
    }
    if r.messages.is_empty() {
        return error(StatusCode::BAD_REQUEST, "messages must not be empty");
    }
    let mut msgs = Vec::new();
    if let Some(s) = r.system {
        match s.text() {
            Ok(t) => msgs.push(ChatMessage::new("system", t)),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    let mut names = Vec::new();
    for m in r.messages {
        if m.role != "user" && m.role != "assistant" {
            return error(StatusCode::BAD_REQUEST, format!("role {:?} must be user or assistant", m.role));
        }
        match convert(m, &mut names) {
            Ok(v) => msgs.extend(v),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        }
    }
    let sampling = SamplingParams {
        temperature: r.temperature.unwrap_or(1.0),
        top_k: r.top_k.unwrap_or(0),
        top_p: r.top_p.unwrap_or(1.0),
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: random_seed(),
        banned: Vec::new(),
        logit_bias: Vec::new(),
        draws: 0,
        grammar: None,
        generated: 0,
    };
    let m = match model(&r.model) {
        Ok(m) => m,
        Err(e) => return runtime_error(e),
    };
    let mut req = GenRequest::new(m, Input::Messages(msgs), sampling);
    req.stop = r.stop_sequences;
    req.max_tokens = Some(r.max_tokens as u64);
    let tools = tools::anthropic_tools(r.tools.as_ref())
        .and_then(|t| Ok((t, tools::anthropic_choice(r.tool_choice.as_ref())?)));
    match tools {
        Ok((t, c)) => (req.tools, req.tool_choice) = (t, c),
        Err(e) => return runtime_error(e),
    }
    let mut gen = match state.runtime.generate(req).await {
        Ok(g) => g,
        Err(e) => return runtime_error(e),
    };
    let id = format!("msg_{:016x}", ((random_seed() as u64) << 32) | random_seed() as u64);
    let model = r.model;
    if !r.stream {
        let mut text = String::new();
        while let Some(ev) = gen.events.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Thinking(_) => {}
                Event::Done { finish, stop_sequence, stats, tool_calls } => {
                    let mut content = Vec::new();
                    if !text.is_empty() || tool_calls.is_empty() {
                        content.push(json!({ "type": "text", "text": text }));
                    }
                    content.extend(
                        tool_calls
                            .iter()
                            .map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments })),
                    );
                    return axum::Json(json!({
                        "id": id, "type": "message", "role": "assistant", "model": model,
                        "content": content,
                        "stop_reason": stop_reason(finish), "stop_sequence": stop_sequence,
                        "usage": { "input_tokens": stats.prompt_tokens, "output_tokens": stats.completion_tokens },
                    }))
                    .into_response();
                }
                Event::Failed(e) => return runtime_error(e),
            }
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, "generation ended without a result");
    }
    let (tx, rx) = mpsc::channel::<String>(32);
    let prompt_tokens = gen.prompt_tokens;
    tokio::spawn(async move {
        let start = event(
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": prompt_tokens, "output_tokens": 0 } } }),
        ) + &event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        );
        if tx.send(start).await.is_err() {
            return;
        }
        while let Some(ev) = gen.events.recv().await {
            let out = match ev {
                Event::Thinking(_) => continue,
                Event::Text(t) => event(
                    "content_block_delta",
                    json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": t } }),
                ),
                Event::Done { finish, stop_sequence, stats, tool_calls } => {
                    let mut out = event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 }));
                    for (k, c) in tool_calls.iter().enumerate() {
                        let index = k + 1;
                        out += &event(
                            "content_block_start",
                            json!({ "type": "content_block_start", "index": index, "content_block": { "type": "tool_use", "id": c.id, "name": c.name, "input": {} } }),
                        );
                        out += &event(
                            "content_block_delta",
                            json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": c.arguments.to_string() } }),
                        );
                        out += &event("content_block_stop", json!({ "type": "content_block_stop", "index": index }));
                    }
                    out + &event(
                        "message_delta",
                        json!({ "type": "message_delta",
                                "delta": { "stop_reason": stop_reason(finish), "stop_sequence": stop_sequence },
                                "usage": { "output_tokens": stats.completion_tokens } }),
                    ) + &event("message_stop", json!({ "type": "message_stop" }))
                }
                Event::Failed(e) => {
                    let m = e.message_with(|f| f.openai().to_string());
                    event("error", json!({ "type": "error", "error": { "type": "api_error", "message": m } }))
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    ([(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")], stream_body(rx))
        .into_response()
}
