//! OpenAI's answers for one or more running generations (`n` choices, prompt arrays): a whole
//! response, or SSE chunks (`chat.completion.chunk` / `text_completion`) ending with `[DONE]`;
//! tool calls as `message.tool_calls`, or as `delta.tool_calls` when streamed.

use super::errors::OpenAi;
use super::reply::{Encoder, Outcome};
use super::tools::openai_call;
use crate::runtime::{Finish, RuntimeError, Stats};
use serde_json::{json, Value};

pub(super) struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub chat: bool,
    /// Choices per prompt: the prompt of choice i is i / n (usage counts each prompt once).
    pub n: usize,
    /// Choices in all.
    pub count: usize,
    pub include_usage: bool,
}

pub(super) fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop | Finish::StopSequence => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

pub(super) fn usage(s: &Stats) -> Value {
    json!({ "prompt_tokens": s.prompt_tokens, "completion_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens })
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

    /// Usage of every choice, each prompt counted once.
    fn total(&self, all: &[Outcome]) -> Value {
        let n = self.n.max(1);
        let prompt: usize = all.iter().step_by(n).map(|o| o.stats.prompt_tokens).sum();
        let completion: usize = all.iter().map(|o| o.stats.completion_tokens).sum();
        usage(&Stats { prompt_tokens: prompt, completion_tokens: completion, ..Default::default() })
    }

    fn chunk(&self, choice: Value) -> String {
        let mut v = json!({ "id": self.id, "object": self.chunk_object(), "created": self.created, "model": self.model, "choices": [choice] });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        format!("data: {v}\n\n")
    }
}

impl Encoder for Head {
    type Shape = OpenAi;

    fn start(&mut self) -> String {
        if !self.chat {
            return String::new();
        }
        (0..self.count)
            .map(|i| {
                self.chunk(
                    json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "finish_reason": null }),
                )
            })
            .collect()
    }

    fn text(&mut self, i: usize, t: &str) -> String {
        self.chunk(if self.chat {
            json!({ "index": i, "delta": { "content": t }, "finish_reason": null })
        } else {
            json!({ "index": i, "text": t, "finish_reason": null })
        })
    }

    fn thinking(&mut self, i: usize, t: &str) -> String {
        if !self.chat {
            return String::new();
        }
        self.chunk(json!({ "index": i, "delta": { "reasoning_content": t }, "finish_reason": null }))
    }

    fn done(&mut self, i: usize, o: &Outcome) -> String {
        let mut out = String::new();
        if self.chat && !o.tool_calls.is_empty() {
            let calls: Vec<Value> = o.tool_calls.iter().enumerate().map(|(k, c)| openai_call(c, Some(k))).collect();
            out += &self.chunk(json!({ "index": i, "delta": { "tool_calls": calls }, "finish_reason": null }));
        }
        let reason = finish_reason(o.finish);
        out + &self.chunk(if self.chat {
            json!({ "index": i, "delta": {}, "finish_reason": reason })
        } else {
            json!({ "index": i, "text": "", "finish_reason": reason })
        })
    }

    fn end(&mut self, all: &[Outcome]) -> String {
        let mut out = String::new();
        if self.include_usage {
            let v = json!({ "id": self.id, "object": self.chunk_object(), "created": self.created, "model": self.model, "choices": [], "usage": self.total(all) });
            out += &format!("data: {v}\n\n");
        }
        out + "data: [DONE]\n\n"
    }

    fn failed(&mut self, e: &RuntimeError) -> String {
        let m = e.message_with(|f| f.openai().to_string());
        format!("data: {}\n\n", json!({ "error": { "message": m, "type": "server_error" } }))
    }

    fn whole(&self, all: &[Outcome]) -> Value {
        let choices: Vec<Value> = all
            .iter()
            .enumerate()
            .map(|(index, o)| {
                let reason = finish_reason(o.finish);
                if !self.chat {
                    return json!({ "index": index, "text": o.text, "finish_reason": reason, "logprobs": null });
                }
                let mut m = json!({ "role": "assistant", "content": o.text });
                if !o.thinking.is_empty() {
                    // as llama.cpp's server and DeepSeek's API name it
                    m["reasoning_content"] = json!(o.thinking);
                }
                if !o.tool_calls.is_empty() {
                    if o.text.is_empty() {
                        m["content"] = Value::Null;
                    }
                    m["tool_calls"] = o.tool_calls.iter().map(|c| openai_call(c, None)).collect();
                }
                json!({ "index": index, "message": m, "finish_reason": reason, "logprobs": null })
            })
            .collect();
        json!({ "id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": choices, "usage": self.total(all) })
    }
}
