//! Anthropic's answer to a running generation: a `message` object, or its SSE event sequence
//! (message_start, content_block_start, content_block_delta, content_block_stop, message_delta,
//! message_stop); tool calls as `tool_use` blocks after the text block.

use super::errors::Anthropic;
use super::reply::{Encoder, Outcome};
use crate::runtime::{Finish, RuntimeError};
use serde_json::{json, Value};

pub(super) struct Message {
    pub id: String,
    pub model: String,
    pub prompt_tokens: usize,
}

pub(super) fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::StopSequence => "stop_sequence",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

fn event(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

impl Encoder for Message {
    type Shape = Anthropic;

    fn start(&mut self) -> String {
        event(
            "message_start",
            json!({ "type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                "stop_reason": null, "stop_sequence": null,
                "usage": { "input_tokens": self.prompt_tokens, "output_tokens": 0 } } }),
        ) + &event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
        )
    }

    fn text(&mut self, _: usize, t: &str) -> String {
        event(
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": t } }),
        )
    }

    fn thinking(&mut self, _: usize, _: &str) -> String {
        String::new()
    }

    fn done(&mut self, _: usize, o: &Outcome) -> String {
        let mut out = event("content_block_stop", json!({ "type": "content_block_stop", "index": 0 }));
        for (k, c) in o.tool_calls.iter().enumerate() {
            let index = k + 1;
            out += &event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": index, "content_block": { "type": "tool_use", "id": c.id, "name": c.name, "input": {} } }),
            );
            out += &event(
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": index, "delta": { "type": "input_json_delta", "partial_json": c.arguments.to_string() } }),
            );
            out += &event("content_block_stop", json!({ "type": "content_block_stop", "index": index }));
        }
        out + &event(
            "message_delta",
            json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop_reason(o.finish), "stop_sequence": o.stop_sequence },
                    "usage": { "output_tokens": o.stats.completion_tokens } }),
        ) + &event("message_stop", json!({ "type": "message_stop" }))
    }

    fn failed(&mut self, e: &RuntimeError) -> String {
        let m = e.message_with(|f| f.openai().to_string());
        event("error", json!({ "type": "error", "error": { "type": "api_error", "message": m } }))
    }

    fn whole(&self, all: &[Outcome]) -> Value {
        let Some(o) = all.first() else { return Value::Null };
        let mut content = Vec::new();
        if !o.text.is_empty() || o.tool_calls.is_empty() {
            content.push(json!({ "type": "text", "text": o.text }));
        }
        content.extend(
            o.tool_calls
                .iter()
                .map(|c| json!({ "type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments })),
        );
        json!({
            "id": self.id, "type": "message", "role": "assistant", "model": self.model,
            "content": content,
            "stop_reason": stop_reason(o.finish), "stop_sequence": o.stop_sequence,
            "usage": { "input_tokens": o.stats.prompt_tokens, "output_tokens": o.stats.completion_tokens },
        })
    }
}
