//! Tools, tool calls and structured-output formats as the APIs spell them, checked and turned into
//! the runtime's [`crate::chat`] types.

use crate::chat::{OutputFormat, Tool, ToolCall, ToolChoice};
use crate::runtime::{Field, RuntimeError};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most tools one request may offer (OpenAI allows 128).
pub const MAX_TOOLS: usize = 128;

fn bad(field: Field, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::field(field, reason)
}

/// A function name as OpenAI allows them: `[A-Za-z0-9_-]{1,64}` (dots too, for namespaced tools).
fn check_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(bad(Field::Tools, format!("{name:?} is not a valid function name (letters, digits, _ - ., at most 64)")))
    }
}

fn check_parameters(name: &str, p: &Value) -> Result<(), RuntimeError> {
    if !p.is_object() {
        return Err(bad(Field::Tools, format!("the parameters of {name:?} must be a JSON schema object")));
    }
    Ok(())
}

#[derive(Deserialize)]
struct FunctionSpec {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
}

#[derive(Deserialize)]
struct FunctionTool {
    #[serde(rename = "type")]
    kind: String,
    function: Option<FunctionSpec>,
}

/// OpenAI's and Ollama's tools: `[{"type": "function", "function": {name, description, parameters}}]`.
pub fn function_tools(v: Option<&Value>) -> Result<Vec<Tool>, RuntimeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list: Vec<FunctionTool> = serde_json::from_value(v.clone())
        .map_err(|e| bad(Field::Tools, format!("expected a list of function tools: {e}")))?;
    if list.len() > MAX_TOOLS {
        return Err(bad(Field::Tools, format!("{} tools; at most {MAX_TOOLS}", list.len())));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(list.len());
    for t in list {
        let f = match (t.kind.as_str(), t.function) {
            ("function", Some(f)) => f,
            (k, _) => {
                return Err(bad(Field::Tools, format!("tools of type {k:?} are not supported (only \"function\")")))
            }
        };
        check_name(&f.name)?;
        if out.iter().any(|o| o.name == f.name) {
            return Err(bad(Field::Tools, format!("{:?} is given twice", f.name)));
        }
        let parameters = f.parameters.unwrap_or_else(|| json!({ "type": "object", "properties": {} }));
        check_parameters(&f.name, &parameters)?;
        out.push(Tool { name: f.name, description: f.description, parameters });
    }
    Ok(out)
}

/// Anthropic's tools: `[{name, description, input_schema}]`.
pub fn anthropic_tools(v: Option<&Value>) -> Result<Vec<Tool>, RuntimeError> {
    #[derive(Deserialize)]
    struct T {
        name: String,
        description: Option<String>,
        input_schema: Value,
    }
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let list: Vec<T> = serde_json::from_value(v.clone())
        .map_err(|e| bad(Field::Tools, format!("expected a list of {{name, description, input_schema}}: {e}")))?;
    if list.len() > MAX_TOOLS {
        return Err(bad(Field::Tools, format!("{} tools; at most {MAX_TOOLS}", list.len())));
    }
    list.into_iter()
        .map(|t| {
            check_name(&t.name)?;
            check_parameters(&t.name, &t.input_schema)?;
            Ok(Tool { name: t.name, description: t.description, parameters: t.input_schema })
        })
        .collect()
}

/// OpenAI's `tool_choice`: "none" | "auto" | "required" | {"type": "function", "function": {"name"}}.
pub fn openai_choice(v: Option<&Value>) -> Result<ToolChoice, RuntimeError> {
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            o => Err(bad(Field::ToolChoice, format!("{o:?} is not one of none, auto, required"))),
        },
        Some(o) => match o.pointer("/function/name").or_else(|| o.get("name")).and_then(Value::as_str) {
            Some(n) => Ok(ToolChoice::Named(n.to_string())),
            None => Err(bad(Field::ToolChoice, "expected {\"type\": \"function\", \"function\": {\"name\": ...}}")),
        },
    }
}

/// Anthropic's `tool_choice`: {"type": "auto" | "any" | "none" | "tool", "name"}.
pub fn anthropic_choice(v: Option<&Value>) -> Result<ToolChoice, RuntimeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(ToolChoice::Auto) };
    match (v.get("type").and_then(Value::as_str), v.get("name").and_then(Value::as_str)) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("any"), _) => Ok(ToolChoice::Required),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("tool"), Some(n)) => Ok(ToolChoice::Named(n.to_string())),
        _ => Err(bad(Field::ToolChoice, "expected {\"type\": \"auto\" | \"any\" | \"none\" | \"tool\", \"name\"}")),
    }
}

/// Ollama's `format`: "json", a JSON schema, or absent.
pub fn ollama_format(v: Option<&Value>) -> Result<Option<OutputFormat>, RuntimeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(OutputFormat::JsonObject)),
        Some(Value::String(s)) => Err(bad(Field::Format, format!("{s:?} is neither \"json\" nor a JSON schema"))),
        Some(s @ Value::Object(_)) => Ok(Some(OutputFormat::Schema(s.clone()))),
        Some(o) => Err(bad(Field::Format, format!("{o} is neither \"json\" nor a JSON schema"))),
    }
}

/// OpenAI's `response_format`: {"type": "text" | "json_object" | "json_schema", "json_schema": {"schema"}}.
pub fn openai_format(v: Option<&Value>) -> Result<Option<OutputFormat>, RuntimeError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(None) };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(OutputFormat::JsonObject)),
        Some("json_schema") => match v.pointer("/json_schema/schema") {
            Some(s) => Ok(Some(OutputFormat::Schema(s.clone()))),
            None => Err(bad(Field::Format, "json_schema.schema is missing")),
        },
        _ => Err(bad(Field::Format, "type must be one of text, json_object, json_schema")),
    }
}

/// A tool call of an earlier turn as OpenAI and Ollama send it: `{id?, function: {name,
/// arguments}}`, arguments an object or (OpenAI) a JSON string of one.
#[derive(Deserialize)]
pub struct CallIn {
    id: Option<String>,
    function: FnIn,
}

#[derive(Deserialize)]
struct FnIn {
    name: String,
    #[serde(default)]
    arguments: Value,
}

/// Earlier calls, checked; ids made up (`call_N`) where the client gave none.
pub fn calls_in(calls: Vec<CallIn>) -> Result<Vec<ToolCall>, RuntimeError> {
    calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(ToolCall {
                id: c.id.unwrap_or_else(|| format!("call_{i}")),
                arguments: arguments(&c.function.arguments)?,
                name: c.function.name,
            })
        })
        .collect()
}

/// Arguments as they arrive in earlier turns: an object, or (OpenAI) a JSON string of one.
pub fn arguments(v: &Value) -> Result<Value, RuntimeError> {
    match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| bad(Field::Messages, "tool call arguments must be a JSON object")),
        o @ Value::Object(_) => Ok(o.clone()),
        Value::Null => Ok(json!({})),
        _ => Err(bad(Field::Messages, "tool call arguments must be a JSON object")),
    }
}

/// A tool call as OpenAI writes it (arguments as a JSON string).
pub fn openai_call(c: &ToolCall, index: Option<usize>) -> Value {
    let mut v =
        json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments.to_string() } });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}
