//! A chat request as the model reads it: the model's own Jinja template (llama.cpp's built-in
//! matching only when it cannot render), tools shown to the model and its calls parsed back out,
//! grammars for structured outputs and required calls.

use super::error::{Field, RuntimeError};
use super::instance::Instance;
use super::request::{Event, Finish, GenRequest, Input};
use crate::chat::{self, ChatError, RenderOptions, ToolChoice, ToolFormat};
use tokio::sync::mpsc;

/// The prompt text and what generation must do besides sampling freely.
pub(crate) struct Prepared {
    pub text: String,
    pub grammar: Option<String>,
    /// Parse tool calls (or harmony channels) out of the output in this format.
    pub parse: Option<ToolFormat>,
    /// Stream reasoning apart (`think` on a reasoning model); true when the prompt already
    /// opened the `<think>` block.
    pub split_thinking: Option<bool>,
}

pub(crate) async fn prepare(inst: &Instance, req: &GenRequest) -> Result<Prepared, RuntimeError> {
    let p = prepare_unchecked(inst, req).await?;
    // checked here, not first on the last stage after the request was admitted
    if let Some(g) = p.grammar.as_ref().filter(|g| g.len() > crate::engine::MAX_GRAMMAR) {
        let field = if req.format.is_some() { Field::Format } else { Field::Tools };
        let max = crate::engine::MAX_GRAMMAR;
        return Err(RuntimeError::field(
            field,
            format!("its grammar takes {} bytes, more than the {max} allowed; simplify the schema", g.len()),
        ));
    }
    Ok(p)
}

async fn prepare_unchecked(inst: &Instance, req: &GenRequest) -> Result<Prepared, RuntimeError> {
    let f = inst.formatter().await;
    let tools_err = |e: ChatError| match e {
        ChatError::UnknownTool { .. } => RuntimeError::field(Field::ToolChoice, e.to_string()),
        e => RuntimeError::field(Field::Tools, e.to_string()),
    };
    let mut grammar = match &req.format {
        Some(fmt) => Some(chat::output_grammar(fmt).map_err(|e| RuntimeError::field(Field::Format, e.to_string()))?),
        None => None,
    };
    let messages = match &req.input {
        Input::Raw(t) => {
            if !req.tools.is_empty() {
                return Err(RuntimeError::field(Field::Tools, "tools need a chat (messages), not a raw prompt"));
            }
            return Ok(Prepared { text: t.clone(), grammar, parse: None, split_thinking: None });
        }
        Input::Messages(m) => m,
    };
    if req.think == Some(true) && !f.thinking {
        return Err(RuntimeError::field(Field::Think, format!("{} does not support thinking", inst.name())));
    }
    let offered = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
    let parse = match (offered, f.tool_format) {
        (true, None) => {
            return Err(RuntimeError::field(Field::Tools, format!("{} does not support tools", inst.name())));
        }
        (true, Some(fmt)) => {
            if let Some(g) = chat::tool_grammar(fmt, &req.tools, &req.tool_choice).map_err(tools_err)? {
                if grammar.is_some() {
                    return Err(RuntimeError::field(
                        Field::ToolChoice,
                        "a required tool call and a structured output cannot be asked for together",
                    ));
                }
                grammar = Some(g);
            }
            Some(fmt)
        }
        (false, Some(ToolFormat::Harmony)) => Some(ToolFormat::Harmony),
        (false, _) => None,
    };
    let Some(t) = &f.template else {
        if offered {
            let why = f.broken.as_ref().map(|e| e.to_string()).unwrap_or_default();
            return Err(RuntimeError::field(Field::Tools, format!("the chat template cannot render tools: {why}")));
        }
        return Ok(Prepared { text: builtin(inst, messages).await?, grammar, parse: None, split_thinking: None });
    };
    let tools = if offered { &req.tools[..] } else { &[] };
    let mut o = RenderOptions::new(messages, tools);
    if let Some(th) = req.think {
        o.extra.insert("enable_thinking".into(), th.into());
        if !th {
            o.extra.insert("reasoning_effort".into(), "low".into());
        }
    }
    let text = match t.render(&o) {
        Ok(s) => s,
        Err(ChatError::Raised { message }) => {
            return Err(RuntimeError::field(Field::Messages, format!("the model's chat template says: {message}")))
        }
        Err(e) if !offered => {
            tracing::warn!(model = inst.name(), error = %e, "chat template failed; using llama.cpp's built-in matching");
            builtin(inst, messages).await.map_err(|_| RuntimeError::field(Field::Messages, e.to_string()))?
        }
        Err(e) => return Err(RuntimeError::field(Field::Messages, e.to_string())),
    };
    // the tokenizer adds BOS itself when the model wants one: not twice
    let text = match (f.bos.is_empty(), text.strip_prefix(&f.bos)) {
        (false, Some(rest)) => rest.to_string(),
        _ => text,
    };
    let split_thinking = (req.think == Some(true) && f.thinking).then(|| text.trim_end().ends_with("<think>"));
    Ok(Prepared { text, grammar, parse, split_thinking })
}

async fn builtin(inst: &Instance, m: &[chat::ChatMessage]) -> Result<String, RuntimeError> {
    if inst.vocab.info().chat_template.is_some() {
        let plain = m.iter().map(|m| crate::engine::TemplateMessage::new(&m.role, &m.content)).collect();
        return Ok(inst.vocab.apply_template(plain, true).await?);
    }
    // no template: plain concatenation, as llama.cpp's server does
    Ok(m.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"))
}

/// Holds the text back and, at the end, splits it into what was said and the tool calls made.
pub(crate) fn parse_output(mut rx: mpsc::Receiver<Event>, format: ToolFormat) -> mpsc::Receiver<Event> {
    let (tx, out) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut text = String::new();
        while let Some(ev) = rx.recv().await {
            match ev {
                Event::Text(t) => text.push_str(&t),
                Event::Thinking(_) => {}
                Event::Done { finish, stop_sequence, stats, .. } => {
                    let (content, calls) = chat::parse_tool_calls(format, &text);
                    let content = if format == ToolFormat::Harmony && calls.is_empty() {
                        chat::harmony_final(&text)
                    } else {
                        content
                    };
                    if !content.is_empty() && tx.send(Event::Text(content)).await.is_err() {
                        return;
                    }
                    let finish = if calls.is_empty() { finish } else { Finish::ToolCalls };
                    let _ = tx.send(Event::Done { finish, stop_sequence, stats, tool_calls: calls }).await;
                    return;
                }
                Event::Failed(e) => {
                    let _ = tx.send(Event::Failed(e)).await;
                    return;
                }
            }
        }
    });
    out
}
