//! Real models' chat templates (tests/fixtures/chat_templates: Llama 3.1/3.2, Qwen2.5/3, Mistral
//! Nemo, Gemma 3, gpt-oss, DeepSeek R1 distill, SmolLM2) rendered by exo and compared byte for
//! byte with what transformers' renderer (jinja2) gives for the same conversations
//! (`render_reference.py` wrote `expected/`). A template that refuses a case must refuse it here
//! too, with the same message when it raised one itself.

use exo::chat::{ChatError, ChatMessage, ChatTemplate, RenderOptions, Tool, ToolCall};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn read_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join(name)).unwrap()).unwrap()
}

fn message(m: &Value) -> ChatMessage {
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    let mut out = ChatMessage::new(s("role").unwrap(), s("content").unwrap_or_default());
    for c in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
        out.tool_calls.push(ToolCall {
            id: c["id"].as_str().unwrap().into(),
            name: c["function"]["name"].as_str().unwrap().into(),
            arguments: c["function"]["arguments"].clone(),
        });
    }
    out.tool_call_id = s("tool_call_id");
    out.name = s("name");
    out
}

fn tool(t: &Value) -> Tool {
    let f = &t["function"];
    Tool {
        name: f["name"].as_str().unwrap().into(),
        description: f["description"].as_str().map(str::to_string),
        parameters: f["parameters"].clone(),
    }
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let tokens = read_json("special_tokens.json");
    let cases = read_json("cases.json");
    let (mut checked, mut failures) = (0, Vec::new());
    for (name, tok) in tokens.as_object().unwrap() {
        let source = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
        let get = |k: &str| tok.get(k).and_then(Value::as_str).unwrap_or("");
        let t = ChatTemplate::new(&source, get("bos_token"), get("eos_token"))
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        for case in cases.as_array().unwrap() {
            let case_name = case["name"].as_str().unwrap();
            let messages: Vec<ChatMessage> = case["messages"].as_array().unwrap().iter().map(message).collect();
            let tools: Vec<Tool> =
                case.get("tools").and_then(Value::as_array).into_iter().flatten().map(tool).collect();
            let mut o = RenderOptions::new(&messages, &tools);
            o.add_generation_prompt = case["add_generation_prompt"].as_bool().unwrap();
            o.now = UNIX_EPOCH + Duration::from_secs(1_721_952_000); // 2024-07-26, as the reference
            let mut extra = Map::new();
            for k in ["pad_token", "unk_token"] {
                if let Some(v) = tok.get(k) {
                    extra.insert(k.into(), v.clone());
                }
            }
            o.extra = extra;
            let stem = dir().join("expected").join(format!("{name}.{case_name}"));
            let ok = std::fs::read_to_string(stem.with_extension(format!("{case_name}.txt"))).ok();
            let err = std::fs::read_to_string(stem.with_extension(format!("{case_name}.error.txt"))).ok();
            checked += 1;
            match (t.render(&o), ok, err) {
                (Ok(got), Some(want), _) if got == want => {}
                (Ok(got), Some(want), _) => {
                    failures.push(format!("{name}.{case_name}: differs\n--- want\n{want}\n--- got\n{got}\n"))
                }
                (Ok(got), None, Some(e)) => {
                    failures.push(format!("{name}.{case_name}: rendered, but the reference fails ({e}):\n{got}"))
                }
                (Err(ChatError::Raised { message }), _, Some(want)) if message != want => {
                    failures.push(format!("{name}.{case_name}: raised {message:?}, the reference {want:?}"))
                }
                (Err(_), _, Some(_)) => {}
                (Err(e), _, None) => failures.push(format!("{name}.{case_name}: {e}")),
                (Ok(_), None, None) => panic!("no expected output for {name}.{case_name}"),
            }
        }
    }
    assert!(checked >= 40, "only {checked} renders checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} renders differ from transformers':\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tool_formats_and_capabilities_are_read_from_the_templates() {
    use exo::chat::ToolFormat as F;
    let expect = [
        ("llama3.1", Some(F::Llama3)),
        ("llama3.2", Some(F::Llama3)),
        ("qwen2.5", Some(F::Hermes)),
        ("qwen3", Some(F::Hermes)),
        ("mistral-nemo", Some(F::Mistral)),
        ("gpt-oss", Some(F::Harmony)),
        ("deepseek-r1-distill-qwen", Some(F::DeepSeek)),
        ("gemma3", None),
        ("smollm2", None),
    ];
    for (name, format) in expect {
        let source = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
        assert_eq!(F::detect(&source), format, "{name}");
        let caps = exo::runtime::capabilities(Some(&source));
        assert_eq!(caps.contains(&"tools"), format.is_some(), "{name}: {caps:?}");
    }
    for name in ["qwen3", "deepseek-r1-distill-qwen", "gpt-oss"] {
        let source = std::fs::read_to_string(dir().join(format!("{name}.jinja"))).unwrap();
        assert!(exo::runtime::capabilities(Some(&source)).contains(&"thinking"), "{name}");
    }
    let smol = std::fs::read_to_string(dir().join("smollm2.jinja")).unwrap();
    assert!(!exo::runtime::capabilities(Some(&smol)).contains(&"thinking"));
}
