//! Anthropic's Messages API: `/v1/messages`, answered as [`anthropic_stream`] writes it.

use super::errors::AnthropicError;
use super::sampling::{openai_defaults, Options};
use super::util::{model, parse, random_seed, RequestError, TextContent};
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

/// Why a message's content is refused; each message names the field (`messages`).
#[derive(Debug, thiserror::Error)]
enum MessageError {
    #[error("messages: content must be a string or a list of blocks")]
    Content,
    #[error("messages: a tool_use block needs id and name")]
    ToolUseId,
    #[error("messages: tool_use input must be an object")]
    ToolUseInput,
    #[error("messages: tool_result needs tool_use_id")]
    ToolResultId,
    #[error("messages: tool_result content: {0}")]
    ToolResultContent(serde_json::Error),
    #[error("messages: content blocks of type {kind:?} are not supported here")]
    Block { kind: String },
    #[error("messages: a content block without a type")]
    Untyped,
    /// A text part of another type than text (the message as for any content).
    #[error(transparent)]
    Part(#[from] RequestError),
}

/// A message's content blocks as chat messages: text (and tool_use calls) of its role, and one
/// `tool` message per tool_result.
fn convert(m: Message, names: &mut Vec<(String, String)>) -> Result<Vec<ChatMessage>, MessageError> {
    let blocks = match m.content {
        Value::String(s) => return Ok(vec![ChatMessage::new(m.role, s)]),
        Value::Array(b) => b,
        _ => return Err(MessageError::Content),
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
                    return Err(MessageError::ToolUseId);
                };
                let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                if !input.is_object() {
                    return Err(MessageError::ToolUseInput);
                }
                names.push((id.to_string(), name.to_string()));
                main.tool_calls.push(ToolCall { id: id.into(), name: name.into(), arguments: input });
            }
            Some("tool_result") if m.role == "user" => {
                let id = b.get("tool_use_id").and_then(Value::as_str).ok_or(MessageError::ToolResultId)?;
                let content = match b.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => serde_json::from_value::<TextContent>(v.clone())
                        .map_err(MessageError::ToolResultContent)?
                        .text()?,
                };
                let mut t = ChatMessage::new("tool", content);
                t.tool_call_id = Some(id.to_string());
                t.name = names.iter().find(|(i, _)| i == id).map(|(_, n)| n.clone());
                out.push(t);
            }
            Some(k) => return Err(MessageError::Block { kind: k.to_string() }),
            None => return Err(MessageError::Untyped),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: Value) -> Message {
        Message { role: role.into(), content }
    }

    #[test]
    fn blocks_become_chat_messages() {
        let mut names = Vec::new();
        let call = json!([{ "type": "text", "text": "let me look" },
            { "type": "tool_use", "id": "t1", "name": "weather", "input": { "city": "Oslo" } }]);
        let out = convert(msg("assistant", call), &mut names).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].content.as_str(), out[0].tool_calls.len()), ("let me look", 1));
        let result =
            json!([{ "type": "tool_result", "tool_use_id": "t1", "content": [{ "type": "text", "text": "4 C" }] }]);
        let out = convert(msg("user", result), &mut names).unwrap();
        assert_eq!((out[0].role.as_str(), out[0].content.as_str()), ("tool", "4 C"));
        assert_eq!(out[0].name.as_deref(), Some("weather"));
    }

    #[test]
    fn hostile_blocks_are_refused_naming_the_field() {
        let refuse = |role: &str, content: Value| convert(msg(role, content), &mut Vec::new()).unwrap_err();
        assert!(matches!(refuse("user", json!(5)), MessageError::Content));
        assert!(matches!(refuse("assistant", json!([{ "type": "tool_use", "id": "t" }])), MessageError::ToolUseId));
        let e = refuse("assistant", json!([{ "type": "tool_use", "id": "t", "name": "f", "input": [1] }]));
        assert!(matches!(e, MessageError::ToolUseInput));
        assert!(matches!(refuse("user", json!([{ "type": "tool_result" }])), MessageError::ToolResultId));
        let e = refuse("user", json!([{ "type": "tool_result", "tool_use_id": "t", "content": 5 }]));
        assert!(matches!(e, MessageError::ToolResultContent(_)));
        let e =
            refuse("user", json!([{ "type": "tool_result", "tool_use_id": "t", "content": [{ "type": "image" }] }]));
        assert_eq!(e.to_string(), r#"content of type "image" is not supported"#);
        let e = refuse("user", json!([{ "type": "tool_use", "id": "t", "name": "f" }]));
        assert_eq!(e.to_string(), r#"messages: content blocks of type "tool_use" are not supported here"#);
        assert!(matches!(refuse("user", json!([{ "text": "x" }])), MessageError::Untyped));
    }
}
