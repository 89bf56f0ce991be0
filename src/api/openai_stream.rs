//! OpenAI's answers for one or more running generations (`n` choices, prompt arrays): a whole
//! response, or SSE chunks (`chat.completion.chunk` / `text_completion`) ending with `[DONE]`;
//! tool calls as `message.tool_calls`, or as `delta.tool_calls` when streamed.

use super::openai::{error, finish_reason, runtime_error, sse, usage};
use super::tools::openai_call;
use crate::runtime::{Event, Generation, Stats};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub(super) struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    /// Choices per prompt: the prompt of choice i is i / n (usage counts each prompt once).
    pub n: usize,
    pub include_usage: bool,
}

impl Head {
    fn object(&self) -> &'static str {
        if self.chat {
            "chat.completion"
        } else {
            "text_completion"
        }
    }
    fn chunk_object(&self) -> &'static str {
        if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        }
    }
}

fn total(stats: &[(usize, Stats)], n: usize) -> Value {
    let prompt: usize = stats.iter().filter(|(i, _)| i % n.max(1) == 0).map(|(_, s)| s.prompt_tokens).sum();
    let completion: usize = stats.iter().map(|(_, s)| s.completion_tokens).sum();
    let mut u = usage(&Stats { prompt_tokens: prompt, completion_tokens: completion, ..Default::default() });
    u["total_tokens"] = json!(prompt + completion);
    u
}

pub(super) async fn collect(h: Head, gens: Vec<Generation>) -> Response {
    let mut choices = Vec::new();
    let mut stats = Vec::new();
    for (index, mut g) in gens.into_iter().enumerate() {
        let (mut text, mut reasoning) = (String::new(), String::new());
        loop {
            match g.events.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Thinking(t)) => reasoning.push_str(&t),
                Some(Event::Done { finish, stats: s, tool_calls, .. }) => {
                    let reason = finish_reason(finish);
                    choices.push(if h.chat {
                        let mut m = json!({ "role": "assistant", "content": text });
                        if !reasoning.is_empty() {
                            // as llama.cpp's server and DeepSeek's API name it
                            m["reasoning_content"] = json!(reasoning);
                        }
                        if !tool_calls.is_empty() {
                            if text.is_empty() {
                                m["content"] = Value::Null;
                            }
                            m["tool_calls"] = tool_calls.iter().map(|c| openai_call(c, None)).collect();
                        }
                        json!({ "index": index, "message": m, "finish_reason": reason, "logprobs": null })
                    } else {
                        json!({ "index": index, "text": text, "finish_reason": reason, "logprobs": null })
                    });
                    stats.push((index, s));
                    break;
                }
                Some(Event::Failed(e)) => return runtime_error(e),
                None => return error(StatusCode::INTERNAL_SERVER_ERROR, "generation ended without a result"),
            }
        }
    }
    axum::Json(json!({ "id": h.id, "object": h.object(), "created": h.created, "model": h.model, "choices": choices, "usage": total(&stats, h.n) }))
        .into_response()
}

pub(super) fn stream(h: Head, gens: Vec<Generation>) -> Response {
    let (tx, rx) = mpsc::channel::<String>(32);
    // every choice's events, tagged with its index, into one stream
    let (etx, mut erx) = mpsc::channel::<(usize, Event)>(64);
    let count = gens.len();
    for (i, mut g) in gens.into_iter().enumerate() {
        let etx = etx.clone();
        tokio::spawn(async move {
            while let Some(ev) = g.events.recv().await {
                // a send error means the client left: dropping `g` cancels the generation
                if etx.send((i, ev)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(etx);
    tokio::spawn(async move {
        let chunk = |choice: Value| {
            let mut v = json!({ "id": h.id, "object": h.chunk_object(), "created": h.created, "model": h.model, "choices": [choice] });
            if h.include_usage {
                v["usage"] = Value::Null;
            }
            format!("data: {v}\n\n")
        };
        if h.chat {
            let first: String = (0..count)
                .map(|i| {
                    chunk(json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }))
                })
                .collect();
            if tx.send(first).await.is_err() {
                return;
            }
        }
        let mut stats = Vec::new();
        while let Some((i, ev)) = erx.recv().await {
            let out = match ev {
                Event::Thinking(t) if h.chat => {
                    chunk(json!({ "index": i, "delta": { "reasoning_content": t }, "finish_reason": null }))
                }
                Event::Thinking(_) => continue,
                Event::Text(t) => chunk(if h.chat {
                    json!({ "index": i, "delta": { "content": t }, "finish_reason": null })
                } else {
                    json!({ "index": i, "text": t, "finish_reason": null })
                }),
                Event::Done { finish, stats: s, tool_calls, .. } => {
                    stats.push((i, s));
                    let mut out = String::new();
                    if h.chat && !tool_calls.is_empty() {
                        let calls: Vec<Value> =
                            tool_calls.iter().enumerate().map(|(k, c)| openai_call(c, Some(k))).collect();
                        out.push_str(&chunk(
                            json!({ "index": i, "delta": { "tool_calls": calls }, "finish_reason": null }),
                        ));
                    }
                    let reason = finish_reason(finish);
                    out.push_str(&chunk(if h.chat {
                        json!({ "index": i, "delta": {}, "finish_reason": reason })
                    } else {
                        json!({ "index": i, "text": "", "finish_reason": reason })
                    }));
                    if stats.len() == count {
                        if h.include_usage {
                            let v = json!({ "id": h.id, "object": h.chunk_object(), "created": h.created, "model": h.model, "choices": [], "usage": total(&stats, h.n) });
                            out.push_str(&format!("data: {v}\n\n"));
                        }
                        out.push_str("data: [DONE]\n\n");
                    }
                    out
                }
                Event::Failed(e) => {
                    let m = e.message_with(|f| f.openai().to_string());
                    format!("data: {}\n\n", json!({ "error": { "message": m, "type": "server_error" } }))
                }
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    sse(rx)
}
