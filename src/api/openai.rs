//! OpenAI's shapes: `/v1/models`, `/v1/chat/completions`, `/v1/completions`; SSE streams ending
//! with `data: [DONE]`; errors as `{"error": {"message", "type", ...}}`.

use super::errors::OpenAiError;
use super::sampling::{openai_defaults, positive, Options};
use super::util::{model, parse, unix_now, TextContent};
use super::{openai_stream, reply, tools, AppState};
use crate::chat::ChatMessage;
use crate::runtime::{Field, GenRequest, Input, RuntimeError};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model_info))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
}

pub(super) fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    OpenAiError::new(status, msg).into_response()
}

pub(super) fn runtime_error(e: RuntimeError) -> Response {
    OpenAiError::from(e).into_response()
}

async fn models(State(state): State<AppState>) -> Response {
    let names: Vec<String> = state.runtime.local_models().await.into_iter().map(|m| m.name).collect();
    let data: Vec<Value> =
        names.iter().map(|n| json!({ "id": n, "object": "model", "created": 0, "owned_by": "exo" })).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn model_info(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, OpenAiError> {
    let m = model(&id)?;
    let key = m.key();
    let found = state.runtime.local_models().await.into_iter().any(|l| l.name == id || l.name == key);
    if !found {
        return Err(OpenAiError::new(StatusCode::NOT_FOUND, format!("The model '{id}' does not exist")));
    }
    Ok(axum::Json(json!({ "id": id, "object": "model", "created": 0, "owned_by": "exo" })).into_response())
}

#[derive(Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<TextContent>,
    #[serde(default)]
    tool_calls: Vec<tools::CallIn>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Common {
    model: String,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<i64>,
    stop: Option<Stop>,
    frequency_penalty: Option<f32>,
    /// Token id (as a string) to a bias in [-100, 100].
    logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    n: Option<i64>,
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
    /// Reasoning models: "none"/"minimal" turn reasoning off, other levels on.
    reasoning_effort: Option<String>,
}

#[derive(Deserialize)]
struct ChatReq {
    messages: Vec<Message>,
    #[serde(flatten)]
    common: Common,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct CompletionReq {
    prompt: Prompt,
    #[serde(flatten)]
    common: Common,
}

fn request(c: &Common, input: Input) -> Result<GenRequest, RuntimeError> {
    if c.logprobs.as_ref().is_some_and(|l| l != &Value::Bool(false) && !l.is_null())
        || c.top_logprobs.as_ref().is_some_and(|v| !v.is_null())
    {
        return Err(RuntimeError::field(Field::Logprobs, "logprobs are not supported by this server yet"));
    }
    let max_tokens = positive(c.max_completion_tokens.or(c.max_tokens))?;
    let mut logit_bias = Vec::new();
    for (k, v) in c.logit_bias.iter().flatten() {
        let t =
            k.parse::<i32>().map_err(|_| RuntimeError::field(Field::LogitBias, format!("{k:?} is not a token id")))?;
        logit_bias.push((t, *v));
    }
    let options = Options {
        temperature: c.temperature,
        top_p: c.top_p,
        repeat_penalty: Some(1.0 + c.frequency_penalty.unwrap_or(0.0).max(0.0)),
        seed: c.seed.map(|s| s as u32),
        logit_bias,
        stop: match &c.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        max_tokens,
        ..Options::default()
    };
    let mut r = options.request(model(&c.model)?, input, openai_defaults());
    r.tools = tools::function_tools(c.tools.as_ref())?;
    r.tool_choice = tools::openai_choice(c.tool_choice.as_ref())?;
    r.format = tools::openai_format(c.response_format.as_ref())?;
    r.think = match c.reasoning_effort.as_deref() {
        None => None,
        Some("none" | "minimal") => Some(false),
        Some("low" | "medium" | "high") => Some(true),
        Some(o) => {
            return Err(RuntimeError::field(
                Field::Think,
                format!("reasoning_effort {o:?} is not one of none, minimal, low, medium, high"),
            ))
        }
    };
    Ok(r)
}

/// Most choices one request may ask for (`n`, times the prompts of a completion).
pub const MAX_CHOICES: usize = 16;

/// Starts one generation per input (`n` times each, seeds apart) and answers with their choices.
async fn serve(state: AppState, c: Common, inputs: Vec<Input>, chat: bool) -> Result<Response, OpenAiError> {
    let n = match c.n.unwrap_or(1) {
        n if n >= 1 && (n as usize).saturating_mul(inputs.len()) <= MAX_CHOICES => n as usize,
        n => {
            return Err(RuntimeError::field(
                Field::N,
                format!("{n} choices for {} prompt(s); 1 to {MAX_CHOICES} choices in all", inputs.len()),
            )
            .into())
        }
    };
    let mut reqs = Vec::new();
    for input in &inputs {
        let base = request(&c, input.clone())?;
        for k in 0..n {
            let mut r = base.clone();
            // the n choices share one request's token budget
            r.shares = n as u32;
            r.sampling.seed = base.sampling.seed.wrapping_add(k as u32);
            reqs.push(r);
        }
    }
    let mut gens = Vec::new();
    for r in reqs {
        gens.push(state.runtime.generate(r).await?);
    }
    let head = openai_stream::Head {
        id: format!("{}-{:x}", if chat { "chatcmpl" } else { "cmpl" }, super::util::random_seed()),
        created: unix_now(),
        model: c.model.clone(),
        chat,
        n,
        count: gens.len(),
        include_usage: c.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    if c.stream {
        Ok(reply::stream(head, gens))
    } else {
        reply::collect(head, gens).await
    }
}

fn message(m: Message) -> Result<ChatMessage, OpenAiError> {
    let content = m.content.map(TextContent::text).transpose().map_err(OpenAiError::bad)?.unwrap_or_default();
    let role = if m.role == "developer" { "system".to_string() } else { m.role };
    let mut out = ChatMessage::new(role, content);
    out.tool_calls = tools::calls_in(m.tool_calls)?;
    out.tool_call_id = m.tool_call_id;
    out.name = m.name;
    Ok(out)
}

async fn chat(State(state): State<AppState>, body: Bytes) -> Result<Response, OpenAiError> {
    let r: ChatReq = parse(&body).map_err(OpenAiError::bad)?;
    if r.messages.is_empty() {
        return Err(OpenAiError::bad("messages: must not be empty"));
    }
    let messages = r.messages.into_iter().map(message).collect::<Result<Vec<_>, _>>()?;
    serve(state, r.common, vec![Input::Messages(messages)], true).await
}

async fn completions(State(state): State<AppState>, body: Bytes) -> Result<Response, OpenAiError> {
    let r: CompletionReq = parse(&body).map_err(OpenAiError::bad)?;
    let prompts = match r.prompt {
        Prompt::One(p) => vec![p],
        Prompt::Many(v) if v.is_empty() => return Err(OpenAiError::bad("prompt: must not be empty")),
        Prompt::Many(v) => v,
    };
    if prompts.len() > MAX_CHOICES {
        return Err(OpenAiError::bad(format!("prompt: {} prompts; at most {MAX_CHOICES}", prompts.len())));
    }
    if r.common.tools.is_some() {
        return Err(OpenAiError::bad("tools: only chat completions take tools"));
    }
    serve(state, r.common, prompts.into_iter().map(Input::Raw).collect(), false).await
}
