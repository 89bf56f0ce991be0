//! Helpers shared by the API translations: body parsing with our own error messages, time
//! formats, streaming bodies.

use crate::runtime::{Field, KeepAlive, ModelRef, RuntimeError};
use axum::body::{Body, Bytes};
use serde::de::DeserializeOwned;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a request body is refused before any field is looked at (a 400 in every API).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("missing request body")]
    NoBody,
    /// Malformed JSON, a missing field or one of the wrong type: serde names the field.
    #[error("invalid request: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("content of type {kind:?} is not supported")]
    Content { kind: String },
}

/// Parses a JSON body; the error says what is wrong (malformed, missing field, wrong type).
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, RequestError> {
    if body.is_empty() {
        return Err(RequestError::NoBody);
    }
    Ok(serde_json::from_slice(body)?)
}

/// For `#[serde(deserialize_with)]` on struct-typed fields: only a JSON object (or null: the
/// default) is accepted. serde's derive also takes a struct from an array of its fields in
/// order, so `"options": []` would pass silently.
pub fn object<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    use serde::Deserialize;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(T::default()),
        v @ serde_json::Value::Object(_) => serde_json::from_value(v).map_err(serde::de::Error::custom),
        v => Err(serde::de::Error::custom(format!("expected an object, got {}", kind(&v)))),
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Message content as OpenAI and Anthropic send it: a string, or a list of typed parts of which
/// only `{"type": "text", "text": ...}` is supported.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub enum TextContent {
    Text(String),
    Parts(Vec<TextPart>),
}

#[derive(serde::Deserialize)]
pub struct TextPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

impl TextContent {
    pub fn text(self) -> Result<String, RequestError> {
        match self {
            TextContent::Text(t) => Ok(t),
            TextContent::Parts(p) => {
                // Responses calls text parts input_text and output_text
                if let Some(bad) = p.iter().find(|p| !["text", "input_text", "output_text"].contains(&p.kind.as_str()))
                {
                    return Err(RequestError::Content { kind: bad.kind.clone() });
                }
                Ok(p.into_iter().map(|p| p.text).collect::<Vec<_>>().join(""))
            }
        }
    }
}

/// RFC 3339 in UTC with nanoseconds, as Ollama writes `created_at`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::chat::template::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Ollama's keep_alive: seconds as a number, or a Go-style duration ("5m", "1h30m", "0", "-1");
/// negative means forever; bounded by the runtime before anything is converted.
pub fn keep_alive(v: &serde_json::Value) -> Result<KeepAlive, RuntimeError> {
    let bad = |r: String| RuntimeError::field(Field::KeepAlive, r);
    let secs: f64 = match v {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| bad("must be a number or a duration".into()))?,
        serde_json::Value::String(s) => {
            go_duration(s).ok_or_else(|| bad(format!("{s:?} is not a duration like 5m or 30s")))?
        }
        _ => return Err(bad("must be a number or a duration".into())),
    };
    KeepAlive::from_secs(secs)
}

/// A model name from a request body: a name, never a path.
pub fn model(name: &str) -> Result<ModelRef, RuntimeError> {
    ModelRef::name(name)
}

fn go_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<f64>() {
        return Some(n);
    }
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(if neg { -total } else { total })
}

/// A streaming body from a channel of already-framed chunks.
pub fn stream_body(rx: tokio::sync::mpsc::Receiver<String>) -> Body {
    struct S(tokio::sync::mpsc::Receiver<String>);
    impl futures_core::Stream for S {
        type Item = Result<Bytes, std::convert::Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.0.poll_recv(cx).map(|o| o.map(|s| Ok(Bytes::from(s))))
        }
    }
    Body::from_stream(S(rx))
}

/// A random-enough seed when the client gives none (sampling is then not reproducible, as in
/// Ollama).
pub fn random_seed() -> u32 {
    let n = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (n as u32) ^ ((n >> 32) as u32).rotate_left(7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_700_000_000)), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn keep_alive_forms() {
        use serde_json::json;
        assert_eq!(keep_alive(&json!("5m")).unwrap(), KeepAlive::For(Duration::from_secs(300)));
        assert_eq!(keep_alive(&json!("1h30m")).unwrap(), KeepAlive::For(Duration::from_secs(5400)));
        assert_eq!(keep_alive(&json!(0)).unwrap(), KeepAlive::For(Duration::ZERO));
        assert_eq!(keep_alive(&json!("0")).unwrap(), KeepAlive::For(Duration::ZERO));
        assert_eq!(keep_alive(&json!(-1)).unwrap(), KeepAlive::Forever);
        assert_eq!(keep_alive(&json!("-1m")).unwrap(), KeepAlive::Forever);
        assert!(keep_alive(&json!("soon")).is_err());
        assert!(keep_alive(&json!(true)).is_err());
        // huge values are refused, not converted (Duration::from_secs_f64 panics on them)
        assert!(keep_alive(&json!(1e300)).is_err());
        assert!(keep_alive(&json!("99999999999999999h")).is_err());
        assert!(keep_alive(&json!(f64::MAX)).is_err());
    }

    #[test]
    fn struct_fields_taken_only_from_objects() {
        #[derive(serde::Deserialize, Default, Debug, PartialEq)]
        #[serde(default)]
        struct O {
            a: Option<u32>,
        }
        #[derive(serde::Deserialize, Debug)]
        struct R {
            #[serde(default, deserialize_with = "object")]
            options: O,
        }
        let p = |s: &str| parse::<R>(&Bytes::from(s.to_string()));
        assert_eq!(p(r#"{"options": {"a": 3}}"#).unwrap().options, O { a: Some(3) });
        assert_eq!(p(r#"{"options": null}"#).unwrap().options, O::default());
        assert_eq!(p(r#"{}"#).unwrap().options, O::default());
        for bad in [r#"{"options": []}"#, r#"{"options": [5]}"#, r#"{"options": "x"}"#, r#"{"options": 1}"#] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains("expected an object"), "{bad}: {e}");
        }
        assert!(p(r#"{"options": {"a": "x"}}"#).is_err());
    }

    #[test]
    fn bodies_and_content_refused_with_the_reason() {
        let e = parse::<serde_json::Value>(&Bytes::new()).unwrap_err();
        assert_eq!(e.to_string(), "missing request body");
        let e = parse::<serde_json::Value>(&Bytes::from_static(b"{")).unwrap_err();
        assert!(matches!(e, RequestError::Invalid(_)) && e.to_string().starts_with("invalid request: "), "{e}");
        let c = |v: serde_json::Value| serde_json::from_value::<TextContent>(v).unwrap().text();
        assert_eq!(c(serde_json::json!("hi")).unwrap(), "hi");
        let parts = serde_json::json!([{ "type": "text", "text": "a" }, { "type": "input_text", "text": "b" }]);
        assert_eq!(c(parts).unwrap(), "ab");
        let e = c(serde_json::json!([{ "type": "image" }])).unwrap_err();
        assert_eq!(e.to_string(), r#"content of type "image" is not supported"#);
    }
}
