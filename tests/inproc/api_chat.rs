//! Chat beyond text (issue 16): the model's own Jinja template, tool calling in the three APIs
//! (forced calls are valid by construction, even on a random generated model), structured
//! outputs, the Responses API, `n` choices, prompt arrays, and the errors each gives.

use crate::common;

use axum::http::{Method, StatusCode};
use common::http::{app, call, limits, lines, models_dir, post, sse};
use exo::runtime::Limits;
use serde_json::{json, Value};

/// A function whose arguments are bounded (enum + maxLength), so a forced call always ends.
fn weather() -> Value {
    json!([{ "type": "function", "function": { "name": "get_weather", "description": "Current weather",
        "parameters": { "type": "object", "properties": {
            "location": { "type": "string", "maxLength": 8 },
            "unit": { "enum": ["celsius", "fahrenheit"] } },
            "required": ["location", "unit"], "additionalProperties": false } } }])
}

fn check_args(args: &Value) {
    assert!(args["location"].as_str().is_some_and(|l| l.chars().count() <= 8), "{args}");
    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap_or("")), "{args}");
}

#[tokio::test]
async fn forced_tool_calls_in_openai_ollama_and_anthropic() {
    let models = models_dir();
    // the tools' system block is long; the grammar lets a random model pad with whitespace
    let (app, _rt) = app(models.path(), Limits { default_ctx: 2048, ..limits() });
    let ask = json!([{ "role": "user", "content": "Weather in Paris?" }]);
    // OpenAI, named function, not streamed
    let (s, _, b) = post(&app, "/v1/chat/completions", json!({ "model": "tiny-llama", "messages": ask, "tools": weather(),
        "tool_choice": { "type": "function", "function": { "name": "get_weather" } }, "max_tokens": 600, "temperature": 0 })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{b}");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    check_args(&serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap());
    // streamed: a delta with tool_calls, then finish_reason tool_calls
    let (s, _, b) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": ask, "tools": weather(),
        "tool_choice": "required", "max_tokens": 600, "temperature": 0, "stream": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let chunks: Vec<Value> =
        sse(&b).into_iter().filter(|(_, d)| d != "[DONE]").map(|(_, d)| serde_json::from_str(&d).unwrap()).collect();
    let delta = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array().cloned())
        .expect("a tool_calls delta");
    assert_eq!(delta[0]["index"], 0);
    assert_eq!(delta[0]["function"]["name"], "get_weather");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
    // a conversation that carries the call and its result renders and answers
    let round = json!([{ "role": "user", "content": "Weather in Paris?" },
        { "role": "assistant", "content": null, "tool_calls": [{ "id": "call_1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}" } }] },
        { "role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}" }]);
    let (s, _, b) = post(
        &app,
        "/v1/chat/completions",
        json!({ "model": "tiny-llama", "messages": round, "tools": weather(), "max_tokens": 8, "temperature": 0 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Anthropic: tool_choice {type: tool}
    let tools = json!([{ "name": "get_weather", "description": "Current weather", "input_schema": weather()[0]["function"]["parameters"] }]);
    let (s, _, b) = post(
        &app,
        "/v1/messages",
        json!({ "model": "tiny-llama", "max_tokens": 600, "messages": ask, "tools": tools,
        "tool_choice": { "type": "tool", "name": "get_weather" }, "temperature": 0 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["stop_reason"], "tool_use", "{b}");
    let block =
        v["content"].as_array().unwrap().iter().find(|c| c["type"] == "tool_use").expect("a tool_use block").clone();
    assert_eq!(block["name"], "get_weather");
    check_args(&block["input"]);
    // Anthropic's tool_result goes back in as a tool message
    let (s, _, b) = post(&app, "/v1/messages", json!({ "model": "tiny-llama", "max_tokens": 4, "tools": tools, "messages": [
        { "role": "user", "content": "Weather in Paris?" },
        { "role": "assistant", "content": [{ "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": { "location": "Paris", "unit": "celsius" } }] },
        { "role": "user", "content": [{ "type": "tool_result", "tool_use_id": "toolu_1", "content": "21 C" }] }] })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Ollama: tools are accepted and the message answers (the model chooses: no forcing here)
    let (s, _, b) = post(
        &app,
        "/api/chat",
        json!({ "model": "tiny-llama", "messages": ask, "tools": weather(), "stream": false,
        "options": { "num_predict": 8, "temperature": 0 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["done"], true);
    // /api/show says the template takes tools
    let (_, _, b) = post(&app, "/api/show", json!({ "model": "tiny-llama" })).await;
    let caps: Value = serde_json::from_str::<Value>(&b).unwrap()["capabilities"].clone();
    assert!(caps.as_array().unwrap().contains(&json!("tools")), "{caps}");
}

#[tokio::test]
async fn structured_outputs_follow_the_schema() {
    let models = models_dir();
    let (app, _rt) = app(models.path(), limits());
    let schema = json!({ "type": "object", "properties": { "city": { "type": "string", "maxLength": 6 }, "ok": { "type": "boolean" } },
        "required": ["city", "ok"], "additionalProperties": false });
    let (s, _, b) = post(
        &app,
        "/api/chat",
        json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "A city?" }],
        "format": schema, "stream": false, "options": { "num_predict": 120, "temperature": 0 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let content = serde_json::from_str::<Value>(&b).unwrap()["message"]["content"].as_str().unwrap().to_string();
    let v: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("{e}: {content:?}"));
    assert!(v["city"].as_str().is_some_and(|c| c.chars().count() <= 6) && v["ok"].is_boolean(), "{v}");
    // OpenAI json_schema, streamed, at a temperature: still valid
    let (s, _, b) = post(&app, "/v1/chat/completions", json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "A city?" }],
        "response_format": { "type": "json_schema", "json_schema": { "name": "c", "schema": schema } }, "max_tokens": 120, "seed": 5, "stream": true })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let text: String = sse(&b)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| {
            serde_json::from_str::<Value>(&d).unwrap()["choices"][0]["delta"]["content"].as_str().map(str::to_string)
        })
        .collect();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert!(v["ok"].is_boolean(), "{v}");
    // format "json": the output starts as a JSON object
    let (s, _, b) = post(
        &app,
        "/api/generate",
        json!({ "model": "tiny-llama", "prompt": "Say", "format": "json", "stream": false,
        "options": { "num_predict": 4, "temperature": 0 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let r = serde_json::from_str::<Value>(&b).unwrap()["response"].as_str().unwrap().to_string();
    assert!(r.trim_start().starts_with('{'), "{r:?}");
}

#[tokio::test]
async fn responses_choices_prompt_arrays_and_model_routes() {
    let models = models_dir();
    let (app, _rt) = app(models.path(), Limits { default_ctx: 2048, ..limits() });
    let (s, _, b) = post(&app, "/v1/responses", json!({ "model": "tiny-llama", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 6, "temperature": 0 })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][0]["type"], "message");
    let text = v["output"][0]["content"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(v["usage"]["output_tokens"], 6);
    // cut by max_output_tokens: incomplete, saying why, both ways
    assert_eq!(v["status"], "incomplete", "{v}");
    assert_eq!(v["incomplete_details"], json!({ "reason": "max_output_tokens" }));
    assert_eq!(v["output"][0]["status"], "incomplete");
    let (s, _, b) = post(&app, "/v1/responses", json!({ "model": "tiny-llama", "input": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hello" }],
        "max_output_tokens": 6, "temperature": 0, "stream": true })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let events = sse(&b);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.incomplete"));
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["response"]["status"], "incomplete");
    assert_eq!(last["response"]["incomplete_details"], json!({ "reason": "max_output_tokens" }));
    assert_eq!(last["response"]["output"][0]["status"], "incomplete");
    let streamed: String = events
        .iter()
        .filter(|(e, _)| e.as_deref() == Some("response.output_text.delta"))
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text, "the same greedy text streamed and not");
    // input items of a Responses tool loop: input_text parts, a function call and its output
    let loop_input = json!([
        { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "Weather in Paris?" }] },
        { "type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}" },
        { "type": "function_call_output", "call_id": "call_9", "output": "21 C" }]);
    let flat =
        json!([{ "type": "function", "name": "get_weather", "parameters": weather()[0]["function"]["parameters"] }]);
    let (s, _, b) = post(
        &app,
        "/v1/responses",
        json!({ "model": "tiny-llama", "input": loop_input, "tools": flat, "max_output_tokens": 4 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // a forced call, streamed: only a function_call item, with its argument events
    let (s, _, b) = post(
        &app,
        "/v1/responses",
        json!({ "model": "tiny-llama", "input": "Weather in Paris?", "tools": flat,
        "tool_choice": "required", "max_output_tokens": 300, "temperature": 0, "stream": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let events = sse(&b);
    let done = events
        .iter()
        .find(|(e, _)| e.as_deref() == Some("response.function_call_arguments.done"))
        .expect("arguments done");
    let args: Value =
        serde_json::from_str(serde_json::from_str::<Value>(&done.1).unwrap()["arguments"].as_str().unwrap()).unwrap();
    check_args(&args);
    let completed: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    let kinds: Vec<&str> =
        completed["response"]["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, vec!["function_call"], "{completed}");
    assert_eq!(events.last().unwrap().0.as_deref(), Some("response.completed"));
    assert_eq!(
        (&completed["response"]["status"], &completed["response"]["incomplete_details"]),
        (&json!("completed"), &Value::Null)
    );
    // n choices: seeds apart, each its own index; prompt arrays give one choice per prompt
    let (s, _, b) = post(&app, "/v1/chat/completions", json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "Hi" }], "n": 3, "max_tokens": 5, "seed": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let idx: Vec<u64> = v["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![0, 1, 2]);
    let done = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((3..=15).contains(&done), "{b}");
    let (s, _, b) = post(
        &app,
        "/v1/completions",
        json!({ "model": "tiny-llama", "prompt": ["One", "Two"], "max_tokens": 3, "temperature": 0, "stream": true }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut seen: Vec<u64> = sse(&b)
        .into_iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| serde_json::from_str::<Value>(&d).unwrap()["choices"][0]["index"].as_u64())
        .collect();
    seen.dedup();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, vec![0, 1]);
    // /v1/models/{id}; unknown ids and routes in OpenAI's error shape
    let (s, _, b) = call(&app, Method::GET, "/v1/models/tiny-llama", None).await;
    assert_eq!((s, serde_json::from_str::<Value>(&b).unwrap()["id"].clone()), (StatusCode::OK, json!("tiny-llama")));
    for uri in ["/v1/models/nope", "/v1/nothing-here"] {
        let (s, _, b) = call(&app, Method::GET, uri, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
        assert!(serde_json::from_str::<Value>(&b).unwrap()["error"]["message"].is_string(), "{uri}: {b}");
    }
    // Ollama lists tagged names and a digest for loaded models
    let (_, _, b) = call(&app, Method::GET, "/api/tags", None).await;
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["models"][0]["name"], "tiny-llama:latest");
    let (_, _, b) = call(&app, Method::GET, "/api/ps", None).await;
    let ps: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(ps["models"][0]["name"], "tiny-llama:latest");
    assert_eq!(ps["models"][0]["digest"].as_str().map(str::len), Some(16));
    let _ = lines;
}

#[tokio::test]
async fn chat_errors_name_their_field() {
    let models = models_dir();
    let (app, _rt) = app(models.path(), limits());
    let ask = json!([{ "role": "user", "content": "Hi" }]);
    let mut cases: Vec<(&str, Value, &str)> = vec![
        ("/v1/chat/completions", json!({ "model": "tiny-llama", "messages": ask, "tools": "nope" }), "tools"),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "tools": [{ "type": "function", "function": { "name": "bad name!" } }] }),
            "tools",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "tools": [{ "type": "retrieval" }] }),
            "tools",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "tools": weather(), "tool_choice": { "type": "function", "function": { "name": "other" } } }),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "tool_choice": "sometimes", "tools": weather() }),
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "response_format": { "type": "json_schema", "json_schema": { "schema": { "type": "frobnicate" } } } }),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": ask, "response_format": { "type": "xml" } }),
            "response_format",
        ),
        ("/v1/chat/completions", json!({ "model": "tiny-llama", "messages": ask, "n": 0 }), "n"),
        ("/v1/chat/completions", json!({ "model": "tiny-llama", "messages": ask, "n": 1000 }), "n"),
        ("/v1/chat/completions", json!({ "model": "tiny-llama", "messages": ask, "logprobs": true }), "logprobs"),
        (
            "/v1/chat/completions",
            json!({ "model": "tiny-llama", "messages": [{ "role": "assistant", "tool_calls": [{ "id": "c", "function": { "name": "f", "arguments": "[1]" } }] }] }),
            "messages",
        ),
        (
            "/api/chat",
            json!({ "model": "tiny-llama", "messages": [{ "role": "user", "content": "Hi", "images": ["aGk="] }] }),
            "images",
        ),
        ("/api/generate", json!({ "model": "tiny-llama", "prompt": "Hi", "images": ["aGk="] }), "images"),
        ("/api/chat", json!({ "model": "tiny-llama", "messages": ask, "format": "yaml" }), "format"),
        (
            "/api/chat",
            json!({ "model": "tiny-llama", "messages": ask, "format": { "type": "object", "required": "x" } }),
            "format",
        ),
        ("/api/chat", json!({ "model": "tiny-llama", "messages": ask, "think": true }), "think"),
        ("/api/chat", json!({ "model": "tiny-llama", "messages": ask, "think": "extreme" }), "think"),
        (
            "/api/generate",
            json!({ "model": "tiny-llama", "prompt": "Hi", "raw": true, "format": "json", "think": 3 }),
            "think",
        ),
        (
            "/v1/messages",
            json!({ "model": "tiny-llama", "max_tokens": 5, "messages": ask, "tools": [{ "name": "x" }] }),
            "tools",
        ),
        (
            "/v1/messages",
            json!({ "model": "tiny-llama", "max_tokens": 5, "messages": ask, "tool_choice": { "type": "maybe" } }),
            "tool_choice",
        ),
        ("/v1/completions", json!({ "model": "tiny-llama", "prompt": [], "max_tokens": 2 }), "prompt"),
        ("/v1/completions", json!({ "model": "tiny-llama", "prompt": vec!["a"; 40], "max_tokens": 2 }), "prompt"),
        (
            "/v1/responses",
            json!({ "model": "tiny-llama", "input": "Hi", "text": { "format": { "type": "json_schema", "schema": 7 } } }),
            "response_format",
        ),
    ];
    // a schema whose grammar would be huge is refused before anything is admitted
    let huge: Vec<String> = (0..20_000).map(|i| format!("choice-number-{i:08}")).collect();
    cases.push((
        "/api/generate",
        json!({ "model": "tiny-llama", "prompt": "Hi", "raw": true, "format": { "enum": huge } }),
        "format",
    ));
    for (uri, body, field) in cases {
        let (s, _, b) = post(&app, uri, body.clone()).await;
        assert!(s.is_client_error(), "{uri} {body}: {s} {b}");
        assert!(b.contains(field), "{uri} {body}: the error names {field}: {b}");
    }
    // and the node still serves
    let (s, _, b) = post(
        &app,
        "/api/chat",
        json!({ "model": "tiny-llama", "messages": ask, "stream": false, "options": { "num_predict": 2 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

/// How an answer ended is the same streamed and not, in every API: cut by the token limit, and
/// (a forced tool call) ended by the model.
#[tokio::test]
async fn finish_reasons_agree_streamed_and_not() {
    let models = models_dir();
    let (app, _rt) = app(models.path(), limits());
    let ask = json!([{ "role": "user", "content": "Hi" }]);
    let last_sse = |b: &str| -> (Option<String>, Value) {
        let evs: Vec<_> = sse(b).into_iter().filter(|(_, d)| d != "[DONE]").collect();
        let (e, d) = evs.last().cloned().unwrap();
        (e, serde_json::from_str(&d).unwrap())
    };
    for stream in [false, true] {
        let body =
            json!({ "model": "tiny-llama", "messages": ask, "max_tokens": 3, "temperature": 0, "stream": stream });
        let (s, _, b) = post(&app, "/v1/chat/completions", body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let reason = if stream {
            sse(&b)
                .into_iter()
                .filter(|(_, d)| d != "[DONE]")
                .map(|(_, d)| serde_json::from_str::<Value>(&d).unwrap()["choices"][0]["finish_reason"].clone())
                .find(|r| !r.is_null())
        } else {
            Some(serde_json::from_str::<Value>(&b).unwrap()["choices"][0]["finish_reason"].clone())
        };
        assert_eq!(reason, Some(json!("length")), "chat, stream {stream}: {b}");

        let body =
            json!({ "model": "tiny-llama", "messages": ask, "max_tokens": 3, "temperature": 0, "stream": stream });
        let (s, _, b) = post(&app, "/v1/messages", body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let reason = if stream {
            let evs = sse(&b);
            let d = &evs.iter().find(|(e, _)| e.as_deref() == Some("message_delta")).unwrap().1;
            serde_json::from_str::<Value>(d).unwrap()["delta"]["stop_reason"].clone()
        } else {
            serde_json::from_str::<Value>(&b).unwrap()["stop_reason"].clone()
        };
        assert_eq!(reason, "max_tokens", "anthropic, stream {stream}: {b}");

        let body = json!({ "model": "tiny-llama", "messages": ask, "options": { "num_predict": 3, "temperature": 0 }, "stream": stream });
        let (s, _, b) = post(&app, "/api/chat", body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(lines(&b).last().unwrap()["done_reason"], "length", "ollama, stream {stream}: {b}");

        let body =
            json!({ "model": "tiny-llama", "input": "Hi", "max_output_tokens": 3, "temperature": 0, "stream": stream });
        let (s, _, b) = post(&app, "/v1/responses", body).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        let r = if stream {
            let (e, d) = last_sse(&b);
            assert_eq!(e.as_deref(), Some("response.incomplete"));
            d["response"].clone()
        } else {
            serde_json::from_str::<Value>(&b).unwrap()
        };
        assert_eq!(r["status"], "incomplete", "responses, stream {stream}: {r}");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["output"][0]["status"], "incomplete");
    }
    // ended by the model (a forced call): completed both ways, no incomplete_details
    let flat =
        json!([{ "type": "function", "name": "get_weather", "parameters": weather()[0]["function"]["parameters"] }]);
    let body = json!({ "model": "tiny-llama", "input": "Weather in Paris?", "tools": flat, "tool_choice": "required",
        "max_output_tokens": 300, "temperature": 0 });
    let (s, _, b) = post(&app, "/v1/responses", body).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let r: Value = serde_json::from_str(&b).unwrap();
    assert_eq!((&r["status"], &r["incomplete_details"]), (&json!("completed"), &Value::Null), "{r}");
}
