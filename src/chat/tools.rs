//! Tool calls in generated text, in the formats models are trained on: Hermes/Qwen
//! (`<tool_call>{json}</tool_call>`), Llama 3.x (a bare JSON object, or after `<|python_tag|>`),
//! Mistral (`[TOOL_CALLS][{...}]`, or `[TOOL_CALLS]name[ARGS]{...}`) and gpt-oss's harmony
//! (`<|channel|>commentary to=functions.name ... <|message|>{json}<|call|>`) and DeepSeek's
//! (`<｜tool▁call▁begin｜>function<｜tool▁sep｜>name` + a fenced JSON block). Which one a model uses
//! is read from its chat template.

use super::ToolCall;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    Llama3,
    Mistral,
    Harmony,
    DeepSeek,
    /// The template shows tools but in no format we know: JSON objects with name and arguments.
    Generic,
}

impl ToolFormat {
    /// The format a template's model writes calls in; None when the template ignores tools.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if !template.contains("tools") && !template.contains("tool_calls") {
            return None;
        }
        Some(if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if template.contains("<|channel|>") {
            ToolFormat::Harmony
        } else if template.contains(DS_CALL) {
            ToolFormat::DeepSeek
        } else if template.contains("<|python_tag|>") || template.contains("<|start_header_id|>") {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        })
    }

    /// The key models of this format put the arguments under.
    pub fn arguments_key(self) -> &'static str {
        match self {
            ToolFormat::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

/// Splits generated text into what is said and the calls made. Text that only looks like a call
/// (malformed JSON) stays text.
pub fn parse_tool_calls(format: ToolFormat, text: &str) -> (String, Vec<ToolCall>) {
    let (content, calls) = match format {
        ToolFormat::Hermes => tagged(text, "<tool_call>", "</tool_call>"),
        ToolFormat::Mistral => mistral(text),
        ToolFormat::Harmony => harmony(text),
        ToolFormat::DeepSeek => deepseek(text),
        ToolFormat::Llama3 | ToolFormat::Generic => {
            let t = text.trim_start();
            let t = t.strip_prefix("<|python_tag|>").unwrap_or(t);
            match json_calls(t) {
                Some(calls) if !calls.is_empty() => (String::new(), calls),
                _ => (text.to_string(), Vec::new()),
            }
        }
    };
    let calls =
        calls.into_iter().enumerate().map(|(i, (name, arguments))| ToolCall { id: call_id(i), name, arguments });
    (content.trim().to_string(), calls.collect())
}

fn call_id(i: usize) -> String {
    let mut b = [0u8; 6];
    let _ = getrandom::fill(&mut b);
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("call_{hex}{i}")
}

/// A call object: `{"name": ..., "arguments"|"parameters": {...} or "json string"}`.
fn call_of(v: &Value) -> Option<(String, Value)> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters")).cloned().unwrap_or(Value::Object(Default::default()));
    let args = match args {
        Value::String(s) => serde_json::from_str(&s).ok().filter(Value::is_object)?,
        a @ Value::Object(_) => a,
        _ => return None,
    };
    Some((name, args))
}

/// One or more JSON calls: an object, an array of objects, or objects separated by `;` or
/// whitespace.
fn json_calls(t: &str) -> Option<Vec<(String, Value)>> {
    let t = t.trim();
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_str(t).into_iter::<Value>();
    while let Some(v) = de.next() {
        match v.ok()? {
            Value::Array(a) => out.extend(a.iter().map(call_of).collect::<Option<Vec<_>>>()?),
            o @ Value::Object(_) => out.push(call_of(&o)?),
            _ => return None,
        }
        // tolerate `;` between calls (Llama 3.2 sometimes writes them)
        let rest = &t[de.byte_offset()..];
        if let Some(r) = rest.trim_start().strip_prefix(';') {
            out.extend(json_calls(r)?);
            return Some(out);
        }
    }
    Some(out)
}

