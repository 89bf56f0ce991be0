//! OpenAI's Responses API (`POST /v1/responses`): text input or a list of messages, a response
//! object with `output` items (`message` with `output_text`, `function_call`), or its SSE event
//! sequence (`response.created` ... `response.output_text.delta` ... `response.completed`).

use super::openai::{error, runtime_error};
use super::util::{model, parse, random_seed, stream_body, unix_now, TextContent};
use super::{tools, AppState};
use crate::engine::{ChatMessage, SamplingParams};
use crate::runtime::{Event, Field, Finish, GenRequest, Input, RuntimeError};
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
    Router::new().route("/v1/responses", post(create))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InputIn {
    Text(String),
    Items(Vec<ItemIn>),
}

#[derive(Deserialize)]
struct ItemIn {
    role: String,
    content: TextContent,
}

#[derive(Deserialize)]
struct Req {
    model: String,
    input: InputIn,
    instructions: Option<String>,
    #[serde(default)]
    stream: bool,
    max_output_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    text: Option<Value>,
}

fn request(r: Req) -> Result<GenRequest, RuntimeError> {
    let mut messages = Vec::new();
    if let Some(i) = r.instructions {
        messages.push(ChatMessage::new("system", i));
    }
    match r.input {
        InputIn::Text(t) => messages.push(ChatMessage::new("user", t)),
        InputIn::Items(items) => {
            for it in items {
                let text = it.content.text().map_err(|e| RuntimeError::field(Field::Messages, e))?;
                let role = if it.role == "developer" { "system".to_string() } else { it.role };
                messages.push(ChatMessage::new(role, text));
            }
        }
    }
    if messages.iter().all(|m| m.role == "system") {
        return Err(RuntimeError::field(Field::Prompt, "input must not be empty"));
    }
    let sampling = SamplingParams {
        temperature: r.temperature.unwrap_or(1.0),
        top_k: 0,
        top_p: r.top_p.unwrap_or(1.0),
        repeat_penalty: 1.0,
        seed: random_seed(),
        ..SamplingParams::default()
    };
    let mut req = GenRequest::new(model(&r.model)?, Input::Messages(messages), sampling);
    req.max_tokens = match r.max_output_tokens {
        None => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => return Err(RuntimeError::field(Field::MaxTokens, format!("must be positive, got {n}"))),
    };
    // Responses tools are flat ({"type": "function", "name", ...}); chat tools nest "function"
    let nested: Option<Value> = r.tools.map(|ts| {
        ts.into_iter()
            .map(|t| match t.get("function") {
                Some(_) => t,
                None => json!({ "type": t.get("type").cloned().unwrap_or(Value::Null), "function": t }),
            })
            .collect()
    });
    req.tools = tools::function_tools(nested.as_ref())?;
    req.tool_choice = tools::openai_choice(r.tool_choice.as_ref())?;
    let format = r.text.as_ref().and_then(|t| t.get("format")).map(|f| match f.get("type").and_then(Value::as_str) {
        Some("json_schema") => json!({ "type": "json_schema", "json_schema": { "schema": f.get("schema").cloned().unwrap_or(Value::Null) } }),
        _ => f.clone(),
    });
    req.format = tools::openai_format(format.as_ref())?;
    Ok(req)
}

fn message_item(id: &str, text: &str) -> Value {
    json!({ "type": "message", "id": id, "status": "completed", "role": "assistant",
        "content": [{ "type": "output_text", "text": text, "annotations": [] }] })
}

fn call_item(c: &crate::chat::ToolCall) -> Value {
    json!({ "type": "function_call", "id": format!("fc_{}", c.id), "call_id": c.id, "name": c.name,
        "arguments": c.arguments.to_string(), "status": "completed" })
}

async fn create(State(state): State<AppState>, body: Bytes) -> Response {
    let r: Req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (model_name, stream) = (r.model.clone(), r.stream);
    let req = match request(r) {
        Ok(r) => r,
        Err(e) => return runtime_error(e),
    };
    let mut gen = match state.runtime.generate(req).await {
        Ok(g) => g,
        Err(e) => return runtime_error(e),
    };
    let id = format!("resp_{:08x}{:08x}", random_seed(), random_seed().rotate_left(13));
    let msg_id = format!("msg_{:08x}", random_seed());
    let created = unix_now();
    let base = move |status: &str, output: Value, usage: Value| {
        json!({ "id": id, "object": "response", "created_at": created, "status": status, "model": model_name,
            "output": output, "usage": usage, "error": null, "incomplete_details": null })
    };
    let usage = |s: &crate::runtime::Stats| json!({ "input_tokens": s.prompt_tokens, "output_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens });
    if !stream {
        let mut text = String::new();
        while let Some(ev) = gen.events.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Thinking(_) => {}
                Event::Done { stats, tool_calls, finish, .. } => {
                    let mut output = Vec::new();
                    if !text.is_empty() || tool_calls.is_empty() {
                        output.push(message_item(&msg_id, &text));
                    }
                    output.extend(tool_calls.iter().map(call_item));
                    let status = if finish == Finish::Length { "incomplete" } else { "completed" };
                    return axum::Json(base(status, Value::Array(output), usage(&stats))).into_response();
                }
                Event::Failed(e) => return runtime_error(e),
            }
        }
        return error(StatusCode::INTERNAL_SERVER_ERROR, "generation ended without a result");
    }
    let (tx, rx) = mpsc::channel::<String>(32);
    tokio::spawn(async move {
        let mut seq = 0u64;
        let mut ev = |name: &str, mut data: Value| {
            data["type"] = json!(name);
            data["sequence_number"] = json!(seq);
            seq += 1;
            format!("event: {name}\ndata: {data}\n\n")
        };
        let start = ev("response.created", json!({ "response": base("in_progress", json!([]), Value::Null) }))
            + &ev(
                "response.output_item.added",
                json!({ "output_index": 0, "item": { "type": "message", "id": msg_id, "status": "in_progress", "role": "assistant", "content": [] } }),
            )
            + &ev(
                "response.content_part.added",
                json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": "", "annotations": [] } }),
            );
        if tx.send(start).await.is_err() {
            return;
        }
        let mut text = String::new();
        while let Some(e) = gen.events.recv().await {
            let out = match e {
                Event::Thinking(_) => continue,
                Event::Text(t) => {
                    text.push_str(&t);
                    ev(
                        "response.output_text.delta",
                        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "delta": t }),
                    )
                }
                Event::Done { stats, tool_calls, .. } => {
                    let mut out = ev(
                        "response.output_text.done",
                        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "text": text }),
                    ) + &ev(
                        "response.content_part.done",
                        json!({ "item_id": msg_id, "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": text, "annotations": [] } }),
                    ) + &ev(
                        "response.output_item.done",
                        json!({ "output_index": 0, "item": message_item(&msg_id, &text) }),
                    );
                    let mut output = vec![message_item(&msg_id, &text)];
                    for (k, c) in tool_calls.iter().enumerate() {
                        let item = call_item(c);
                        out += &ev("response.output_item.added", json!({ "output_index": k + 1, "item": item }));
                        out += &ev("response.output_item.done", json!({ "output_index": k + 1, "item": item }));
                        output.push(item);
                    }
                    out + &ev(
                        "response.completed",
                        json!({ "response": base("completed", Value::Array(output), usage(&stats)) }),
                    )
                }
                Event::Failed(e) => {
                    let m = e.message_with(|f| f.openai().to_string());
                    ev("error", json!({ "code": "server_error", "message": m }))
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
