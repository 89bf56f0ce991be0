//! Ollama's API at the root: NDJSON streaming by default, durations in nanoseconds, errors as
//! `{"error": "..."}`.

use super::errors::OllamaError;
use super::ollama_chat::{extras, message, no_images, Extras, MessageIn};
use super::ollama_stream::ndjson;
use super::util::{keep_alive, model, parse, rfc3339, stream_body, RequestError};
use super::{ollama_stream, reply, sampling, AppState};
use crate::chat::ChatMessage;
use crate::engine::SamplingParams;
use crate::gguf::{ModelFiles, ModelShape};
use crate::runtime::{Input, KeepAlive, LoadOptions, ModelRef, RuntimeError};
use crate::store::{LocalModel, PullProgress};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(root).head(root))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/ps", get(ps))
        .route("/api/pull", post(pull))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/api/delete", delete(remove))
}

pub fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    OllamaError::new(status, msg).into_response()
}

/// A runtime error in Ollama's shape, fields named as Ollama names them.
pub fn runtime_error(e: RuntimeError) -> Response {
    OllamaError::from(e).into_response()
}

async fn root() -> &'static str {
    "exo is running"
}

async fn version() -> Response {
    axum::Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Options {
    temperature: Option<f32>,
    top_k: Option<i32>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    stop: Option<Vec<String>>,
    num_ctx: Option<u32>,
    repeat_penalty: Option<f32>,
    repeat_last_n: Option<i32>,
}

/// `options` must be an object (`"options": []` is refused, naming the field).
fn options<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Options, D::Error> {
    super::util::object(d).map_err(|e: D::Error| serde::de::Error::custom(format!("options: {e}")))
}

/// Ollama's options as sampling options (a negative seed asks for a random one).
fn sampling_options(o: &Options) -> Result<sampling::Options, RuntimeError> {
    let max_tokens = match o.num_predict {
        None | Some(-1) | Some(-2) => None,
        Some(n) if n > 0 => Some(n as u64),
        Some(n) => {
            return Err(RuntimeError::field(
                crate::runtime::Field::MaxTokens,
                format!("{n} is invalid: use a positive count, -1 (no limit) or -2 (fill the context)"),
            ))
        }
    };
    Ok(sampling::Options {
        temperature: o.temperature,
        top_k: o.top_k,
        top_p: o.top_p,
        min_p: o.min_p,
        repeat_penalty: o.repeat_penalty,
        repeat_last_n: o.repeat_last_n,
        seed: o.seed.filter(|s| *s >= 0).map(|s| s as u32),
        stop: o.stop.clone().unwrap_or_default(),
        max_tokens,
        ..sampling::Options::default()
    })
}

#[derive(Deserialize)]
struct GenerateReq {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    #[serde(default, deserialize_with = "options")]
    options: Options,
    keep_alive: Option<Value>,
    format: Option<Value>,
    think: Option<Value>,
    images: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct ChatReq {
    model: String,
    #[serde(default)]
    messages: Vec<MessageIn>,
    stream: Option<bool>,
    #[serde(default, deserialize_with = "options")]
    options: Options,
    keep_alive: Option<Value>,
    tools: Option<Value>,
    format: Option<Value>,
    think: Option<Value>,
}

/// How a chat or generate request wants its answer, besides the prompt.
struct Ask {
    stream: bool,
    options: Options,
    keep_alive: Option<Value>,
    extras: Extras,
}

/// Answers a generate or (`chat`) chat request; without input, loads or unloads the model.
async fn run(
    state: AppState,
    chat: bool,
    name: String,
    input: Option<Input>,
    ask: Ask,
) -> Result<Response, OllamaError> {
    let Ask { stream, options, keep_alive: ka, extras: ex } = ask;
    let m = model(&name)?;
    let ka = ka.as_ref().map(keep_alive).transpose()?;
    let sampling = sampling_options(&options)?;
    let rt = &state.runtime;
    let Some(input) = input else {
        // no prompt: load (or, with keep_alive 0, unload) and report it
        let unload = ka == Some(KeepAlive::For(std::time::Duration::ZERO));
        if unload {
            rt.unload(&m);
        } else {
            let (i, _) = rt.instance(&m, LoadOptions { num_ctx: options.num_ctx, ..LoadOptions::default() }).await?;
            if let Some(k) = ka {
                i.set_keep_alive(k);
            }
        }
        let mut v = json!({ "model": name, "created_at": rfc3339(SystemTime::now()), "done": true, "done_reason": if unload { "unload" } else { "load" } });
        if chat {
            v["message"] = json!({ "role": "assistant", "content": "" });
        } else {
            v["response"] = json!("");
        }
        return Ok(axum::Json(v).into_response());
    };
    let mut req = sampling.request(m, input, SamplingParams::default());
    req.num_ctx = options.num_ctx;
    req.keep_alive = ka;
    req.tools = ex.tools;
    req.format = ex.format;
    req.think = ex.think;
    let gen = rt.generate(req).await?;
    let enc = ollama_stream::Reply { model: name, chat };
    if stream {
        Ok(reply::stream(enc, vec![gen]))
    } else {
        reply::collect(enc, vec![gen]).await
    }
}

async fn generate(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let r: GenerateReq = parse(&body).map_err(OllamaError::bad)?;
    no_images(&r.images)?;
    let ex = extras(None, r.format.as_ref(), r.think.as_ref())?;
    let input = if r.prompt.is_empty() {
        None
    } else if r.raw {
        Some(Input::Raw(r.prompt))
    } else {
        let mut m = Vec::new();
        if let Some(s) = r.system {
            m.push(ChatMessage::new("system", s));
        }
        m.push(ChatMessage::new("user", r.prompt));
        Some(Input::Messages(m))
    };
    let ask = Ask { stream: r.stream.unwrap_or(true), options: r.options, keep_alive: r.keep_alive, extras: ex };
    run(state, false, r.model, input, ask).await
}

async fn chat(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let r: ChatReq = parse(&body).map_err(OllamaError::bad)?;
    let ex = extras(r.tools.as_ref(), r.format.as_ref(), r.think.as_ref())?;
    let messages = r.messages.into_iter().map(message).collect::<Result<Vec<_>, _>>()?;
    let input = (!messages.is_empty()).then_some(Input::Messages(messages));
    let ask = Ask { stream: r.stream.unwrap_or(true), options: r.options, keep_alive: r.keep_alive, extras: ex };
    run(state, true, r.model, input, ask).await
}

fn param_size(n: u64) -> String {
    match n {
        1_000_000_000.. => format!("{:.1}B", n as f64 / 1e9),
        1_000_000.. => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}K", n as f64 / 1e3),
    }
}

fn digest(m: &LocalModel) -> String {
    path_digest(m.first(), m.size)
}

fn path_digest(path: &std::path::Path, size: u64) -> String {
    // cheap identity (path, size, mtime); hashing gigabytes per listing would be too slow
    let mtime = std::fs::metadata(path).and_then(|x| x.modified()).ok();
    let key = format!("{}|{size}|{mtime:?}", path.display());
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

fn details(shape: Option<&ModelShape>, quant: Option<&str>) -> Value {
    let arch = shape.map(|s| s.architecture.clone()).unwrap_or_default();
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": shape.map(|s| param_size(s.n_params)).unwrap_or_default(),
        "quantization_level": quant.map(|q| q.to_ascii_uppercase()).unwrap_or_default(),
    })
}