fn tagged(text: &str, open: &str, close: &str) -> (String, Vec<(String, Value)>) {
    let (mut content, mut calls, mut rest) = (String::new(), Vec::new(), text);
    while let Some(i) = rest.find(open) {
        let body_start = i + open.len();
        let (body, next) = match rest[body_start..].find(close) {
            Some(j) => (&rest[body_start..body_start + j], &rest[body_start + j + close.len()..]),
            None => (&rest[body_start..], ""),
        };
        match json_calls(body) {
            Some(c) if !c.is_empty() => {
                content.push_str(&rest[..i]);
                calls.extend(c);
            }
            _ => content.push_str(&rest[..body_start + body.len()]),
        }
        rest = next;
    }
    content.push_str(rest);
    (content, calls)
}

fn mistral(text: &str) -> (String, Vec<(String, Value)>) {
    const TAG: &str = "[TOOL_CALLS]";
    let Some(i) = text.find(TAG) else { return (text.to_string(), Vec::new()) };
    let (before, after) = (&text[..i], text[i + TAG.len()..].trim_start());
    if after.starts_with('[') || after.starts_with('{') {
        if let Some(c) = json_calls(after) {
            return (before.to_string(), c);
        }
    }
    // newer Mistral: name[ARGS]{...}, repeated after further [TOOL_CALLS] tags
    let mut calls = Vec::new();
    for part in text[i..].split(TAG).filter(|p| !p.trim().is_empty()) {
        let Some((name, args)) = part.split_once("[ARGS]") else { return (text.to_string(), Vec::new()) };
        let name = name.split("[CALL_ID]").next().unwrap_or(name).trim();
        match serde_json::from_str::<Value>(args.trim()) {
            Ok(a @ Value::Object(_)) if !name.is_empty() => calls.push((name.to_string(), a)),
            _ => return (text.to_string(), Vec::new()),
        }
    }
    (before.to_string(), calls)
}

pub(super) const DS_CALL: &str = "<｜tool▁call▁begin｜>";
pub(super) const DS_SEP: &str = "<｜tool▁sep｜>";
pub(super) const DS_END: &str = "<｜tool▁call▁end｜>";
pub(super) const DS_CALLS: &str = "<｜tool▁calls▁begin｜>";
pub(super) const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";

/// DeepSeek: `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{...}\n```<｜tool▁call▁end｜>`,
/// inside `<｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>`.
fn deepseek(text: &str) -> (String, Vec<(String, Value)>) {
    let Some(first) = text.find(DS_CALLS).or_else(|| text.find(DS_CALL)) else { return (text.to_string(), Vec::new()) };
    let mut calls = Vec::new();
    for part in text[first..].split(DS_CALL).skip(1) {
        let body = part.split(DS_END).next().unwrap_or(part);
        let Some((_, rest)) = body.split_once(DS_SEP) else { return (text.to_string(), Vec::new()) };
        let (name, args) = rest.split_once('\n').unwrap_or((rest, ""));
        let args = args.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
        match serde_json::from_str::<Value>(args) {
            Ok(a @ Value::Object(_)) if !name.trim().is_empty() => calls.push((name.trim().to_string(), a)),
            _ => return (text.to_string(), Vec::new()),
        }
    }
    (text[..first].to_string(), calls)
}

/// Harmony: calls on the commentary channel; the answer is the final channel's message.
fn harmony(text: &str) -> (String, Vec<(String, Value)>) {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("to=functions.") {
        let after = &rest[i + "to=functions.".len()..];
        let name_end = after.find(|c: char| c.is_whitespace() || c == '<').unwrap_or(after.len());
        let name = &after[..name_end];
        let Some(m) = after.find("<|message|>") else { break };
        let body = &after[m + "<|message|>".len()..];
        let end = body.find("<|call|>").or_else(|| body.find("<|end|>")).unwrap_or(body.len());
        if let Ok(a @ Value::Object(_)) = serde_json::from_str::<Value>(body[..end].trim()) {
            calls.push((name.to_string(), a));
        }
        rest = &body[end..];
    }
    (harmony_final(text), calls)
}

