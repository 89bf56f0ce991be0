//! Every API's encoder driven both ways over the same scripted events: the streamed and the
//! collected answers must agree on the text and on how the answer ended.

use super::reply::{collect, stream, Encoder};
use super::{anthropic_stream, ollama_stream, openai_stream, responses_stream};
use crate::runtime::{Event, Finish, Generation, Stats};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc;

fn gen(finish: Finish) -> Generation {
    let stats = Stats { prompt_tokens: 3, completion_tokens: 2, ..Stats::default() };
    let events = [
        Event::Text("Hel".into()),
        Event::Text("lo".into()),
        Event::Done { finish, stop_sequence: None, stats, tool_calls: Vec::new() },
    ];
    let (tx, rx) = mpsc::channel(events.len());
    for e in events {
        tx.try_send(e).expect("room for every event");
    }
    Generation { model: "m".into(), prompt_tokens: 3, events: rx }
}

async fn text(r: Response) -> String {
    let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.expect("a body");
    String::from_utf8_lossy(&b).into_owned()
}

/// The collected answer and the streamed body, for one generation ending with `finish`.
async fn both<E: Encoder>(enc: impl Fn() -> E, finish: Finish) -> (Value, String) {
    let whole = match collect(enc(), vec![gen(finish)]).await {
        Ok(r) => serde_json::from_str(&text(r).await).expect("JSON"),
        Err(_) => panic!("collect failed"),
    };
    (whole, text(stream(enc(), vec![gen(finish)])).await)
}

/// SSE events as (name, data).
fn sse(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|b| !b.is_empty())
        .filter_map(|b| {
            let name = b.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or_default().to_string();
            let data = b.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name, serde_json::from_str(data).unwrap_or(Value::String(data.into()))))
        })
        .collect()
}

#[tokio::test]
async fn responses_cut_by_max_output_tokens_are_incomplete_both_ways() {
    let enc = || responses_stream::Reply::new("resp_1".into(), "msg_1".into(), 7, "m".into());
    for (finish, status, details) in [
        (Finish::Length, "incomplete", serde_json::json!({ "reason": "max_output_tokens" })),
        (Finish::Stop, "completed", Value::Null),
    ] {
        let (whole, body) = both(enc, finish).await;
        assert_eq!(whole["status"], status, "{whole}");
        assert_eq!(whole["incomplete_details"], details, "{whole}");
        assert_eq!(whole["output"][0]["status"], status, "{whole}");
        assert_eq!(whole["output"][0]["content"][0]["text"], "Hello");
        let events = sse(&body);
        let (name, last) = events.last().expect("events");
        assert_eq!(name, &format!("response.{status}"));
        assert_eq!(last["type"], name.as_str());
        // the stream ends with the very response the collected answer is
        assert_eq!(last["response"], whole);
        let item = events.iter().find(|(n, _)| n == "response.output_item.done").expect("item done");
        assert_eq!(item.1["item"]["status"], status);
        let seqs: Vec<u64> = events.iter().filter_map(|(_, d)| d["sequence_number"].as_u64()).collect();
        assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn openai_finish_reasons_agree_both_ways() {
    for chat in [true, false] {
        let enc = || openai_stream::Head {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
            chat,
            n: 1,
            count: 1,
            include_usage: true,
        };
        for (finish, reason) in [(Finish::Length, "length"), (Finish::Stop, "stop")] {
            let (whole, body) = both(enc, finish).await;
            assert_eq!(whole["choices"][0]["finish_reason"], reason, "{whole}");
            let chunks: Vec<Value> = sse(&body).into_iter().map(|(_, d)| d).collect();
            assert_eq!(chunks.last(), Some(&Value::String("[DONE]".into())));
            let reasons: Vec<&Value> = chunks
                .iter()
                .filter_map(|c| c["choices"].get(0).map(|c| &c["finish_reason"]))
                .filter(|r| !r.is_null())
                .collect();
            assert_eq!(reasons, vec![reason]);
            let streamed: String = chunks
                .iter()
                .filter_map(|c| c["choices"].get(0))
                .filter_map(|c| if chat { c["delta"]["content"].as_str() } else { c["text"].as_str() })
                .collect();
            let collected =
                if chat { &whole["choices"][0]["message"]["content"] } else { &whole["choices"][0]["text"] };
            assert_eq!(collected.as_str(), Some(streamed.as_str()));
            let usage = chunks.iter().rev().find(|c| c["usage"].is_object()).map(|c| c["usage"].clone());
            assert_eq!(usage.as_ref(), Some(&whole["usage"]));
        }
    }
}

#[tokio::test]
async fn anthropic_stop_reasons_agree_both_ways() {
    let enc = || anthropic_stream::Message { id: "msg_1".into(), model: "m".into(), prompt_tokens: 3 };
    for (finish, reason) in [(Finish::Length, "max_tokens"), (Finish::Stop, "end_turn")] {
        let (whole, body) = both(enc, finish).await;
        assert_eq!(whole["stop_reason"], reason, "{whole}");
        assert_eq!(whole["content"][0]["text"], "Hello");
        let events = sse(&body);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.last(), Some(&"message_stop"));
        let delta = events.iter().find(|(n, _)| n == "message_delta").expect("message_delta");
        assert_eq!(delta.1["delta"]["stop_reason"], reason);
        assert_eq!(delta.1["usage"]["output_tokens"], whole["usage"]["output_tokens"]);
    }
}

#[tokio::test]
async fn ollama_done_reasons_agree_both_ways() {
    for chat in [true, false] {
        let enc = || ollama_stream::Reply { model: "m".into(), chat };
        for (finish, reason) in [(Finish::Length, "length"), (Finish::Stop, "stop")] {
            let (whole, body) = both(enc, finish).await;
            assert_eq!(whole["done_reason"], reason, "{whole}");
            let lines: Vec<Value> = body.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let last = lines.last().expect("lines");
            for k in ["done", "done_reason", "eval_count", "prompt_eval_count"] {
                assert_eq!(last[k], whole[k], "{k}");
            }
            let pick = |v: &Value| {
                if chat { v["message"]["content"].as_str() } else { v["response"].as_str() }.map(str::to_string)
            };
            let streamed: String = lines.iter().filter_map(pick).collect();
            assert_eq!(pick(&whole), Some(streamed));
        }
    }
}
