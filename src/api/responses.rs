//! OpenAI's Responses API (`POST /v1/responses`): text input or a list of messages, answered as
//! [`responses_stream`] writes it.

use super::errors::OpenAiError;
use super::sampling::{openai_defaults, positive, Options};
use super::util::{model, parse, random_seed, unix_now, TextContent};
use super::{reply, responses_stream, tools, AppState};
use crate::chat::ChatMessage;
use crate::runtime::{Field, GenRequest, Input, RuntimeError};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/responses", post(create))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum InputIn {
    Text(String),
    /// Messages, and the function calls and outputs of earlier turns (a tool loop).
    Items(Vec<Value>),
}

/// Input items as chat messages: `message` (or a bare {role, content}), `function_call`
/// (an assistant's call) and `function_call_output` (its result).
fn items(list: Vec<Value>, messages: &mut Vec<ChatMessage>) -> Result<(), RuntimeError> {
    let bad = |r: String| RuntimeError::field(Field::Messages, format!("input: {r}"));
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    for it in list {
        match it.get("type").and_then(Value::as_str).unwrap_or("message") {
            "message" => {
                let role = s(&it, "role").ok_or_else(|| bad("a message needs a role".into()))?;
                let content: TextContent = serde_json::from_value(it.get("content").cloned().unwrap_or(Value::Null))
                    .map_err(|e| bad(format!("message content: {e}")))?;
                let text = content.text().map_err(|e| bad(e.to_string()))?;
                let role = if role == "developer" { "system".to_string() } else { role };
                messages.push(ChatMessage::new(role, text));
            }
            "function_call" => {
                let (Some(id), Some(name)) = (s(&it, "call_id"), s(&it, "name")) else {
                    return Err(bad("a function_call needs call_id and name".into()));
                };
                let arguments = tools::arguments(it.get("arguments").unwrap_or(&Value::Null))?;
                let call = crate::chat::ToolCall { id, name, arguments };
                // consecutive calls belong to one assistant turn
                match messages.last_mut() {
                    Some(m) if m.role == "assistant" && !m.tool_calls.is_empty() => m.tool_calls.push(call),
                    _ => messages.push(ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "") }),
                }
            }
            "function_call_output" => {
                let id = s(&it, "call_id").ok_or_else(|| bad("a function_call_output needs call_id".into()))?;
                let output = match it.get("output") {
                    Some(Value::String(o)) => o.clone(),
                    Some(o) => o.to_string(),
                    None => String::new(),
                };
                let name = messages.iter().flat_map(|m| &m.tool_calls).find(|c| c.id == id).map(|c| c.name.clone());
                messages.push(ChatMessage { tool_call_id: Some(id), name, ..ChatMessage::new("tool", output) });
            }
            other => return Err(bad(format!("items of type {other:?} are not supported"))),
        }
    }
    Ok(())
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
        InputIn::Items(list) => items(list, &mut messages)?,
    }
    if messages.iter().all(|m| m.role == "system") {
        return Err(RuntimeError::field(Field::Prompt, "input must not be empty"));
    }
    let m = model(&r.model)?;
    let options = Options {
        temperature: r.temperature,
        top_p: r.top_p,
        max_tokens: positive(r.max_output_tokens)?,
        ..Options::default()
    };
    let mut req = options.request(m, Input::Messages(messages), openai_defaults());
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

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, OpenAiError> {
    let r: Req = parse(&body).map_err(OpenAiError::bad)?;
    let (model_name, stream) = (r.model.clone(), r.stream);
    let gen = state.runtime.generate(request(r)?).await?;
    let id = format!("resp_{:08x}{:08x}", random_seed(), random_seed().rotate_left(13));
    let enc = responses_stream::Reply::new(id, format!("msg_{:08x}", random_seed()), unix_now(), model_name);
    if stream {
        Ok(reply::stream(enc, vec![gen]))
    } else {
        reply::collect(enc, vec![gen]).await
    }
}
