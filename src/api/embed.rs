//! Embeddings in both APIs: Ollama's `/api/embed` (and the legacy `/api/embeddings`) and
//! OpenAI's `/v1/embeddings`, over [`Runtime::embed`](crate::runtime::Runtime::embed). Bodies
//! are read as JSON values and checked field by field, so that every refusal names its field.

use super::util::{keep_alive, model, parse};
use super::AppState;
use crate::runtime::{EmbedInput, EmbedRequest, Embeddings, RuntimeError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Map, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/embed", post(ollama_embed))
        .route("/api/embeddings", post(ollama_embeddings))
        .route("/v1/embeddings", post(openai_embeddings))
}

/// Which API a request came through: its error shape and field names.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Ollama,
    OpenAi,
}

impl Api {
    fn error(self, msg: impl std::fmt::Display) -> Response {
        match self {
            Api::Ollama => super::ollama::error(StatusCode::BAD_REQUEST, msg),
            Api::OpenAi => super::openai::error(StatusCode::BAD_REQUEST, msg),
        }
    }

    fn runtime_error(self, e: RuntimeError) -> Response {
        match self {
            Api::Ollama => super::ollama::runtime_error(e),
            Api::OpenAi => super::openai::runtime_error(e),
        }
    }
}

/// The body as a JSON object, or the refusal.
fn object(api: Api, body: &Bytes) -> Result<Map<String, Value>, Box<Response>> {
    match parse::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Box::new(api.error("invalid request: the body must be a JSON object"))),
        Err(e) => Err(Box::new(api.error(e))),
    }
}

/// What both APIs share: model, dimensions; Ollama's options.num_ctx, keep_alive, truncate.
fn common(api: Api, m: &Map<String, Value>, inputs: Vec<EmbedInput>) -> Result<EmbedRequest, Box<Response>> {
    let name = match m.get("model") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => return Err(Box::new(api.error("model: must be a string"))),
    };
    let model = model(name).map_err(|e| Box::new(api.runtime_error(e)))?;
    let dimensions = match m.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| Box::new(api.error("dimensions: must be an integer")))?),
    };
    let truncate = match m.get("truncate") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Box::new(api.error("truncate: must be true or false"))),
    };
    let keep_alive = match m.get("keep_alive") {
        None | Some(Value::Null) => None,
        Some(v) => Some(keep_alive(v).map_err(|e| Box::new(api.runtime_error(e)))?),
    };
    let num_ctx = match m.get("options").and_then(|o| o.get("num_ctx")) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| Box::new(api.error("options.num_ctx: must be a positive integer")))?,
        ),
    };
    if m.get("options").is_some_and(|o| !o.is_object() && !o.is_null()) {
        return Err(Box::new(api.error("options: must be an object")));
    }
    Ok(EmbedRequest { model, inputs, truncate, dimensions, num_ctx, keep_alive, normalize: true })
}

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

/// Ollama: `input` is a string or an array of strings; none (or empty) only loads the model.
async fn ollama_embed(State(state): State<AppState>, body: Bytes) -> Response {
    let api = Api::Ollama;
    let m = match object(api, &body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let inputs = match m.get("input") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if s.is_empty() => vec![],
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(Value::Array(a)) => match strings(a) {
            Ok(v) => v,
            Err(e) => return api.error(e),
        },
        Some(_) => return api.error("input: must be a string or an array of strings"),
    };
    let req = match common(api, &m, inputs) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match state.runtime.embed(req).await {
        Ok(e) => axum::Json(json!({
            "model": e.model,
            "embeddings": e.vectors,
            "total_duration": ns(e.total),
            "load_duration": ns(e.load),
            "prompt_eval_count": e.prompt_tokens,
        }))
        .into_response(),
        Err(e) => api.runtime_error(e),
    }
}

/// Why an embedding `input` is refused; each message names the field (and the item) as both
/// APIs call it.
#[derive(Debug, PartialEq, thiserror::Error)]
enum InputError {
    #[error("input: missing")]
    Missing,
    #[error("input: an empty string")]
    EmptyString,
    #[error("input: an empty array")]
    EmptyArray,
    #[error("input: {len} items; at most {max} per request")]
    TooMany { len: usize, max: usize },
    #[error("input: item {index} is an empty string")]
    EmptyItem { index: usize },
    #[error("input: item {index} is not a string")]
    NotAString { index: usize },
    #[error("input: item {index} is not an array of token ids")]
    NotTokens { index: usize },
    #[error("input{}: an empty array of token ids", item_at(*.item))]
    NoTokens { item: Option<usize> },
    #[error("input{}: {value} is not a token id", item_at(*.item))]
    NotAToken { item: Option<usize>, value: String },
    #[error("input: must be a string, an array of strings or an array of token ids")]
    Shape,
}

/// " item 3" for an item of a list of token arrays, "" for the input itself.
fn item_at(item: Option<usize>) -> String {
    item.map(|i| format!(" item {i}")).unwrap_or_default()
}

/// Strings of an `input` array; an empty string in it is refused (it has nothing to embed).
fn strings(a: &[Value]) -> Result<Vec<EmbedInput>, InputError> {
    let max = crate::runtime::MAX_EMBED_INPUTS;
    if a.len() > max {
        return Err(InputError::TooMany { len: a.len(), max });
    }
    a.iter()
        .enumerate()
        .map(|(index, v)| match v {
            Value::String(s) if s.is_empty() => Err(InputError::EmptyItem { index }),
            Value::String(s) => Ok(EmbedInput::Text(s.clone())),
            _ => Err(InputError::NotAString { index }),
        })
        .collect()
}

