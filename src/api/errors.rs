//! One error type per API, answered in that API's shape, so handlers return it with `?`:
//! [`OllamaError`] (`{"error": "..."}`), [`OpenAiError`] (`{"error": {"message", "type", ...}}`)
//! and [`AnthropicError`] (`{"type": "error", "error": {"type", "message"}}`). Runtime errors take
//! their status from [`super::status`] and name fields as the API does.

use crate::runtime::{Field, RuntimeError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::marker::PhantomData;

/// How one API writes an error.
pub trait Shape {
    fn body(status: StatusCode, message: &str) -> Value;
    /// A request field as this API names it.
    fn field(f: Field) -> String;
}

/// An error in the shape of `S`.
#[derive(Debug)]
pub struct ApiError<S> {
    status: StatusCode,
    message: String,
    shape: PhantomData<S>,
}

impl<S: Shape> ApiError<S> {
    pub fn new(status: StatusCode, message: impl std::fmt::Display) -> Self {
        ApiError { status, message: message.to_string(), shape: PhantomData }
    }

    /// The request is malformed (400).
    pub fn bad(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A generation's events stopped before its end.
    pub fn ended() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "generation ended without a result")
    }
}

impl<S: Shape> From<RuntimeError> for ApiError<S> {
    fn from(e: RuntimeError) -> Self {
        Self::new(super::status(&e), e.message_with(S::field))
    }
}

impl<S: Shape> IntoResponse for ApiError<S> {
    fn into_response(self) -> Response {
        (self.status, axum::Json(S::body(self.status, &self.message))).into_response()
    }
}

pub struct Ollama;
pub struct OpenAi;
pub struct Anthropic;

pub type OllamaError = ApiError<Ollama>;
pub type OpenAiError = ApiError<OpenAi>;
pub type AnthropicError = ApiError<Anthropic>;

impl Shape for Ollama {
    fn body(_: StatusCode, message: &str) -> Value {
        json!({ "error": message })
    }
    fn field(f: Field) -> String {
        f.ollama()
    }
}

impl Shape for OpenAi {
    fn body(status: StatusCode, message: &str) -> Value {
        let kind = match status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "server_busy",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
    }
    fn field(f: Field) -> String {
        f.openai().to_string()
    }
}

impl Shape for Anthropic {
    fn body(status: StatusCode, message: &str) -> Value {
        let kind = match status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "api_error",
        };
        json!({ "type": "error", "error": { "type": kind, "message": message } })
    }
    // Anthropic's fields carry OpenAI's names (max_tokens, temperature, top_p, tools, ...)
    fn field(f: Field) -> String {
        f.openai().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(r: Response) -> (StatusCode, Value) {
        let s = r.status();
        let b = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap_or_default();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn each_api_keeps_its_shape_and_the_runtime_status() {
        let e = || RuntimeError::field(Field::MaxTokens, "must be positive");
        let (s, v) = body(OllamaError::from(e()).into_response()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v, json!({ "error": format!("{}: must be positive", Field::MaxTokens.ollama()) }));
        let (s, v) = body(OpenAiError::from(e()).into_response()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "max_tokens: must be positive");
        assert!(v["error"]["param"].is_null() && v["error"]["code"].is_null());
        let (s, v) = body(AnthropicError::new(StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v, json!({ "type": "error", "error": { "type": "overloaded_error", "message": "busy" } }));
        let (s, v) = body(OpenAiError::ended().into_response()).await;
        assert_eq!((s, &v["error"]["type"]), (StatusCode::INTERNAL_SERVER_ERROR, &json!("server_error")));
    }
}