/// The final channel's text of a harmony response (all of it when it has no channels).
pub fn harmony_final(text: &str) -> String {
    const FINAL: &str = "<|channel|>final<|message|>";
    if let Some(i) = text.rfind(FINAL) {
        let body = &text[i + FINAL.len()..];
        let end = ["<|return|>", "<|end|>"].iter().filter_map(|t| body.find(t)).min().unwrap_or(body.len());
        return body[..end].to_string();
    }
    if text.contains("<|channel|>") {
        return String::new();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(c: &[ToolCall]) -> Vec<(&str, &Value)> {
        c.iter().map(|c| (c.name.as_str(), &c.arguments)).collect()
    }

    #[test]
    fn hermes() {
        let (t, c) = parse_tool_calls(
            ToolFormat::Hermes,
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\"}}\n</tool_call>\n<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}</tool_call>",
        );
        assert_eq!(t, "Let me check.");
        assert_eq!(names(&c), vec![("get_weather", &json!({"location": "Paris"})), ("f", &json!({"x": 1}))]);
        assert!(c[0].id.starts_with("call_") && c[0].id != c[1].id);
        // malformed stays text
        let (t, c) = parse_tool_calls(ToolFormat::Hermes, "<tool_call>{\"name\": oops}</tool_call>");
        assert!(c.is_empty());
        assert!(t.contains("oops"));
    }

    #[test]
    fn llama3_mistral_harmony() {
        let (t, c) = parse_tool_calls(
            ToolFormat::Llama3,
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"location\": \"Paris\"}}",
        );
        assert_eq!((t.as_str(), names(&c)), ("", vec![("get_weather", &json!({"location": "Paris"}))]));
        let (t, c) = parse_tool_calls(ToolFormat::Llama3, "The weather is {fine}.");
        assert_eq!((t.as_str(), c.len()), ("The weather is {fine}.", 0));
        let (_, c) = parse_tool_calls(
            ToolFormat::Mistral,
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": 1}}, {\"name\": \"b\", \"arguments\": {}}]",
        );
        assert_eq!(names(&c), vec![("a", &json!({"x": 1})), ("b", &json!({}))]);
        let (_, c) = parse_tool_calls(ToolFormat::Mistral, "[TOOL_CALLS]get_weather[ARGS]{\"location\": \"Paris\"}");
        assert_eq!(names(&c), vec![("get_weather", &json!({"location": "Paris"}))]);
        let (t, c) = parse_tool_calls(
            ToolFormat::Harmony,
            "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>",
        );
        assert_eq!((t.as_str(), names(&c)), ("", vec![("get_weather", &json!({"location": "Paris"}))]));
        assert_eq!(
            harmony_final(
                "<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>Hi!<|return|>"
            ),
            "Hi!"
        );
    }

    #[test]
    fn deepseek() {
        let ds = "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"location\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>";
        let (t, c) = parse_tool_calls(ToolFormat::DeepSeek, ds);
        assert_eq!((t.as_str(), names(&c)), ("Checking.", vec![("get_weather", &json!({"location": "Paris"}))]));
        let (t, c) = parse_tool_calls(
            ToolFormat::DeepSeek,
            "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\nnot json\n```",
        );
        assert!(c.is_empty() && t.contains("not json"));
    }

    #[test]
    fn detection() {
        assert_eq!(ToolFormat::detect("{% for m in messages %}{{ m.content }}{% endfor %}"), None);
        assert_eq!(ToolFormat::detect("{% if tools %}<tool_call>{% endif %}"), Some(ToolFormat::Hermes));
        assert_eq!(ToolFormat::detect("{% if tools %}[TOOL_CALLS]{% endif %}"), Some(ToolFormat::Mistral));
        assert_eq!(ToolFormat::detect("{% if tools %}<|start_header_id|>ipython{% endif %}"), Some(ToolFormat::Llama3));
    }
}
