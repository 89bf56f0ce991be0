//! The runtime's one error type. Every API maps it once (to its status and error shape); the CLI
//! prints it.

/// A request field a validation error is about. Each API names fields its own way
/// ([`Field::ollama`], [`Field::openai`]); the generic name is the CLI's and the runtime's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Model,
    Prompt,
    Temperature,
    TopK,
    TopP,
    MinP,
    RepeatPenalty,
    RepeatLastN,
    MaxTokens,
    NumCtx,
    KeepAlive,
    Stop,
    LogitBias,
    Messages,
    Tools,
    ToolChoice,
    Format,
    Think,
    N,
    Logprobs,
    Images,
    /// Embeddings: the texts or token ids to embed.
    Input,
    /// Embeddings: how many components to keep.
    Dimensions,
}

impl Field {
    pub fn generic(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Prompt => "prompt",
            Field::Temperature => "temperature",
            Field::TopK => "top_k",
            Field::TopP => "top_p",
            Field::MinP => "min_p",
            Field::RepeatPenalty => "repeat_penalty",
            Field::RepeatLastN => "repeat_last_n",
            Field::MaxTokens => "max_tokens",
            Field::NumCtx => "num_ctx",
            Field::KeepAlive => "keep_alive",
            Field::Stop => "stop",
            Field::LogitBias => "logit_bias",
            Field::Messages => "messages",
            Field::Tools => "tools",
            Field::ToolChoice => "tool_choice",
            Field::Format => "format",
            Field::Think => "think",
            Field::N => "n",
            Field::Logprobs => "logprobs",
            Field::Images => "images",
            Field::Input => "input",
            Field::Dimensions => "dimensions",
        }
    }

    /// As Ollama's API names it (sampling settings live under `options`).
    pub fn ollama(self) -> String {
        match self {
            Field::Model
            | Field::Prompt
            | Field::KeepAlive
            | Field::Messages
            | Field::Tools
            | Field::ToolChoice
            | Field::Format
            | Field::Think
            | Field::N
            | Field::Logprobs
            | Field::Images
            | Field::Input
            | Field::Dimensions => self.generic().to_string(),
            Field::MaxTokens => "options.num_predict".into(),
            f => format!("options.{}", f.generic()),
        }
    }

    /// As OpenAI's and Anthropic's APIs name it.
    pub fn openai(self) -> &'static str {
        match self {
            Field::RepeatPenalty => "frequency_penalty",
            Field::Format => "response_format",
            Field::Think => "reasoning_effort",
            f => f.generic(),
        }
    }
}

/// How an error is answered: each API turns this into its status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong (400).
    Invalid,
    /// No such model or instance (404).
    NotFound,
    /// Not allowed (403).
    Forbidden,
    /// Try again later: queue full, not enough memory right now, shutting down (503).
    Unavailable,
    /// Our fault or a failed node (500).
    Internal,
    /// The model hub failed or sent something wrong (502).
    Upstream,
    /// No disk space for a download (507).
    NoSpace,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{}: {reason}", field.generic())]
    InvalidField { field: Field, reason: String },
    #[error("invalid model name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("model {name:?} not found{hint}; try pulling it first")]
    ModelNotFound { name: String, hint: String },
    #[error("the prompt has {prompt} tokens but the context holds {n_ctx}; shorten it or raise num_ctx")]
    PromptTooLong { prompt: usize, n_ctx: u32 },
    #[error("the prompt has at least {at_least} tokens (counted before tokenizing it all) but the context holds {n_ctx}; shorten it or raise num_ctx")]
    PromptAtLeast { at_least: usize, n_ctx: u32 },
    #[error("{model} is serving {active} requests and {waiting} more are waiting; try again shortly")]
    Busy { model: String, active: usize, waiting: usize },
    #[error("{model} does not fit: {reason}")]
    DoesNotFit { model: String, reason: String },
    #[error("cannot delete {name:?}: {reason}")]
    NotDeletable { name: String, reason: String },
    #[error("this node is not part of a cluster")]
    NoCluster,
    #[error("invalid placement: {reason}")]
    BadPlacement { reason: String },
    #[error("cannot load {model}: {reason}")]
    Load { model: String, reason: String },
    /// A node the placement chose could not be reached or failed while loading (it died or
    /// left just now): a placement over the nodes there are a moment later may well work.
    #[error("cannot load {model}: {reason}")]
    NodeLost { model: String, node: String, reason: String },
    #[error("{reason}")]
    Store { kind: ErrorKind, reason: String },
    #[error("generation failed: {reason}")]
    Failed { reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
}

