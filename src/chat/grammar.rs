//! Grammars that make output valid by construction: JSON (any object, or one matching a schema)
//! for structured outputs, and a tool call in the model's own format when a call is required.
//! Schemas are turned into GBNF by llama.cpp's converter; what it cannot take is refused here
//! with the reason.

use super::tools::ToolFormat;
use super::{ChatError, Tool, ToolChoice};
use crate::engine::json_schema_to_grammar;
use serde_json::{json, Value};

/// Deepest nesting of a schema we pass on (the converter recurses).
const MAX_DEPTH: usize = 32;

/// What the output must be.
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object (Ollama `format: "json"`, OpenAI `json_object`).
    JsonObject,
    /// JSON matching this schema.
    Schema(Value),
}

/// The grammar for a structured output.
pub fn output_grammar(f: &OutputFormat) -> Result<String, ChatError> {
    match f {
        OutputFormat::JsonObject => convert(&json!({ "type": "object" })),
        OutputFormat::Schema(s) => {
            check_schema(s, s, 0)?;
            convert(s)
        }
    }
}

/// The grammar that forces a call when `choice` requires one; None when the model may choose.
pub fn tool_grammar(format: ToolFormat, tools: &[Tool], choice: &ToolChoice) -> Result<Option<String>, ChatError> {
    let chosen: Vec<&Tool> = match choice {
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Named(n) => {
            vec![tools.iter().find(|t| &t.name == n).ok_or_else(|| ChatError::UnknownTool { name: n.clone() })?]
        }
    };
    for t in &chosen {
        check_schema(&t.parameters, &t.parameters, 0)
            .map_err(|e| ChatError::BadTool { name: t.name.clone(), reason: e.to_string() })?;
    }
    if matches!(format, ToolFormat::Harmony | ToolFormat::DeepSeek) {
        // the name is outside the JSON: one tool per grammar
        let [t] = chosen.as_slice() else {
            return Err(ChatError::Schema {
                reason: "this model's tool format needs tool_choice to name one function when a call is required"
                    .into(),
            });
        };
        let args = rename_root(&convert(&t.parameters)?, "args");
        use super::tools::{DS_CALL, DS_CALLS, DS_CALLS_END, DS_END, DS_SEP};
        let (head, tail) = match format {
            ToolFormat::Harmony => {
                (format!("<|channel|>commentary to=functions.{} <|constrain|>json<|message|>", t.name), String::new())
            }
            _ => (
                format!("{DS_CALLS}{DS_CALL}function{DS_SEP}{}\n```json\n", t.name),
                format!("\n```{DS_END}{DS_CALLS_END}"),
            ),
        };
        let tail = if tail.is_empty() { String::new() } else { format!(" {}", gbnf_literal(&tail)) };
        return Ok(Some(format!("root ::= {} args{tail}\n{args}", gbnf_literal(&head))));
    }
    let key = format.arguments_key();
    let calls: Vec<Value> = chosen
        .iter()
        .map(|t| {
            json!({
                "type": "object",
                "properties": { "name": { "const": t.name }, key: t.parameters },
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    let schema = if calls.len() == 1 { calls[0].clone() } else { json!({ "anyOf": calls }) };
    let call = rename_root(&convert(&schema)?, "call");
    let root = match format {
        ToolFormat::Hermes => r#"root ::= "<tool_call>\n" call "\n</tool_call>""#.to_string(),
        ToolFormat::Mistral => r#"root ::= "[TOOL_CALLS][" call "]""#.to_string(),
        _ => "root ::= call".to_string(),
    };
    Ok(Some(format!("{root}\n{call}")))
}

fn convert(schema: &Value) -> Result<String, ChatError> {
    let g = json_schema_to_grammar(schema).map_err(|e| ChatError::Schema { reason: e.to_string() })?;
    // llama.cpp's converter allows up to two newlines and 20 spaces wherever JSON allows
    // whitespace: a weak model pads with it for dozens of tokens; one optional space is enough
    Ok(g.lines()
        .map(|l| if l.starts_with("space ::=") { "space ::= | \" \"".to_string() } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The converter's rules with its `root` renamed, to be embedded in a larger grammar.
fn rename_root(gbnf: &str, name: &str) -> String {
    gbnf.lines()
        .map(|l| match l.strip_prefix("root ::=") {
            Some(rest) => format!("{name} ::={rest}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn gbnf_literal(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What we know the converter refuses or mishandles, said plainly.
fn check_schema(root: &Value, s: &Value, depth: usize) -> Result<(), ChatError> {
    let bad = |reason: String| Err(ChatError::Schema { reason });
    if depth > MAX_DEPTH {
        return bad(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let o = match s {
        Value::Bool(_) => return Ok(()),
        Value::Object(o) => o,
        other => return bad(format!("a schema must be an object, not {other}")),
    };
    if let Some(t) = o.get("type") {
        let known = ["object", "array", "string", "number", "integer", "boolean", "null"];
        let types: Vec<&Value> = match t {
            Value::Array(a) => a.iter().collect(),
            one => vec![one],
        };
        for t in types {
            match t.as_str() {
                Some(n) if known.contains(&n) => {}
                _ => return bad(format!("unknown type {t}")),
            }
        }
    }
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        if !r.starts_with('#') {
            return bad(format!("only local references (#/...) are supported, not {r:?}"));
        }
        if root.pointer(&r[1..]).is_none() {
            return bad(format!("the reference {r:?} points at nothing in the schema"));
        }
    }
    for key in ["properties", "$defs", "definitions", "patternProperties"] {
        if let Some(p) = o.get(key) {
            let Some(p) = p.as_object() else { return bad(format!("{key} must be an object")) };
            p.values().try_for_each(|v| check_schema(root, v, depth + 1))?;
        }
    }
    for key in ["items", "additionalProperties", "not", "contains"] {
        if let Some(v) = o.get(key) {
            check_schema(root, v, depth + 1)?;
        }
    }
    for key in ["anyOf", "oneOf", "allOf", "prefixItems"] {
        if let Some(v) = o.get(key) {
            let Some(a) = v.as_array() else { return bad(format!("{key} must be an array")) };
            a.iter().try_for_each(|v| check_schema(root, v, depth + 1))?;
        }
    }
    if let Some(r) = o.get("required") {
        if !r.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            return bad("required must be an array of property names".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_are_checked_with_reasons() {
        let err = |s: Value| output_grammar(&OutputFormat::Schema(s)).unwrap_err().to_string();
        assert!(err(json!({"type": "frobnicate"})).contains("unknown type"));
        assert!(err(json!({"$ref": "https://example.com/s.json"})).contains("local references"));
        assert!(err(json!({"$ref": "#/nope"})).contains("points at nothing"));
        assert!(output_grammar(&OutputFormat::Schema(
            json!({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"})
        ))
        .is_ok());
        assert!(err(json!({"type": "object", "required": "name"})).contains("required must be an array"));
        assert!(err(json!(["not", "a", "schema"])).contains("must be an object"));
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(err(deep).contains("nested deeper"));
    }

    #[test]
    fn grammars_convert() {
        let g = output_grammar(&OutputFormat::JsonObject).unwrap();
        assert!(g.contains("root ::="), "{g}");
        let tools = [Tool {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}),
        }];
        let g = tool_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Required).unwrap().unwrap();
        assert!(g.starts_with("root ::= \"<tool_call>\\n\" call"), "{g}");
        assert!(g.contains("call ::=") && g.contains("get_weather"), "{g}");
        assert_eq!(tool_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Auto).unwrap(), None);
        assert!(matches!(
            tool_grammar(ToolFormat::Hermes, &tools, &ToolChoice::Named("nope".into())),
            Err(ChatError::UnknownTool { .. })
        ));
        let g = tool_grammar(ToolFormat::Harmony, &tools, &ToolChoice::Named("get_weather".into())).unwrap().unwrap();
        assert!(g.contains("to=functions.get_weather") && g.contains("args ::="), "{g}");
        let g = tool_grammar(ToolFormat::DeepSeek, &tools, &ToolChoice::Named("get_weather".into())).unwrap().unwrap();
        assert!(g.contains("tool▁sep｜>get_weather") && g.contains("tool▁calls▁end") && g.contains("args ::="), "{g}");
    }
}
