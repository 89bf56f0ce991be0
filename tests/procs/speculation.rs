//! Speculative decoding across processes: a coordinator with `--draft ngram` streams, over 2 and
//! 3 stages on other `exo serve` processes, alone and 8 requests at once, exactly the text a
//! node with `--draft none` streams (every node `--exact`). The proposals ride in the batches
//! that cross the network, the last stage answers the coordinator directly, and rejected
//! positions are dropped on every stage by the next batch.

use crate::common;

use common::procs::Procs;
use serde_json::{json, Value};

const TOKENS: u32 = 64;
const PROMPTS: &[&str] = &[
    "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return a + b\n\ndef",
    "one two three four five, one two three four five, one two",
    "The cat sat on the mat. The cat sat on the mat. The",
    "- apples\n- pears\n- plums\n- apples\n- pears\n-",
    "Once upon a time, in a small village by the sea,",
    "Q: What is 2 + 2?\nA: 4\nQ: What is 3 + 3?\nA: 6\nQ: What is 4 + 4?\nA:",
    "red green blue red green blue red",
    "To be or not to be, that is the question. To be or",
];

async fn texts(c: &Procs, node: usize, prompts: &[&'static str], at_once: bool) -> Vec<String> {
    let client = c.client_at(node);
    if at_once {
        let runs: Vec<_> = prompts
            .iter()
            .map(|&p| {
                let client = client.clone();
                tokio::spawn(async move { client.stream(p, TOKENS, |_| {}).await })
            })
            .collect();
        let mut out = Vec::new();
        for r in runs {
            out.push(r.await.unwrap().unwrap_or_else(|e| panic!("{e}\n{}", c.logs())).text);
        }
        return out;
    }
    let mut out = Vec::new();
    for p in prompts {
        out.push(client.stream(p, TOKENS, |_| {}).await.unwrap_or_else(|e| panic!("{e}\n{}", c.logs())).text);
    }
    out
}

async fn speculation(c: &Procs) -> Value {
    let v = c.get(&format!("{}/api/ps", c.nodes[0].base())).await.unwrap();
    v["models"][0]["exo_speculation"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_through_two_and_three_stage_processes_leave_the_text_unchanged() {
    let (model, name, n_layer) = match common::real::model() {
        Some(m) => (m, common::real::CATALOG_NAME, 30),
        None => (common::model("tiny-llama-peaked"), "tiny-llama", 8),
    };
    let mut c = Procs::start_serving(
        &model,
        name,
        &[("a", &["--draft", "ngram"]), ("b", &["--draft", "none"]), ("c", &["--draft", "ngram"])],
    )
    .await;
    // the reference: b alone, one token per step
    c.place_via(1, json!([{ "node": "b", "begin": 0, "end": n_layer }])).await;
    let want = texts(&c, 1, PROMPTS, false).await;
    let (third, two) = (n_layer / 3, n_layer / 2);
    let three = json!([{ "node": "a", "begin": 0, "end": third }, { "node": "b", "begin": third, "end": 2 * third },
        { "node": "c", "begin": 2 * third, "end": n_layer }]);
    c.place(three).await;
    assert_eq!(texts(&c, 0, &PROMPTS[..3], false).await, want[..3], "3 stages, alone");
    assert_eq!(texts(&c, 0, PROMPTS, true).await, want, "3 stages, 8 at once");
    let s = speculation(&c).await;
    assert_eq!(s["draft"], "ngram", "{s}");
    assert!(s["accepted"].as_u64().unwrap() > 10, "speculation hardly ran: {s}");
    let two_stages = json!([{ "node": "a", "begin": 0, "end": two }, { "node": "c", "begin": two, "end": n_layer }]);
    c.place(two_stages).await;
    assert_eq!(texts(&c, 0, &PROMPTS[..3], false).await, want[..3], "2 stages, alone");

    // a stage killed while windows are in flight: the pipeline is rebuilt over the nodes left,
    // the sequence replayed, and the text is still the plain one
    c.place(json!([{ "node": "a", "begin": 0, "end": two }, { "node": "b", "begin": two, "end": n_layer }])).await;
    let before = speculation(&c).await["windows"].as_u64().unwrap();
    let client = c.client();
    let s = client
        .stream(PROMPTS[1], TOKENS, |n| {
            if n == 12 {
                c.node("b").kill()
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(s.text, want[1], "a stage killed mid-stream");
    assert!(speculation(&c).await["windows"].as_u64().unwrap() > before, "windows were in flight");
}
