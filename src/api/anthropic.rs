//! Anthropic's Messages API: `/v1/messages`, answered as [`anthropic_stream`] writes it.

use super::errors::AnthropicError;
use super::sampling::{openai_defaults, Options};
use super::util::{model, parse, random_seed, TextContent};
use super::{anthropic_stream, reply, tools, AppState};
use crate::chat::ChatMessage;
use crate::chat::ToolCall;
use crate::runtime::Input;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/messages", post(messages))
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    AnthropicError::new(status, msg).into_response()
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

async fn messages(State(state): State<AppState>, body: Bytes) -> Result<Response, AnthropicError> {
    let r: MessagesReq = parse(&body).map_err(AnthropicError::bad)?;
    if r.max_tokens <= 0 {
        return Err(AnthropicError::bad(format!("max_tokens must be positive, got {}", r.max_tokens)));
    }
    if r.messages.is_empty() {
        return Err(AnthropicError::bad("messages must not be empty"));
    }
    let mut msgs = Vec::new();
    if let Some(s) = r.system {
        msgs.push(ChatMessage::new("system", s.text().map_err(AnthropicError::bad)?));
    }
    let mut names = Vec::new();
    for m in r.messages {
        if m.role != "user" && m.role != "assistant" {
            return Err(AnthropicError::bad(format!("role {:?} must be user or assistant", m.role)));
        }
        msgs.extend(convert(m, &mut names).map_err(AnthropicError::bad)?);
    }
    let options = Options {
        temperature: r.temperature,
        top_k: r.top_k,
        top_p: r.top_p,
        stop: r.stop_sequences,
        max_tokens: Some(r.max_tokens as u64),
        ..Options::default()
    };
    let mut req = options.request(model(&r.model)?, Input::Messages(msgs), openai_defaults());
    req.tools = tools::anthropic_tools(r.tools.as_ref())?;
    req.tool_choice = tools::anthropic_choice(r.tool_choice.as_ref())?;
    let gen = state.runtime.generate(req).await?;
    let enc = anthropic_stream::Message {
        id: format!("msg_{:016x}", ((random_seed() as u64) << 32) | random_seed() as u64),
        model: r.model,
        prompt_tokens: gen.prompt_tokens,
    };
    if r.stream {
        Ok(reply::stream(enc, vec![gen]))
    } else {
        reply::collect(enc, vec![gen]).await
    }
}
