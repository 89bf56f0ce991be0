//! Embeddings: pooled from the last stage's final hidden states through the pipeline, equal
//! whether the model is split or not (in-process and over `exo serve` processes), unit length,
//! deterministic; the three routes' shapes; every hostile request a 4xx naming its field;
//! generations on the same instance unaffected; the real SmolLM2 model ranks similar sentences
//! above unrelated ones; the real Python clients.

use crate::common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use exo::api::{self, AppState};
use exo::engine::{normalize, ContextParams, LayerRange, Pooling, SamplingParams, Token};
use exo::pipeline::{embed_tokens, Chain};
use exo::runtime::{Event, GenRequest, Input, Limits, ModelRef, Runtime};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn ctx(n_batch: u32) -> ContextParams {
    ContextParams { n_ctx: 256, n_batch, n_ubatch: n_batch, n_threads: 1, n_seq_max: 2, exact: false }
}

fn ranges(cuts: &[u32]) -> Vec<LayerRange> {
    cuts.windows(2).map(|w| LayerRange { begin: w[0], end: w[1] }).collect()
}

async fn pooled(chain: &Chain, tokens: &[Token], pooling: Pooling) -> Vec<f64> {
    embed_tokens(chain, tokens, 1, pooling).await.unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    common::max_abs_diff(a, b)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Every pooling, unsplit and split in 2 and 3 in-process stages, in chunks of 8 rows and in one:
/// the same vector within 1e-4 per component; the sequence's KV is empty afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_equals_unsplit_for_every_pooling() {
    let path = common::model("tiny-llama");
    let tokens: Vec<Token> = (0..21).map(|i| (i * 37 + 5) % 250).collect();
    let reference = Chain::load(&path, None, ctx(64), true).unwrap();
    let (mut worst, mut same_chunks) = (0f32, 0f32);
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
        let want = normalize(&pooled(&reference, &tokens, pooling).await, usize::MAX);
        assert!((norm(&want) - 1.0).abs() < 1e-5);
        for (cuts, n_batch) in [(&[0, 8][..], 8), (&[0, 4, 8][..], 8), (&[0, 3, 6, 8][..], 8), (&[0, 3, 6, 8][..], 64)]
        {
            let chain = Chain::load(&path, Some(&ranges(cuts)), ctx(n_batch), true).unwrap();
            let got = normalize(&pooled(&chain, &tokens, pooling).await, usize::MAX);
            let d = max_diff(&got, &want);
            assert!(d <= 1e-4, "{pooling:?} stages {cuts:?} n_batch {n_batch}: max |diff| {d}");
            worst = worst.max(d);
            if n_batch == 64 {
                same_chunks = same_chunks.max(d);
            }
            for s in chain.stages() {
                assert_eq!(s.seq_pos_max(1).await.unwrap(), -1, "the embedding's KV was dropped");
            }
        }
    }
    println!("split vs unsplit, every pooling: max |diff| = {same_chunks:e} in one batch, {worst:e} in 8-row chunks");
}

/// A causal model's rows read only what precedes them: mean pooling is the average of the last-
/// token embeddings of every prefix, and CLS the last-token embedding of the first token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolings_agree_with_prefixes() {
    let path = common::model("tiny-llama");
    let chain = Chain::load(&path, Some(&ranges(&[0, 4, 8])), ctx(4), true).unwrap();
    let tokens: Vec<Token> = vec![11, 42, 7, 99, 150, 3, 64, 200, 18, 77];
    let mean = pooled(&chain, &tokens, Pooling::Mean).await;
    let mut avg = vec![0f64; mean.len()];
    for k in 1..=tokens.len() {
        let last = pooled(&chain, &tokens[..k], Pooling::Last).await;
        avg.iter_mut().zip(last).for_each(|(a, x)| *a += x / tokens.len() as f64);
    }
    let d = mean.iter().zip(&avg).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-4, "mean vs average of prefixes: {d}");
    let cls = pooled(&chain, &tokens, Pooling::Cls).await;
    let first = pooled(&chain, &tokens[..1], Pooling::Last).await;
    let d = cls.iter().zip(&first).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(d < 1e-4, "cls vs the first token: {d}");
    // different inputs, different vectors
    let other = pooled(&chain, &tokens[1..], Pooling::Last).await;
    assert!(other.iter().zip(&pooled(&chain, &tokens, Pooling::Last).await).any(|(a, b)| (a - b).abs() > 1e-3));
}

