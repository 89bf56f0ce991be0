//! Ollama's answer to a running `generate` or `chat`: NDJSON lines (`done: false` pieces, then
//! the `done: true` line with the counts and durations in nanoseconds), or that last line alone
//! holding the whole text.

use super::errors::Ollama;
use super::ollama_chat::calls_json;
use super::reply::{Encoder, Outcome};
use super::util::rfc3339;
use crate::runtime::{Finish, RuntimeError, Stats};
use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::time::SystemTime;

pub(super) struct Reply {
    pub model: String,
    /// `chat` answers carry `message` instead of `response`.
    pub chat: bool,
}

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

fn final_fields(v: &mut Value, finish: Finish, s: &Stats) {
    v["done"] = json!(true);
    v["done_reason"] = json!(match finish {
        Finish::Stop | Finish::StopSequence => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "stop",
    });
    v["total_duration"] = json!(ns(s.total));
    v["load_duration"] = json!(ns(s.load));
    v["prompt_eval_count"] = json!(s.prompt_tokens);
    v["prompt_eval_duration"] = json!(ns(s.prompt_eval));
    v["eval_count"] = json!(s.completion_tokens);
    v["eval_duration"] = json!(ns(s.eval));
}

pub(super) fn ndjson(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

impl Reply {
    fn piece(&self, text: &str) -> Value {
        let mut v = json!({ "model": self.model, "created_at": rfc3339(SystemTime::now()), "done": false });
        if self.chat {
            v["message"] = json!({ "role": "assistant", "content": text });
        } else {
            v["response"] = json!(text);
        }
        v
    }

    /// Where Ollama puts reasoning: `message.thinking` in chats, `thinking` in generate answers.
    fn think_field<'a>(&self, v: &'a mut Value) -> &'a mut Value {
        if self.chat {
            &mut v["message"]["thinking"]
        } else {
            &mut v["thinking"]
        }
    }
}

impl Encoder for Reply {
    type Shape = Ollama;

    fn text(&mut self, _: usize, t: &str) -> String {
        format!("{}\n", self.piece(t))
    }

    fn thinking(&mut self, _: usize, t: &str) -> String {
        let mut v = self.piece("");
        *self.think_field(&mut v) = json!(t);
        format!("{v}\n")
    }

    fn done(&mut self, _: usize, o: &Outcome) -> String {
        let mut out = String::new();
        if self.chat && !o.tool_calls.is_empty() {
            let mut c = self.piece("");
            c["message"]["tool_calls"] = calls_json(&o.tool_calls);
            out += &format!("{c}\n");
        }
        let mut v = self.piece("");
        final_fields(&mut v, o.finish, &o.stats);
        out + &format!("{v}\n")
    }

    fn failed(&mut self, e: &RuntimeError) -> String {
        format!("{}\n", json!({ "error": e.message_with(|f| f.ollama()) }))
    }

    fn whole(&self, all: &[Outcome]) -> Value {
        let Some(o) = all.first() else { return Value::Null };
        let mut v = self.piece(&o.text);
        if !o.thinking.is_empty() {
            *self.think_field(&mut v) = json!(o.thinking);
        }
        if self.chat && !o.tool_calls.is_empty() {
            v["message"]["tool_calls"] = calls_json(&o.tool_calls);
        }
        final_fields(&mut v, o.finish, &o.stats);
        v
    }

    fn respond(body: Body) -> Response {
        ndjson(body)
    }
}