/// Names as Ollama lists them: with a tag (`:latest` when the name has none).
fn tagged(name: &str) -> String {
    if name.rsplit('/').next().is_some_and(|last| last.contains(':')) {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn shape_of(m: &LocalModel) -> Option<ModelShape> {
    ModelShape::from_files(&ModelFiles::open(m.first()).ok()?).ok()
}

async fn tags(State(state): State<AppState>) -> Response {
    let locals = state.runtime.local_models().await;
    let models = tokio::task::spawn_blocking(move || {
        locals
            .iter()
            .map(|m| {
                let modified = std::fs::metadata(m.first()).and_then(|x| x.modified()).unwrap_or(SystemTime::now());
                let name = tagged(&m.name);
                json!({
                    "name": name,
                    "model": name,
                    "modified_at": rfc3339(modified),
                    "size": m.size,
                    "digest": digest(m),
                    "details": details(shape_of(m).as_ref(), m.quant.as_deref()),
                })
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    axum::Json(json!({ "models": models })).into_response()
}

#[derive(Deserialize)]
struct NameReq {
    model: Option<String>,
    name: Option<String>,
}

impl NameReq {
    fn get(self) -> Result<String, RequestError> {
        self.model.or(self.name).filter(|s| !s.is_empty()).ok_or(RequestError::MissingField { field: "model" })
    }
}

/// The model a name-only request (show, pull, delete) is about: a name, never a path.
fn name_req(body: &Bytes) -> Result<ModelRef, OllamaError> {
    let name = parse::<NameReq>(body).and_then(NameReq::get).map_err(OllamaError::bad)?;
    Ok(model(&name)?)
}

async fn show(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let (m, shape) = state.runtime.show(&name_req(&body)?).await?;
    let a = &shape.architecture;
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!(a));
    info.insert("general.parameter_count".into(), json!(shape.n_params));
    info.insert(format!("{a}.context_length"), json!(shape.context_length));
    info.insert(format!("{a}.embedding_length"), json!(shape.n_embd));
    info.insert(format!("{a}.block_count"), json!(shape.n_layer));
    info.insert(format!("{a}.attention.head_count"), json!(shape.n_head));
    info.insert(format!("{a}.attention.head_count_kv"), json!(shape.n_head_kv));
    info.insert(format!("{a}.vocab_size"), json!(shape.vocab_size));
    let modified = std::fs::metadata(m.first()).and_then(|x| x.modified()).unwrap_or(SystemTime::now());
    Ok(axum::Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": shape.chat_template.clone().unwrap_or_default(),
        "details": details(Some(&shape), m.quant.as_deref()),
        "model_info": info,
        "capabilities": crate::runtime::capabilities(shape.chat_template.as_deref()),
        "modified_at": rfc3339(modified),
    }))
    .into_response())
}

async fn ps(State(state): State<AppState>) -> Response {
    let mut models: Vec<Value> = state
        .runtime
        .instances()
        .iter()
        .map(|i| {
            let l = &i.loaded;
            json!({
                "name": tagged(&l.name),
                "model": tagged(&l.name),
                "size": l.size,
                "digest": path_digest(&l.path, l.size),
                "details": details(Some(&l.shape), l.quant.as_deref()),
                "expires_at": i.expires_at().map(rfc3339).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                "size_vram": 0,
                "context_length": l.n_ctx,
                "exo_speculation": i.speculation(),
            })
        })
        .collect();
    // stages this node runs for other nodes' instances: loaded here too
    for h in state.runtime.cluster().map(|c| c.hosted()).unwrap_or_default() {
        models.push(json!({
            "name": h.model,
            "model": h.model,
            "size": 0,
            "digest": "",
            "details": details(None, None),
            "expires_at": "0001-01-01T00:00:00Z",
            "size_vram": 0,
            "exo_hosted_stage": { "begin": h.begin, "end": h.end, "coordinator": h.coordinator, "instance": h.instance },
        }));
    }
    axum::Json(json!({ "models": models })).into_response()
}

/// Pull progress as Ollama's NDJSON status lines.
struct NdjsonProgress {
    tx: mpsc::UnboundedSender<Value>,
    cur: Mutex<(String, u64, u64, Instant)>,
}

impl PullProgress for NdjsonProgress {
    fn file_started(&self, file: &str, size: u64) {
        *self.cur.lock().unwrap() = (file.to_string(), size, 0, Instant::now());
        let _ =
            self.tx.send(json!({ "status": format!("pulling {file}"), "digest": file, "total": size, "completed": 0 }));
    }
    fn advanced(&self, n: u64) {
        let mut c = self.cur.lock().unwrap();
        c.2 += n;
        if c.3.elapsed().as_millis() >= 250 || c.2 >= c.1 {
            c.3 = Instant::now();
            let _ = self
                .tx
                .send(json!({ "status": format!("pulling {}", c.0), "digest": c.0, "total": c.1, "completed": c.2 }));
        }
    }
    fn file_done(&self, _: &str) {}
    fn note(&self, msg: &str) {
        let status = if msg.starts_with("verifying") { "verifying sha256 digest".to_string() } else { msg.to_string() };
        let _ = self.tx.send(json!({ "status": status }));
    }
}

#[derive(Deserialize)]
struct PullReq {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
}

async fn pull(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let r: PullReq = parse(&body).map_err(OllamaError::bad)?;
    let stream = r.stream.unwrap_or(true);
    let Some(name) = r.model.or(r.name).filter(|s| !s.is_empty()) else {
        return Err(OllamaError::bad(RequestError::MissingField { field: "model" }));
    };
    let m = model(&name)?;
    let (ptx, mut prx) = mpsc::unbounded_channel();
    let progress = Arc::new(NdjsonProgress { tx: ptx.clone(), cur: Mutex::new((String::new(), 0, 0, Instant::now())) });
    let _ = ptx.send(json!({ "status": "pulling manifest" }));
    let rt = state.runtime.clone();
    let job = tokio::spawn(async move { rt.pull(&m, progress).await });
    if !stream {
        return match job.await {
            Ok(Ok(_)) => Ok(axum::Json(json!({ "status": "success" })).into_response()),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(OllamaError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
    }
    let (tx, rx) = mpsc::channel::<String>(32);
    tokio::spawn(async move {
        drop(ptx);
        while let Some(v) = prx.recv().await {
            if tx.send(format!("{v}\n")).await.is_err() {
                return;
            }
        }
        let last = match job.await {
            Ok(Ok(_)) => json!({ "status": "success" }),
            Ok(Err(e)) => json!({ "error": e.message_with(|f| f.ollama()) }),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let _ = tx.send(format!("{last}\n")).await;
    });
    Ok(ndjson(stream_body(rx)))
}

async fn remove(State(state): State<AppState>, body: Bytes) -> Result<Response, OllamaError> {
    let gone = state.runtime.delete(&name_req(&body)?).await?;
    // what was deleted, relative to its models dir (Ollama answers an empty 200; clients look at
    // the status only)
    let files: Vec<String> =
        gone.paths.iter().map(|p| state.runtime.store().relative(p).to_string_lossy().into_owned()).collect();
    Ok(axum::Json(json!({ "status": "success", "deleted": files })).into_response())
}
