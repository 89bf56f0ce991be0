//! How an instance formats chats: its compiled template, tool-call format and thinking support,
//! read once from the model ([`super::chat`] uses it; the instance keeps it).

use crate::chat::{ChatError, ChatTemplate, ToolFormat};
use crate::engine::StageHandle;

/// What an instance formats chats with, made once per instance.
pub(crate) struct Formatter {
    pub template: Option<ChatTemplate>,
    /// The template did not compile: why (llama.cpp's matching is used instead).
    pub broken: Option<ChatError>,
    pub tool_format: Option<ToolFormat>,
    pub thinking: bool,
    pub bos: String,
}

/// Which optional abilities a template gives its model (`/api/show` capabilities).
pub fn capabilities(template: Option<&str>) -> Vec<&'static str> {
    let mut c = vec!["completion"];
    if let Some(t) = template {
        if ToolFormat::detect(t).is_some() {
            c.push("tools");
        }
        if supports_thinking(t) {
            c.push("thinking");
        }
    }
    c
}

fn supports_thinking(t: &str) -> bool {
    t.contains("enable_thinking") || t.contains("<think>") || t.contains("reasoning_effort")
}

impl Formatter {
    /// From the model's template and special tokens; `name` only labels a warning.
    pub async fn new(vocab: &StageHandle, name: &str) -> Formatter {
        let info = vocab.info();
        let text = |t: Option<i32>| async move {
            match t {
                Some(t) => vocab
                    .token_bytes(vec![t], true)
                    .await
                    .ok()
                    .and_then(|b| b.into_iter().next())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default(),
                None => String::new(),
            }
        };
        let (bos, eos) = (text(info.bos).await, text(info.eos).await);
        let src = info.chat_template.clone();
        let (template, broken) = match src.as_deref().map(|s| ChatTemplate::new(s, &bos, &eos)) {
            Some(Ok(t)) => (Some(t), None),
            Some(Err(e)) => {
                tracing::warn!(model = name, error = %e, "the model's chat template does not compile; using llama.cpp's built-in matching");
                (None, Some(e))
            }
            None => (None, None),
        };
        let tool_format = src.as_deref().filter(|_| template.is_some()).and_then(ToolFormat::detect);
        let thinking = src.as_deref().is_some_and(supports_thinking);
        Formatter { template, broken, tool_format, thinking, bos }
    }
}
