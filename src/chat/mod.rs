//! Conversations as the model reads and writes them: messages with tool calls, the model's own
//! Jinja chat template rendered as Hugging Face renders it ([`template`]), tool calls parsed back
//! out of generated text ([`tools`]), and the grammars that force valid calls and JSON
//! ([`grammar`]). Pure: no I/O, no FFI.

pub mod grammar;
mod pyjson;
pub mod template;
pub mod tools;

pub use grammar::{output_grammar, tool_grammar, OutputFormat};
pub use template::{ChatTemplate, RenderOptions};
pub use tools::{harmony_final, parse_tool_calls, ToolFormat};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One message of a conversation, in the shape every API translates into.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// Calls the assistant made (role `assistant`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name on a `tool` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The assistant's reasoning, for templates that show earlier reasoning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into(), ..Default::default() }
    }
}

/// A function call the model made (or, in a conversation, made earlier).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object.
    pub arguments: Value,
}

/// A function the model may call: OpenAI's `{"type": "function", "function": {...}}` inner part.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default = "empty_object")]
    pub parameters: Value,
}

fn empty_object() -> Value {
    serde_json::json!({ "type": "object", "properties": {} })
}

impl Tool {
    /// As templates expect tools: OpenAI's function-tool object.
    pub fn to_template_value(&self) -> Value {
        // in the order clients send them: templates that dump tools with tojson show this order
        let mut f = serde_json::Map::new();
        f.insert("name".into(), Value::String(self.name.clone()));
        if let Some(d) = &self.description {
            f.insert("description".into(), Value::String(d.clone()));
        }
        f.insert("parameters".into(), self.parameters.clone());
        let f = Value::Object(f);
        serde_json::json!({ "type": "function", "function": f })
    }
}

/// Whether (and which) tool the model must call.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ToolChoice {
    /// It may answer in text or call tools.
    #[default]
    Auto,
    /// It must not call tools (the tools are still shown to it, as OpenAI does).
    None,
    /// It must call some tool.
    Required,
    /// It must call this tool.
    Named(String),
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ChatError {
    #[error("the chat template does not parse: {reason}")]
    Syntax { reason: String },
    #[error("the chat template failed: {reason}")]
    Render { reason: String },
    #[error("the chat template refused the conversation: {message}")]
    Raised { message: String },
    #[error("tool {name:?}: {reason}")]
    BadTool { name: String, reason: String },
    #[error("tool_choice names {name:?}, which is not among the tools")]
    UnknownTool { name: String },
    #[error("the JSON schema cannot be used: {reason}")]
    Schema { reason: String },
}
