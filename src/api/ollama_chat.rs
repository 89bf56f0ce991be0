//! Ollama's chat extras: messages with tool calls and tool results, `tools`, `format`, `think`,
//! and `images` refused (no vision yet).

use super::tools;
use crate::chat::ChatMessage;
use crate::runtime::RuntimeError;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub(super) struct MessageIn {
    role: String,
    #[serde(default)]
    content: String,
    images: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Vec<tools::CallIn>,
    tool_name: Option<String>,
    tool_call_id: Option<String>,
    thinking: Option<String>,
}

/// What a chat or generate request asks for besides the prompt.
#[derive(Default)]
pub(super) struct Extras {
    pub tools: Vec<crate::chat::Tool>,
    pub format: Option<crate::chat::OutputFormat>,
    pub think: Option<bool>,
}

pub(super) fn extras(
    tools_v: Option<&Value>,
    format: Option<&Value>,
    think: Option<&Value>,
) -> Result<Extras, RuntimeError> {
    let think = match think {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        // gpt-oss levels: reasoning is on at any level
        Some(Value::String(s)) if ["low", "medium", "high"].contains(&s.as_str()) => Some(true),
        Some(o) => {
            return Err(RuntimeError::field(
                crate::runtime::Field::Think,
                format!("{o} is not true, false, low, medium or high"),
            ))
        }
    };
    Ok(Extras { tools: tools::function_tools(tools_v)?, format: tools::ollama_format(format)?, think })
}

pub(super) fn no_images(images: &Option<Vec<Value>>) -> Result<(), RuntimeError> {
    match images {
        Some(i) if !i.is_empty() => Err(RuntimeError::field(
            crate::runtime::Field::Images,
            "images are not supported: exo serves text models only (no vision yet)",
        )),
        _ => Ok(()),
    }
}

pub(super) fn message(m: MessageIn) -> Result<ChatMessage, RuntimeError> {
    no_images(&m.images)?;
    let mut out = ChatMessage::new(m.role, m.content);
    out.tool_calls = tools::calls_in(m.tool_calls)?;
    out.tool_call_id = m.tool_call_id;
    out.name = m.tool_name;
    out.thinking = m.thinking;
    Ok(out)
}

/// Tool calls as Ollama writes them.
pub(super) fn calls_json(calls: &[crate::chat::ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({ "id": c.id, "function": { "index": i, "name": c.name, "arguments": c.arguments } }))
        .collect()
}