/// Ollama's legacy route: `prompt` in, `{embedding}` out, not normalized (as Ollama answers
/// it); an empty prompt only loads the model.
async fn ollama_embeddings(State(state): State<AppState>, body: Bytes) -> Response {
    let api = Api::Ollama;
    let m = match object(api, &body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let inputs = match m.get("prompt") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) if s.is_empty() => vec![],
        Some(Value::String(s)) => vec![EmbedInput::Text(s.clone())],
        Some(_) => return api.error("prompt: must be a string"),
    };
    let mut req = match common(api, &m, inputs) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    req.normalize = false;
    match state.runtime.embed(req).await {
        Ok(mut e) => axum::Json(json!({ "embedding": e.vectors.pop().unwrap_or_default() })).into_response(),
        Err(e) => api.runtime_error(e),
    }
}

/// OpenAI: a string, an array of strings, an array of token ids or an array of such arrays.
fn openai_inputs(v: Option<&Value>) -> Result<Vec<EmbedInput>, InputError> {
    let tokens = |a: &[Value], item: Option<usize>| -> Result<EmbedInput, InputError> {
        if a.is_empty() {
            return Err(InputError::NoTokens { item });
        }
        a.iter()
            .map(|t| {
                t.as_i64()
                    .and_then(|t| i32::try_from(t).ok())
                    .ok_or_else(|| InputError::NotAToken { item, value: t.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(EmbedInput::Tokens)
    };
    let max = crate::runtime::MAX_EMBED_INPUTS;
    match v {
        None | Some(Value::Null) => Err(InputError::Missing),
        Some(Value::String(s)) if s.is_empty() => Err(InputError::EmptyString),
        Some(Value::String(s)) => Ok(vec![EmbedInput::Text(s.clone())]),
        Some(Value::Array(a)) if a.is_empty() => Err(InputError::EmptyArray),
        Some(Value::Array(a)) if a.len() > max => Err(InputError::TooMany { len: a.len(), max }),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) => strings(a),
            Value::Number(_) => Ok(vec![tokens(a, None)?]),
            Value::Array(_) => a
                .iter()
                .enumerate()
                .map(|(index, x)| match x {
                    Value::Array(t) => tokens(t, Some(index)),
                    _ => Err(InputError::NotTokens { index }),
                })
                .collect(),
            _ => Err(InputError::Shape),
        },
        Some(_) => Err(InputError::Shape),
    }
}

async fn openai_embeddings(State(state): State<AppState>, body: Bytes) -> Response {
    let api = Api::OpenAi;
    let m = match object(api, &body) {
        Ok(m) => m,
        Err(r) => return *r,
    };
    let base64 = match m.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "float" => false,
        Some(Value::String(s)) if s == "base64" => true,
        Some(_) => return api.error("encoding_format: must be \"float\" or \"base64\""),
    };
    let inputs = match openai_inputs(m.get("input")) {
        Ok(v) => v,
        Err(e) => return api.error(e),
    };
    let req = match common(api, &m, inputs) {
        Ok(r) => r,
        Err(r) => return *r,
    };
    match state.runtime.embed(req).await {
        Ok(e) => axum::Json(openai_answer(e, base64)).into_response(),
        Err(e) => api.runtime_error(e),
    }
}

fn openai_answer(e: Embeddings, base64: bool) -> Value {
    let data: Vec<Value> = e
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { json!(b64(v)) } else { json!(v) };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": e.model,
        "usage": { "prompt_tokens": e.prompt_tokens, "total_tokens": e.prompt_tokens },
    })
}

/// The floats' little-endian bytes in standard base64, as OpenAI sends `encoding_format: base64`.
fn b64(v: &[f32]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                s.push(A[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet() {
        assert_eq!(b64(&[]), "");
        // 1.0f32 = 00 00 80 3f
        assert_eq!(b64(&[1.0]), "AACAPw==");
        assert_eq!(b64(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(b64(&[1.0, -2.0, 0.5]), "AACAPwAAAMAAAAA/");
    }

    #[test]
    fn openai_input_forms() {
        let v = |j: Value| openai_inputs(Some(&j));
        assert_eq!(v(json!("a")).unwrap(), [EmbedInput::Text("a".into())]);
        assert_eq!(v(json!(["a", "b"])).unwrap().len(), 2);
        assert_eq!(v(json!([1, 2, 3])).unwrap(), [EmbedInput::Tokens(vec![1, 2, 3])]);
        assert_eq!(v(json!([[1], [2, 3]])).unwrap().len(), 2);
        for bad in [
            json!(""),
            json!([]),
            json!([""]),
            json!([[]]),
            json!(5),
            json!(["a", 1]),
            json!([1, "a"]),
            json!([[1], 2]),
            json!([1.5]),
            json!([1e12]),
            json!({}),
        ] {
            let e = v(bad.clone()).unwrap_err().to_string();
            assert!(e.starts_with("input"), "{bad}: {e}");
        }
        assert_eq!(openai_inputs(None).unwrap_err(), InputError::Missing);
        // the messages name the field and the item as before
        assert_eq!(v(json!([[1], [2, "x"]])).unwrap_err().to_string(), "input item 1: \"x\" is not a token id");
        assert_eq!(v(json!([1.5])).unwrap_err().to_string(), "input: 1.5 is not a token id");
        assert_eq!(v(json!([[]])).unwrap_err().to_string(), "input item 0: an empty array of token ids");
        let many = Value::Array(vec![json!("a"); crate::runtime::MAX_EMBED_INPUTS + 1]);
        assert!(matches!(v(many).unwrap_err(), InputError::TooMany { .. }));
    }
}