// ---- the HTTP routes ---------------------------------------------------------------------------

fn models_dir(preset: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model(preset), d.path().join("tiny-llama.gguf")).unwrap();
    d
}

fn limits() -> Limits {
    Limits { parallel: 2, queue: 4, default_ctx: 128, threads: 1, ..Limits::default() }
}

fn app(models: &Path) -> (Router, Arc<Runtime>) {
    let runtime = Runtime::new(common::offline_store(models), limits(), None);
    (api::router(AppState { runtime: runtime.clone() }), runtime)
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(uri).header("content-type", "application/json").body(Body::from(body.to_string())).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn unb64(s: &str) -> Vec<f32> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut bytes = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let n = q.iter().take_while(|&&c| c != b'=').fold(0u32, |n, &c| n << 6 | val(c) as u32);
        let k = q.iter().take_while(|&&c| c != b'=').count();
        let n = n << (6 * (4 - k));
        bytes.extend_from_slice(&n.to_be_bytes()[1..k]);
    }
    bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_answer_in_their_shapes() {
    let d = models_dir("tiny-llama");
    let (app, _) = app(d.path());
    // Ollama
    let (s, v) =
        post(&app, "/api/embed", json!({ "model": "tiny-llama", "input": ["Hello there", "Goodbye", "Hello there"] }))
            .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["model"], "tiny-llama");
    let e: Vec<Vec<f32>> = v["embeddings"].as_array().unwrap().iter().map(floats).collect();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].len(), 64, "{v}");
    assert!(e.iter().all(|x| (norm(x) - 1.0).abs() < 1e-5), "unit norm");
    assert_eq!(e[0], e[2], "identical inputs, identical vectors");
    assert!(max_diff(&e[0], &e[1]) > 1e-3, "different inputs, different vectors");
    assert!(v["prompt_eval_count"].as_u64().unwrap() >= 3);
    assert!(v["total_duration"].as_u64().unwrap() > 0 && v["load_duration"].is_u64());
    let (s, one) = post(&app, "/api/embed", json!({ "model": "tiny-llama", "input": "Hello there" })).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(floats(&one["embeddings"][0]), e[0], "a batch gives what one input gives");
    // Matryoshka: the leading components, normalized again
    let (s, short) =
        post(&app, "/api/embed", json!({ "model": "tiny-llama", "input": "Hello there", "dimensions": 16 })).await;
    assert_eq!(s, StatusCode::OK);
    let short = floats(&short["embeddings"][0]);
    let n = norm(&e[0][..16]);
    let want: Vec<f32> = e[0][..16].iter().map(|x| x / n).collect();
    assert!(short.len() == 16 && max_diff(&short, &want) < 1e-5);
    // no input: the model is loaded, nothing embedded (Ollama's preload)
    let (s, v) = post(&app, "/api/embed", json!({ "model": "tiny-llama" })).await;
    assert_eq!((s, v["embeddings"].clone()), (StatusCode::OK, json!([])));
    // legacy: not normalized, same direction
    let (s, v) = post(&app, "/api/embeddings", json!({ "model": "tiny-llama", "prompt": "Hello there" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let raw = floats(&v["embedding"]);
    let n = norm(&raw);
    assert!(max_diff(&raw.iter().map(|x| x / n).collect::<Vec<_>>(), &e[0]) < 1e-5);
    // OpenAI: strings, token ids, arrays of token ids, base64
    let (s, v) =
        post(&app, "/v1/embeddings", json!({ "model": "tiny-llama", "input": ["Hello there", "Goodbye"] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["object"].clone(), v["model"].clone()), (json!("list"), json!("tiny-llama")));
    assert_eq!(v["data"][1]["object"], "embedding");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(floats(&v["data"][0]["embedding"]), e[0]);
    assert_eq!(floats(&v["data"][1]["embedding"]), e[1]);
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() >= 2 && u["prompt_tokens"] == u["total_tokens"]);
    let (s, v) = post(&app, "/v1/embeddings", json!({ "model": "tiny-llama", "input": [5, 6, 7] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ids = floats(&v["data"][0]["embedding"]);
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let (s, v) = post(
        &app,
        "/v1/embeddings",
        json!({ "model": "tiny-llama", "input": [[5, 6, 7], [8]], "encoding_format": "base64" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(unb64(v["data"][0]["embedding"].as_str().unwrap()), ids);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
}

/// Each refusal: a 4xx in the API's own error shape whose message names the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_4xx_naming_the_field() {
    let d = models_dir("tiny-llama");
    let (app, _) = app(d.path());
    let many: Vec<String> = (0..2049).map(|i| format!("x{i}")).collect();
    let m = "tiny-llama";
    let cases = [
        (json!({ "model": m, "input": [""] }), "input"),
        (json!({ "model": m, "input": ["a", ""] }), "input"),
        (json!({ "model": m, "input": many }), "input"),
        (json!({ "model": m, "input": 5 }), "input"),
        (json!({ "model": m, "input": ["a", 1] }), "input"),
        (json!({ "model": m, "input": "a", "dimensions": 0 }), "dimensions"),
        (json!({ "model": m, "input": "a", "dimensions": 65 }), "dimensions"),
        (json!({ "model": m, "input": "a", "dimensions": "8" }), "dimensions"),
        (json!({ "model": m, "input": "a", "dimensions": -3 }), "dimensions"),
        (json!({ "model": m, "input": "a", "truncate": "yes" }), "truncate"),
        (json!({ "model": m, "input": "a", "options": { "num_ctx": "big" } }), "num_ctx"),
        (json!({ "model": m, "input": "a", "keep_alive": "soon" }), "keep_alive"),
        (json!({ "model": m, "input": "word ".repeat(300), "truncate": false }), "input"),
        (json!({ "model": "/etc/passwd", "input": "a" }), "not paths"),
        (json!({ "model": "../tiny-llama.gguf", "input": "a" }), "not paths"),
        (json!({ "input": "a" }), "model"),
        (json!({ "model": 7, "input": "a" }), "model"),
    ];
    for (body, field) in &cases {
        for route in ["/api/embed", "/v1/embeddings"] {
            let (s, v) = post(&app, route, body.clone()).await;
            assert!(s.is_client_error(), "{route} {body}: {s} {v}");
            let msg = if route == "/api/embed" {
                v["error"].as_str()
            } else {
                assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
                v["error"]["message"].as_str()
            };
            let msg = msg.unwrap_or_else(|| panic!("{route} {body}: not the API's error shape: {v}"));
            assert!(msg.contains(field), "{route} {body}: {msg:?} does not name {field}");
        }
    }
    // OpenAI only: empty inputs, token ids, encoding
    let openai = [
        (json!({ "model": m, "input": "" }), "input"),
        (json!({ "model": m, "input": [] }), "input"),
        (json!({ "model": m, "input": [[]] }), "input"),
        (json!({ "model": m }), "input"),
        (json!({ "model": m, "input": [1, 100000] }), "input"),
        (json!({ "model": m, "input": [[1], [-1]] }), "input"),
        (json!({ "model": m, "input": [1.5] }), "input"),
        (json!({ "model": m, "input": "a", "encoding_format": "hex" }), "encoding_format"),
    ];
    for (body, field) in &openai {
        let (s, v) = post(&app, "/v1/embeddings", body.clone()).await;
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(s.is_client_error() && msg.contains(field), "{body}: {s} {v}");
    }
    let (s, v) = post(&app, "/api/embeddings", json!({ "model": m, "prompt": 3 })).await;
    assert!(s.is_client_error() && v["error"].as_str().unwrap().contains("prompt"), "{v}");
    for bad in ["not json", "[1,2]"] {
        let req = Request::post("/api/embed").body(Body::from(bad)).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    // too long with truncation (the default): cut to the context
    let (s, v) = post(&app, "/api/embed", json!({ "model": m, "input": "word ".repeat(300) })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["prompt_eval_count"], 128);
    // and the server still serves
    let (s, _) = post(&app, "/api/embed", json!({ "model": m, "input": "still here" })).await;
    assert_eq!(s, StatusCode::OK);
}

/// A greedy generation gives the same text alone and while embeddings run on its instance (and
/// the embeddings are the same as alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_generation_is_unaffected() {
    let d = models_dir("tiny-llama-calm");
    let (app, rt) = app(d.path());
    let model = ModelRef::Name("tiny-llama".into());
    let generate = |rt: Arc<Runtime>| {
        let model = model.clone();
        async move {
            let mut r = GenRequest::new(model, Input::Raw("Once upon a time".into()), SamplingParams::greedy());
            r.max_tokens = Some(48);
            r.ignore_eos = true;
            let mut g = rt.generate(r).await.unwrap();
            let mut out = String::new();
            while let Some(ev) = g.events.recv().await {
                match ev {
                    Event::Text(t) => out.push_str(&t),
                    Event::Thinking(_) => {}
                    Event::Done { .. } => return out,
                    Event::Failed(e) => panic!("{e}"),
                }
            }
            panic!("no end")
        }
    };
    let body = json!({ "model": "tiny-llama", "input": ["The quick brown fox jumps over the lazy dog", "Hello"] });
    let (_, alone_e) = post(&app, "/api/embed", body.clone()).await;
    let alone = generate(rt.clone()).await;
    let g = tokio::spawn(generate(rt.clone()));
    let mut embedded = 0;
    while !g.is_finished() {
        let (s, v) = post(&app, "/api/embed", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["embeddings"], alone_e["embeddings"]);
        embedded += 1;
    }
    assert_eq!(g.await.unwrap(), alone, "the text with embeddings running beside it");
    assert!(embedded >= 2, "embeddings ran while it generated ({embedded})");
    // the lent sequences went back: nothing active
    let t = std::time::Instant::now();
    while rt.instances()[0].busy() {
        assert!(t.elapsed() < Duration::from_secs(5), "a lent sequence was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A model whose GGUF says `pooling_type = 1` (mean) is mean-pooled through the API: its vector
/// equals the mean of its rows computed on a chain, not its last token's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gguf_pooling_type_is_used() {
    let spec = exo::synth::ModelSpec { pooling_type: Some(1), ..exo::synth::preset("tiny-llama").unwrap() };
    let path = common::model_from(&spec, "tiny-llama-mean");
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&path, d.path().join("tiny-llama.gguf")).unwrap();
    let (app, rt) = app(d.path());
    let (s, v) = post(&app, "/v1/embeddings", json!({ "model": "tiny-llama", "input": [[11, 42, 7, 99, 150]] })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got = floats(&v["data"][0]["embedding"]);
    assert_eq!(rt.instances()[0].info().pooling, Pooling::Mean);
    let chain = Chain::load(&path, Some(&ranges(&[0, 5, 8])), ctx(64), true).unwrap();
    assert_eq!(chain.info().pooling, Pooling::Mean);
    let tokens = [11, 42, 7, 99, 150];
    let mean = normalize(&pooled(&chain, &tokens, Pooling::Mean).await, usize::MAX);
    let last = normalize(&pooled(&chain, &tokens, Pooling::Last).await, usize::MAX);
    assert!(max_diff(&got, &mean) <= 1e-4 && max_diff(&got, &last) > 1e-3);
}

/// Over two `exo serve` processes (a: layers 0-4, b: 4-8) the embedding equals the one-node one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_over_two_processes_equals_one_node() {
    use common::procs::Procs;
    let c = Procs::start(&[("a", &[]), ("b", &[])]).await;
    let url = format!("{}/api/embed", c.nodes[0].base());
    let body = json!({ "model": "tiny-llama", "input": ["Hello there, general Kenobi", "A second, different input"] });
    let embed = || async {
        let r = c.http.post(&url).json(&body).send().await.unwrap();
        assert!(r.status().is_success(), "{}\n{}", r.text().await.unwrap(), c.logs());
        let v: Value = r.json().await.unwrap();
        v["embeddings"].as_array().unwrap().iter().map(floats).collect::<Vec<_>>()
    };
    c.place(json!([{ "node": "a", "begin": 0, "end": 4 }, { "node": "b", "begin": 4, "end": 8 }])).await;
    assert_eq!(c.hosted(1).await, 1, "b hosts a stage");
    let split = embed().await;
    c.place(json!([{ "node": "a", "begin": 0, "end": 8 }])).await;
    let one = embed().await;
    let d = split.iter().zip(&one).map(|(a, b)| max_diff(a, b)).fold(0.0, f32::max);
    println!("two processes vs one node: max |diff| = {d:e}");
    assert!(d <= 1e-4, "max |diff| {d}");
    assert!(split.iter().all(|v| (norm(v) - 1.0).abs() < 1e-5));
    assert!(max_diff(&split[0], &split[1]) > 1e-3);
}

/// SmolLM2-135M-Instruct: similar sentences are closer than unrelated ones (a sanity check of
/// the whole path on a real model), and its 3-stage split equals the unsplit model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_model_ranks_similar_sentences_closer() {
    let Some(path) = common::real::model() else { return };
    let chain = Chain::load(&path, None, ctx(64), true).unwrap();
    let split = Chain::load(&path, Some(&ranges(&[0, 10, 20, 30])), ctx(64), true).unwrap();
    let vocab = chain.vocab().clone();
    let pooling = chain.info().pooling;
    let mut vecs = Vec::new();
    let mut worst = 0f32;
    let sentences = [
        "The cat sat on the mat.",
        "A cat was sitting on the rug.",
        "The stock market fell sharply on Monday.",
        "Shares dropped steeply at the start of the week.",
    ];
    for s in sentences {
        let t = vocab.tokenize(s, true, true).await.unwrap();
        let v = normalize(&pooled(&chain, &t, pooling).await, usize::MAX);
        let w = normalize(&pooled(&split, &t, pooling).await, usize::MAX);
        worst = worst.max(max_diff(&v, &w));
        vecs.push(v);
    }
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let (cats, stocks) = (cos(&vecs[0], &vecs[1]), cos(&vecs[2], &vecs[3]));
    let unrelated =
        [cos(&vecs[0], &vecs[2]), cos(&vecs[0], &vecs[3]), cos(&vecs[1], &vecs[2]), cos(&vecs[1], &vecs[3])];
    println!("SmolLM2 ({pooling:?} pooling): cos cats {cats:.4}, stocks {stocks:.4}, unrelated {unrelated:.4?}; 3-stage split vs unsplit max |diff| {worst:e}");
    let max_unrelated = unrelated.iter().cloned().fold(f32::MIN, f32::max);
    assert!(cats > max_unrelated && stocks > max_unrelated, "similar pairs are not the closest");
    assert!(worst <= 1e-4, "split vs unsplit {worst}");
}

/// The real `ollama` and `openai` Python packages (embed, legacy embeddings, OpenAI floats and
/// base64) against `exo serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_embed() {
    let py = match std::env::var_os("EXO_TEST_PYTHON") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-clients/bin/python"),
    };
    if !py.exists() {
        common::skip("no Python with ollama/openai (run scripts/setup.sh, or set EXO_TEST_PYTHON)");
        return;
    }
    let d = models_dir("tiny-llama");
    let node = common::nodes::spawn("embed", d.path(), &[]);
    let base = node.api.clone();
    let http = reqwest::Client::new();
    common::nodes::wait_for(&http, &format!("{base}/api/version"), |v| v["version"].is_string()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/check_embeddings.py");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(py).arg(script).args([&base, "tiny-llama"]).output().unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "client checks failed:\n{text}");
}
