//! What a caller asks the runtime for, and what it gets back: one generation request every API
//! and the CLI translate into, and its event stream.

use super::error::{Field, RuntimeError};
use crate::chat::ChatMessage;
use crate::chat::{OutputFormat, Tool, ToolCall, ToolChoice};
use crate::engine::SamplingParams;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// A model as a caller names it. HTTP callers give names only ([`ModelRef::name`]); paths are
/// the CLI's ([`ModelRef::cli`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelRef {
    /// Looked up in the models dirs, the caches and the catalog; never as a file path.
    Name(String),
    /// A GGUF file given on the command line.
    Path(PathBuf),
}

/// Longest model name accepted.
pub const MAX_NAME: usize = 256;

impl ModelRef {
    /// A model name from an untrusted caller: refused when it could only be a path.
    pub fn name(name: &str) -> Result<ModelRef, RuntimeError> {
        let bad = |reason: &str| Err(RuntimeError::InvalidName { name: name.to_string(), reason: reason.into() });
        if name.is_empty() {
            return Err(RuntimeError::field(Field::Model, "missing model name"));
        }
        if name.len() > MAX_NAME {
            return bad(&format!("longer than {MAX_NAME} bytes"));
        }
        if name.chars().any(|c| c.is_control()) {
            return bad("contains control characters");
        }
        if name.starts_with('/') || name.starts_with('~') || name.contains('\\') || name.contains(":/") {
            return bad("model names are names, not paths");
        }
        if name.split('/').any(|p| p == ".." || p == ".") || name.ends_with(".gguf") {
            return bad("model names are names, not paths");
        }
        Ok(ModelRef::Name(name.to_string()))
    }

    /// A model from the command line: an existing file is a path, anything else a name.
    pub fn cli(arg: &str) -> ModelRef {
        let p = std::path::Path::new(arg);
        if p.is_file() {
            ModelRef::Path(p.to_path_buf())
        } else {
            ModelRef::Name(arg.to_string())
        }
    }

    /// The instance key: Ollama clients add `:latest` to bare names.
    pub fn key(&self) -> String {
        match self {
            ModelRef::Name(n) => n.strip_suffix(":latest").unwrap_or(n).to_string(),
            ModelRef::Path(p) => std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()).display().to_string(),
        }
    }

    pub fn display(&self) -> String {
        match self {
            ModelRef::Name(n) => n.clone(),
            ModelRef::Path(p) => p.display().to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub enum Input {
    /// Formatted with the model's chat template.
    Messages(Vec<ChatMessage>),
    /// Sent as is (OpenAI completions, Ollama `raw`, `exo run --raw`).
    Raw(String),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeepAlive {
    For(Duration),
    Forever,
}

/// The longest keep_alive a caller may ask for (longer: ask for forever).
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(10 * 365 * 86_400);

impl KeepAlive {
    /// Seconds as Ollama gives them: negative means forever; bounded before any conversion.
    pub fn from_secs(secs: f64) -> Result<KeepAlive, RuntimeError> {
        if secs.is_nan() {
            return Err(RuntimeError::field(Field::KeepAlive, "not a number"));
        }
        if secs < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        if secs > MAX_KEEP_ALIVE.as_secs_f64() {
            return Err(RuntimeError::field(
                Field::KeepAlive,
                format!("{secs} s is more than the 10 years allowed; use -1 to keep the model loaded"),
            ));
        }
        Ok(KeepAlive::For(Duration::from_secs_f64(secs)))
    }
}

#[derive(Clone, Debug)]
pub struct GenRequest {
    pub model: ModelRef,
    pub input: Input,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// None: until the model stops, the context is full or the server's cap is reached.
    pub max_tokens: Option<u64>,
    /// Tokens of context per sequence (None: the runtime's default).
    pub num_ctx: Option<u32>,
    /// How long the instance stays loaded after this request (None: the default).
    pub keep_alive: Option<KeepAlive>,
    /// Keep generating past end-of-generation tokens (benchmarks, `exo run --ignore-eos`).
    pub ignore_eos: bool,
    /// Functions the model may call (chat input only).
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// Structured output: the text must be JSON (of a schema).
    pub format: Option<OutputFormat>,
    /// Reasoning on or off for templates that support it (None: the template's default).
    pub think: Option<bool>,
    /// Generations this one shares its request's token budget with (OpenAI's `n`): each gets
    /// 1/`shares` of the server's cap (the context when there is none), so `n` multiplies no
    /// cost.
    pub shares: u32,
}

impl GenRequest {
    pub fn new(model: ModelRef, input: Input, sampling: SamplingParams) -> GenRequest {
        GenRequest {
            model,
            input,
            sampling,
            stop: Vec::new(),
            max_tokens: None,
            num_ctx: None,
            keep_alive: None,
            ignore_eos: false,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            format: None,
            think: None,
            shares: 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model ended (end-of-generation token).
    Stop,
    /// A stop sequence matched.
    StopSequence,
    /// max_tokens, the server's cap, or the context is full.
    Length,
    /// The model called tools ([`Event::Done`]'s `tool_calls`).
    ToolCalls,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Prompt tokens found in the sequence's cache and not decoded again.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
    pub load: Duration,
    pub prompt_eval: Duration,
    pub eval: Duration,
    pub total: Duration,
}

#[derive(Clone, Debug)]
pub enum Event {
    Text(String),
    /// Reasoning, apart from the answer (a reasoning model asked to think).
    Thinking(String),
    Done {
        finish: Finish,
        stop_sequence: Option<String>,
        stats: Stats,
        /// Calls parsed from the output when the request offered tools (the text events then
        /// carry only what the model said besides them).
        tool_calls: Vec<ToolCall>,
    },
    /// Failed after the response had started.
    Failed(RuntimeError),
}

/// A started generation: checked and admitted (errors before this point are answered as
/// statuses). Dropping `events` cancels it.
pub struct Generation {
    pub model: String,
    pub prompt_tokens: usize,
    pub events: mpsc::Receiver<Event>,
}