impl RuntimeError {
    pub fn field(field: Field, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidField { field, reason: reason.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            RuntimeError::InvalidField { .. }
            | RuntimeError::InvalidName { .. }
            | RuntimeError::PromptTooLong { .. }
            | RuntimeError::PromptAtLeast { .. }
            | RuntimeError::NoCluster
            | RuntimeError::BadPlacement { .. } => ErrorKind::Invalid,
            RuntimeError::ModelNotFound { .. } => ErrorKind::NotFound,
            RuntimeError::NotDeletable { .. } => ErrorKind::Forbidden,
            RuntimeError::Busy { .. }
            | RuntimeError::DoesNotFit { .. }
            | RuntimeError::NodeLost { .. }
            | RuntimeError::ShuttingDown => ErrorKind::Unavailable,
            RuntimeError::Store { kind, .. } => *kind,
            RuntimeError::Load { .. } | RuntimeError::Failed { .. } => ErrorKind::Internal,
        }
    }

    /// The message with the field named as `name` calls it (each API's own field names), and
    /// files named by their file name only: what clients read never shows this machine's dirs.
    pub fn message_with(&self, name: impl Fn(Field) -> String) -> String {
        let m = match self {
            RuntimeError::InvalidField { field, reason } => format!("{}: {reason}", name(*field)),
            other => other.to_string(),
        };
        file_names_only(&m)
    }
}

/// `text` with every absolute path of this machine (one whose parent dir exists) cut to its file
/// name; routes such as `/api/chat` are no paths here and stay.
pub fn file_names_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('/') {
        let starts_word = rest[..i].chars().next_back().is_none_or(|c| c.is_whitespace() || "\"'(=[`".contains(c));
        let len = rest[i..].find(|c: char| c.is_whitespace() || "\"'`),;".contains(c)).unwrap_or(rest.len() - i);
        // a trailing colon or period ends a sentence or a clause, not the path
        let path = rest[i..i + len].trim_end_matches([':', '.']);
        let p = std::path::Path::new(path);
        let ours = starts_word && path.matches('/').count() >= 2 && p.parent().is_some_and(|d| d.is_dir());
        match p.file_name().filter(|_| ours) {
            Some(name) => {
                out.push_str(&rest[..i]);
                out.push_str(&name.to_string_lossy());
                rest = &rest[i + path.len()..];
            }
            None => {
                out.push_str(&rest[..=i]);
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

impl From<crate::store::StoreError> for RuntimeError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        match e {
            S::NotFound { name, hint } => RuntimeError::ModelNotFound { name, hint },
            S::NotOurs { ref name, .. } => RuntimeError::NotDeletable { name: name.clone(), reason: e.to_string() },
            S::NotDownloadable { .. } | S::BadHubFile { .. } => {
                RuntimeError::Store { kind: ErrorKind::NotFound, reason: e.to_string() }
            }
            S::Offline { .. } => RuntimeError::Store { kind: ErrorKind::Unavailable, reason: e.to_string() },
            S::NoSpace { .. } | S::OverBudget { .. } => {
                RuntimeError::Store { kind: ErrorKind::NoSpace, reason: e.to_string() }
            }
            S::Hub { .. } | S::Corrupt { .. } => {
                RuntimeError::Store { kind: ErrorKind::Upstream, reason: e.to_string() }
            }
            other => RuntimeError::Store { kind: ErrorKind::Internal, reason: other.to_string() },
        }
    }
}

impl From<crate::pipeline::PipelineError> for RuntimeError {
    fn from(e: crate::pipeline::PipelineError) -> Self {
        use crate::engine::EngineError as E;
        use crate::pipeline::PipelineError as P;
        match e {
            P::PromptTooLong { prompt, n_ctx } => RuntimeError::PromptTooLong { prompt, n_ctx },
            // a grammar llama.cpp cannot use comes from the request's schema or tools
            P::Engine(E::Grammar { reason }) => {
                RuntimeError::field(Field::Format, format!("the schema's grammar cannot be used: {reason}"))
            }
            P::Engine(E::GrammarFault(f)) => RuntimeError::field(Field::Format, f.to_string()),
            P::Engine(E::Template { reason }) => RuntimeError::field(Field::Prompt, format!("chat template: {reason}")),
            P::Engine(E::Tokenize { reason }) => {
                RuntimeError::field(Field::Prompt, format!("cannot tokenize: {reason}"))
            }
            other => RuntimeError::Failed { reason: other.to_string() },
        }
    }
}

impl From<crate::engine::EngineError> for RuntimeError {
    fn from(e: crate::engine::EngineError) -> Self {
        crate::pipeline::PipelineError::Engine(e).into()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absolute_paths_become_file_names_and_routes_stay() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("models/llama.gguf");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let f = file.display();
        let m = format!("cannot load {f} layers [0, 3): bad; see \"{f}\" or ({f}). Then /api/chat at {f}:");
        assert_eq!(
            super::file_names_only(&m),
            "cannot load llama.gguf layers [0, 3): bad; see \"llama.gguf\" or (llama.gguf). Then /api/chat at llama.gguf:"
        );
        for same in ["POST /api/pull first", "a/b/c", "10 tokens/s", "/", "", "x // y", "/nonexistent-dir-xyz/a/b.gguf"]
        {
            assert_eq!(super::file_names_only(same), same);
        }
    }
}
