//! A model's own Jinja chat template, rendered as Hugging Face transformers renders it:
//! `trim_blocks` and `lstrip_blocks`, loop controls, Python's string and dict methods, `tojson`
//! spaced like Python's `json.dumps`, `raise_exception` and `strftime_now`, with `messages`,
//! `tools`, `add_generation_prompt`, `bos_token` and `eos_token` (plus extra variables such as
//! `enable_thinking`). Templates come from model files, so rendering is bounded (fuel, recursion).

use super::pyjson::{dumps, Style};
use super::{ChatError, ChatMessage, Tool};
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Instructions a template may execute per render: real templates need a few thousand per
/// message; this bounds a hostile one.
const FUEL: u64 = 50_000_000;
const RAISED: &str = "raise_exception: ";
const NOW: &str = "__exo_now_unix";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// What a render gets besides the template itself.
#[derive(Clone, Debug)]
pub struct RenderOptions<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: &'a [Tool],
    pub add_generation_prompt: bool,
    /// Further variables (`enable_thinking`, `reasoning_effort`, ...).
    pub extra: Map<String, Value>,
    /// What `strftime_now` reports.
    pub now: SystemTime,
}

impl<'a> RenderOptions<'a> {
    pub fn new(messages: &'a [ChatMessage], tools: &'a [Tool]) -> RenderOptions<'a> {
        RenderOptions { messages, tools, add_generation_prompt: true, extra: Map::new(), now: SystemTime::now() }
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the texts of the model's BOS and EOS tokens.
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<JValue, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
        });
        env.add_function("strftime_now", |state: &State, fmt: String| -> Result<String, Error> {
            let now = state.lookup(NOW).and_then(|v| i64::try_from(v).ok()).unwrap_or(0);
            Ok(strftime(now, &fmt))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| ChatError::Syntax { reason: describe(&e) })?;
        Ok(ChatTemplate { env, bos: bos.to_string(), eos: eos.to_string() })
    }

    pub fn render(&self, o: &RenderOptions) -> Result<String, ChatError> {
        let tmpl = self.env.get_template("chat").map_err(|e| ChatError::Syntax { reason: describe(&e) })?;
        let messages: Vec<Value> = o.messages.iter().map(message_value).collect();
        let mut ctx = o.extra.clone();
        ctx.insert("messages".into(), Value::Array(messages));
        if !o.tools.is_empty() {
            ctx.insert("tools".into(), Value::Array(o.tools.iter().map(Tool::to_template_value).collect()));
        }
        ctx.insert("add_generation_prompt".into(), json!(o.add_generation_prompt));
        // a token the model lacks stays undefined, as transformers leaves it
        for (k, v) in [("bos_token", &self.bos), ("eos_token", &self.eos)] {
            if !v.is_empty() {
                ctx.insert(k.into(), json!(v));
            }
        }
        let now = o.now.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        ctx.insert(NOW.into(), json!(now));
        tmpl.render(JValue::from_serialize(&ctx)).map_err(|e| {
            let d = describe(&e);
            match d.find(RAISED) {
                Some(i) => {
                    let msg = &d[i + RAISED.len()..];
                    ChatError::Raised { message: msg.split(" (in chat:").next().unwrap_or(msg).trim().to_string() }
                }
                None => ChatError::Render { reason: d },
            }
        })
    }
}

/// A message as templates expect it: OpenAI's shape, arguments as an object.
fn message_value(m: &ChatMessage) -> Value {
    let mut v = json!({ "role": m.role, "content": m.content });
    if !m.tool_calls.is_empty() {
        // content stays "" (not null, as OpenAI clients send it): Qwen3's and gpt-oss's templates
        // test `in message.content`, ChatML ones concatenate it, and both fail on null
        v["tool_calls"] = m
            .tool_calls
            .iter()
            .map(
                |c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }),
            )
            .collect();
    }
    if let Some(id) = &m.tool_call_id {
        v["tool_call_id"] = json!(id);
    }
    if let Some(n) = &m.name {
        v["name"] = json!(n);
    }
    if let Some(t) = &m.thinking {
        // Qwen3 and DeepSeek templates read reasoning_content, gpt-oss reads thinking
        v["reasoning_content"] = json!(t);
        v["thinking"] = json!(t);
    }
    v
}

fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(v: JValue, kwargs: Kwargs) -> Result<String, Error> {
    let indent: Option<JValue> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(i) if i.is_none() || i.is_undefined() => None,
        Some(i) => match i.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(i64::try_from(i)?.clamp(0, 16) as usize)),
        },
    };
    let mut style = Style::python(indent);
    style.sort_keys = sort_keys.unwrap_or(false);
    if let Some(sep) = separators {
        if let [item, key] = sep.as_slice() {
            style.item_sep = item.clone();
            style.key_sep = key.clone();
        } else {
            return Err(Error::new(ErrorKind::InvalidOperation, "separators must be a pair"));
        }
    }
    let value: Value =
        serde_json::to_value(&v).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(dumps(&value, &style))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// The C `strftime` directives templates use, in UTC.
pub fn strftime(unix: i64, fmt: &str) -> String {
    let (days, rem) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let mname = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(mname),
            Some('b') | Some('h') => out.push_str(&mname[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{m:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('j') => out.push_str(&format!("{:03}", day_of_year(year, month, day))),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month, day) of a day counted from 1970-01-01 (Howard Hinnant's civil-from-days).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + (month <= 2) as i64, month, day)
}

fn day_of_year(year: i64, month: i64, day: i64) -> i64 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    before + day + (leap && month > 2) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ToolCall;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let m = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")];
        let out = t.render(&RenderOptions::new(&m, &[])).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_tojson_and_helpers() {
        let src = "{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}|{% if m.tool_calls %}{{ m.tool_calls[0].function.arguments | tojson }}{% endif %}{% endfor %}{% if tools %}{{ tools[0] | tojson(indent=2) }}{% endif %}{{ strftime_now('%d %b %Y') }}{% for x in [1,2,3] %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let call = ToolCall { id: "c1".into(), name: "f".into(), arguments: json!({"a": 1, "b": "x"}) };
        let m = [ChatMessage { tool_calls: vec![call], ..ChatMessage::new("assistant", "  hi ") }];
        let tools = [Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}) }];
        let mut o = RenderOptions::new(&m, &tools);
        o.now = UNIX_EPOCH + std::time::Duration::from_secs(1_721_952_000); // 2024-07-26
        let out = t.render(&o).unwrap();
        assert_eq!(
            out,
            "<s>HI|{\"a\": 1, \"b\": \"x\"}{\n  \"type\": \"function\",\n  \"function\": {\n    \"name\": \"f\",\n    \"parameters\": {\n      \"type\": \"object\"\n    }\n  }\n}26 Jul 20241"
        );
    }

    #[test]
    fn raise_exception_and_hostile_templates() {
        let t = ChatTemplate::new(
            "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&RenderOptions::new(&[ChatMessage::new("system", "x")], &[])).unwrap_err();
        assert_eq!(err, ChatError::Raised { message: "System role not supported".into() });
        assert!(matches!(ChatTemplate::new("{% for %}", "", ""), Err(ChatError::Syntax { .. })));
        // an endless template runs out of fuel instead of hanging the node
        let spin = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        assert!(matches!(spin.render(&RenderOptions::new(&[], &[])), Err(ChatError::Render { .. })));
    }

    #[test]
    fn strftime_directives() {
        assert_eq!(
            strftime(0, "%Y-%m-%d %H:%M:%S %A %a %B %b %j %%"),
            "1970-01-01 00:00:00 Thursday Thu January Jan 001 %"
        );
        assert_eq!(strftime(1_721_952_000, "%d %B %Y"), "26 July 2024");
        assert_eq!(strftime(951_782_400, "%j %e"), "060 29");
    }
}
