//! The real model (tests/common/real.rs) over five `exo serve` processes on loopback: placed
//! over 2, 3 and 5 of them it answers exactly like one node (greedy and seeded, its chat template
//! applied), and the Ollama, OpenAI and Anthropic routes give its real answer. The nodes find the
//! model by its catalog name from the file the card lists (as `exo run smollm2-135m` does on a
//! machine that has the file but no hub). Skipped with a printed reason when the model is absent,
//! except under CI.

use crate::common;

use common::nodes;
use common::real;
use serde_json::{json, Value};

const NAME: &str = real::CATALOG_NAME;
const PROMPTS: [&str; 2] = ["What is the capital of France?", "Write one sentence about the sea."];

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    let r = http.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{url}: {v}");
    v
}

/// `/api/generate` with the template applied; 32 tokens at most.
async fn generate(http: &reqwest::Client, base: &str, prompt: &str, seed: i64, temperature: f64) -> String {
    let body = json!({ "model": NAME, "prompt": prompt, "stream": false,
        "options": { "num_predict": 32, "seed": seed, "temperature": temperature } });
    post(http, format!("{base}/api/generate"), body).await["response"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_processes_and_every_api() {
    let Some(path) = real::model() else { return };
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, models.path().join(real::FILE)).unwrap();
    let names = ["a", "b", "c", "d", "e"];
    let cluster = nodes::cluster(&names, models.path()).await;
    let a = cluster[0].api.clone();
    let http = reqwest::Client::new();

    // reference: the whole model on node a (placement puts it there: every node is alike)
    let mut want = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        want.push((generate(&http, &a, p, 0, 0.0).await, generate(&http, &a, p, 40 + i as i64, 0.9).await));
    }
    println!("one node: {want:?}");
    assert!(want[0].0.contains("Paris"), "{:?}", want[0].0);
    let stage = |n: &str, b: u32, e: u32| json!({ "node": n, "begin": b, "end": e });
    for placement in [
        json!([stage("a", 0, 15), stage("b", 15, 30)]),
        json!([stage("b", 0, 10), stage("c", 10, 20), stage("d", 20, 30)]),
        json!([stage("a", 0, 1), stage("b", 1, 8), stage("c", 8, 16), stage("d", 16, 29), stage("e", 29, 30)]),
    ] {
        post(&http, format!("{a}/instances"), json!({ "model": NAME, "placement": placement })).await;
        for (i, p) in PROMPTS.iter().enumerate() {
            assert_eq!(generate(&http, &a, p, 0, 0.0).await, want[i].0, "greedy over {placement}");
            assert_eq!(generate(&http, &a, p, 40 + i as i64, 0.9).await, want[i].1, "seeded over {placement}");
        }
    }

    // the three APIs on the 5-stage pipeline: the same greedy answer, with the chat template
    let question = "What is the capital of France?";
    let ollama = post(
        &http,
        format!("{a}/api/chat"),
        json!({ "model": NAME, "stream": false, "options": { "temperature": 0, "num_predict": 32 },
            "messages": [{ "role": "user", "content": question }] }),
    )
    .await;
    let ollama = ollama["message"]["content"].as_str().unwrap().to_string();
    let openai = post(
        &http,
        format!("{a}/v1/chat/completions"),
        json!({ "model": NAME, "temperature": 0, "max_tokens": 32,
            "messages": [{ "role": "user", "content": question }] }),
    )
    .await;
    let openai = openai["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let anthropic = post(
        &http,
        format!("{a}/v1/messages"),
        json!({ "model": NAME, "temperature": 0, "max_tokens": 32,
            "messages": [{ "role": "user", "content": question }] }),
    )
    .await;
    let anthropic = anthropic["content"][0]["text"].as_str().unwrap().to_string();
    println!("ollama {ollama:?}\nopenai {openai:?}\nanthropic {anthropic:?}");
    assert!(ollama.contains("Paris"), "{ollama:?}");
    assert_eq!(openai, ollama);
    assert_eq!(anthropic, ollama);
    // streamed NDJSON pieces add up to the same text
    let r = http
        .post(format!("{a}/api/chat"))
        .json(&json!({ "model": NAME, "options": { "temperature": 0, "num_predict": 32 },
            "messages": [{ "role": "user", "content": question }] }))
        .send()
        .await
        .unwrap();
    let streamed: String = r
        .text()
        .await
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["message"]["content"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(streamed, ollama);
    drop(cluster);
}
