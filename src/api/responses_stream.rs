//! The Responses API's answer to a running generation: a `response` object with `output` items
//! (`message` with `output_text`, `function_call`), or its SSE event sequence
//! (`response.created` ... `response.output_text.delta` ... `response.completed`, or
//! `response.incomplete` when `max_output_tokens` cut it). Both end with the same object,
//! [`Reply::response`].

use super::errors::OpenAi;
use super::reply::{Encoder, Outcome};
use crate::chat::ToolCall;
use crate::runtime::{Finish, RuntimeError, Stats};
use serde_json::{json, Value};

pub(super) struct Reply {
    pub id: String,
    pub msg_id: String,
    pub created: u64,
    pub model: String,
    /// The next event's `sequence_number`.
    seq: u64,
    /// Whether the message item was added (it opens with the first text: a response that only
    /// calls tools has none).
    opened: bool,
}

impl Reply {
    pub fn new(id: String, msg_id: String, created: u64, model: String) -> Reply {
        Reply { id, msg_id, created, model, seq: 0, opened: false }
    }

    fn base(&self, status: &str, output: Value, usage: Value, incomplete: Value) -> Value {
        json!({ "id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
            "output": output, "usage": usage, "error": null, "incomplete_details": incomplete })
    }

    /// The finished response, streamed (in the last event) or not.
    fn response(&self, o: &Outcome) -> Value {
        let mut output = Vec::new();
        if has_message(o) {
            output.push(self.message_item(o));
        }
        output.extend(o.tool_calls.iter().map(call_item));
        let (status, incomplete) = match o.finish {
            Finish::Length => ("incomplete", json!({ "reason": "max_output_tokens" })),
            _ => ("completed", Value::Null),
        };
        self.base(status, Value::Array(output), usage(&o.stats), incomplete)
    }

    fn message_item(&self, o: &Outcome) -> Value {
        let status = if o.finish == Finish::Length { "incomplete" } else { "completed" };
        json!({ "type": "message", "id": self.msg_id, "status": status, "role": "assistant",
            "content": [{ "type": "output_text", "text": o.text, "annotations": [] }] })
    }

    fn ev(&mut self, name: &str, mut data: Value) -> String {
        data["type"] = json!(name);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        format!("event: {name}\ndata: {data}\n\n")
    }

    fn open(&mut self) -> String {
        self.opened = true;
        let id = self.msg_id.clone();
        self.ev(
            "response.output_item.added",
            json!({ "output_index": 0, "item": { "type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": [] } }),
        ) + &self.ev(
            "response.content_part.added",
            json!({ "item_id": id, "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": "", "annotations": [] } }),
        )
    }
}

/// Whether the output has a message item: it has text, or nothing else.
fn has_message(o: &Outcome) -> bool {
    !o.text.is_empty() || o.tool_calls.is_empty()
}

fn call_item(c: &ToolCall) -> Value {
    json!({ "type": "function_call", "id": format!("fc_{}", c.id), "call_id": c.id, "name": c.name,
        "arguments": c.arguments.to_string(), "status": "completed" })
}

fn usage(s: &Stats) -> Value {
    json!({ "input_tokens": s.prompt_tokens, "output_tokens": s.completion_tokens, "total_tokens": s.prompt_tokens + s.completion_tokens })
}

impl Encoder for Reply {
    type Shape = OpenAi;

    fn start(&mut self) -> String {
        let r = self.base("in_progress", json!([]), Value::Null, Value::Null);
        self.ev("response.created", json!({ "response": r }))
    }

    fn text(&mut self, _: usize, t: &str) -> String {
        if t.is_empty() {
            return String::new();
        }
        let mut out = if self.opened { String::new() } else { self.open() };
        let id = self.msg_id.clone();
        out += &self.ev(
            "response.output_text.delta",
            json!({ "item_id": id, "output_index": 0, "content_index": 0, "delta": t }),
        );
        out
    }

    fn thinking(&mut self, _: usize, _: &str) -> String {
        String::new()
    }

    fn done(&mut self, _: usize, o: &Outcome) -> String {
        let mut out = String::new();
        let response = self.response(o);
        let id = self.msg_id.clone();
        if has_message(o) {
            if !self.opened {
                out += &self.open();
            }
            let text = &o.text;
            out += &self.ev(
                "response.output_text.done",
                json!({ "item_id": id, "output_index": 0, "content_index": 0, "text": text }),
            );
            out += &self.ev(
                "response.content_part.done",
                json!({ "item_id": id, "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": text, "annotations": [] } }),
            );
            let item = self.message_item(o);
            out += &self.ev("response.output_item.done", json!({ "output_index": 0, "item": item }));
        }
        let first = usize::from(has_message(o));
        for (k, c) in o.tool_calls.iter().enumerate() {
            let (index, item) = (first + k, call_item(c));
            let mut added = item.clone();
            added["arguments"] = json!("");
            added["status"] = json!("in_progress");
            let id = item["id"].clone();
            out += &self.ev("response.output_item.added", json!({ "output_index": index, "item": added }));
            out += &self.ev(
                "response.function_call_arguments.delta",
                json!({ "item_id": id, "output_index": index, "delta": item["arguments"] }),
            );
            out += &self.ev(
                "response.function_call_arguments.done",
                json!({ "item_id": id, "output_index": index, "arguments": item["arguments"] }),
            );
            out += &self.ev("response.output_item.done", json!({ "output_index": index, "item": item }));
        }
        // OpenAI names the last event after the response's status
        let name = format!("response.{}", response["status"].as_str().unwrap_or("completed"));
        out + &self.ev(&name, json!({ "response": response }))
    }

    fn failed(&mut self, e: &RuntimeError) -> String {
        let m = e.message_with(|f| f.openai().to_string());
        self.ev("error", json!({ "code": "server_error", "message": m }))
    }

    fn whole(&self, all: &[Outcome]) -> Value {
        all.first().map(|o| self.response(o)).unwrap_or(Value::Null)
    }
}
