//! JSON written as Python's `json.dumps(..., ensure_ascii=False)` writes it: templates put tool
//! schemas and arguments into prompts with `tojson`, and the model was trained on Python's spacing
//! (`{"a": 1, "b": [1, 2]}`), not serde's compact form.

use serde_json::Value;
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct Style {
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
}

impl Style {
    /// Python's defaults: `", "` and `": "` without indent, `","` and `": "` with it.
    pub fn python(indent: Option<String>) -> Style {
        let item_sep = if indent.is_some() { "," } else { ", " }.to_string();
        Style { indent, item_sep, key_sep: ": ".into(), sort_keys: false }
    }
}

pub fn dumps(v: &Value, style: &Style) -> String {
    let mut out = String::new();
    write_value(&mut out, v, style, 0);
    out
}

fn newline(out: &mut String, style: &Style, depth: usize) {
    if let Some(ind) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_value(out: &mut String, v: &Value, style: &Style, depth: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, depth + 1);
                write_value(out, x, style, depth + 1);
            }
            newline(out, style, depth);
            out.push(']');
        }
        Value::Object(m) => {
            if m.is_empty() {
                out.push_str("{}");
                return;
            }
            let mut keys: Vec<&String> = m.keys().collect();
            if style.sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, style, depth + 1);
                write_string(out, k);
                out.push_str(&style.key_sep);
                write_value(out, &m[k], style, depth + 1);
            }
            newline(out, style, depth);
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        // Python's repr of a float: always a fraction or an exponent
        if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
            let _ = write!(out, "{f:.1}");
        } else {
            let _ = write!(out, "{f}");
        }
    } else {
        let _ = write!(out, "{n}");
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spaced_like_python() {
        let v = json!({ "b": [1, 2.0, "x"], "a": { "é": null, "t": true }, "e": {}, "l": [] });
        assert_eq!(
            dumps(&v, &Style::python(None)),
            r#"{"b": [1, 2.0, "x"], "a": {"é": null, "t": true}, "e": {}, "l": []}"#
        );
        let mut sorted = Style::python(None);
        sorted.sort_keys = true;
        assert_eq!(dumps(&json!({"b": 1, "a": 2}), &sorted), r#"{"a": 2, "b": 1}"#);
        assert_eq!(
            dumps(&json!({"a": [1, {"b": 2}]}), &Style::python(Some("  ".into()))),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": 2\n    }\n  ]\n}"
        );
        assert_eq!(dumps(&json!("a\"b\\c\n\u{1}"), &Style::python(None)), r#""a\"b\\c\n\u0001""#);
        assert_eq!(dumps(&json!(1.5), &Style::python(None)), "1.5");
    }
}
