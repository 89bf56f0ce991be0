//! Three `exo serve` processes joined with --peers: a model placed over 2 and 3 of them answers
//! exactly like one node; concurrent requests too; a killed stage process ends the request with a
//! clear error within seconds and leaves /cluster.

use crate::common;

use common::nodes::{spawn, spawn_with, wait_for};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

async fn generate(http: &reqwest::Client, base: &str, prompt: &str, seed: i64, temperature: f64) -> String {
    generate_with(http, base, "tiny-llama", prompt, seed, temperature).await
}

async fn generate_with(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &str,
    seed: i64,
    temperature: f64,
) -> String {
    let body = json!({ "model": model, "prompt": prompt, "stream": false, "raw": true,
        "options": { "num_predict": 24, "seed": seed, "temperature": temperature } });
    let r = http.post(format!("{base}/api/generate")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{v}");
    v["response"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    // for batched requests: text as alone (batch-invariant kernels, tests/inproc/exact.rs)
    std::os::unix::fs::symlink(common::model("tiny-llama-calm"), models.path().join("calm.gguf")).unwrap();
    let a = spawn("a", models.path(), &[]);
    let b = spawn("b", models.path(), &[&a.peer]);
    let mut c = spawn("c", models.path(), &[&a.peer]);
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{}/cluster", a.api), |v| v["nodes"].as_array().is_some_and(|n| n.len() == 3)).await;
    assert_eq!((b.name, c.peer.is_empty()), ("b", false));

    // reference: the whole model on node a
    let prompts = ["Hello there, how are you?", "The quick brown fox jumps over the lazy dog and then"];
    let mut want = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        want.push((generate(&http, &a.api, p, 0, 0.0).await, generate(&http, &a.api, p, 100 + i as i64, 0.9).await));
    }
    let mut want_calm = Vec::new();
    for p in prompts {
        want_calm.push(generate_with(&http, &a.api, "calm", p, 0, 0.0).await);
    }
    for placement in [
        json!([{ "node": "a", "begin": 0, "end": 3 }, { "node": "b", "begin": 3, "end": 6 }, { "node": "c", "begin": 6, "end": 8 }]),
        json!([{ "node": "b", "begin": 0, "end": 4 }, { "node": "c", "begin": 4, "end": 8 }]),
    ] {
        for model in ["tiny-llama", "calm"] {
            let r = http
                .post(format!("{}/instances", a.api))
                .json(&json!({ "model": model, "placement": placement }))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
        let cl: Value = http.get(format!("{}/cluster", a.api)).send().await.unwrap().json().await.unwrap();
        assert!(cl["instances"].as_array().unwrap().iter().all(|i| i["stages"] == placement), "{cl}");
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(generate(&http, &a.api, p, 0, 0.0).await, want[i].0, "greedy over {placement}");
            assert_eq!(generate(&http, &a.api, p, 100 + i as i64, 0.9).await, want[i].1, "seeded over {placement}");
        }
        // four at once, batched together: greedy text as when alone (batch-invariant kernels,
        // tests/inproc/exact.rs)
        let jobs: Vec<_> = (0..4)
            .map(|k| {
                let (http, api, p) = (http.clone(), a.api.clone(), prompts[k % 2]);
                tokio::spawn(async move { generate_with(&http, &api, "calm", p, 0, 0.0).await })
            })
            .collect();
        for (k, j) in jobs.into_iter().enumerate() {
            assert_eq!(j.await.unwrap(), want_calm[k % 2], "concurrent request {k}");
        }
    }

    // `exo run` through node a, placed by name, prints what a local run prints
    let model = models.path().join("tiny-llama.gguf");
    let exo_run = |api: String, extra: Vec<&'static str>| {
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["run".to_string(), model.to_string_lossy().into_owned(), "Tell me a story".into()];
            args.extend(["--temperature", "0", "--max-tokens", "20"].iter().map(|s| s.to_string()));
            args.extend(extra.iter().map(|s| s.to_string()));
            common::exo_command()
                .args(&args)
                .env("EXO_API_ADDR", api)
                .env("EXO_NO_DISCOVERY", "1")
                .env("EXO_DECODE_GBPS", "10")
                .env("EXO_MODELS_DIRS", "/nonexistent")
                .output()
                .unwrap()
        })
    };
    let local = exo_run("127.0.0.1:1".into(), vec![]).await.unwrap();
    let api_addr = a.api.trim_start_matches("http://").to_string();
    let remote = exo_run(api_addr.clone(), vec!["--split", "a=0:4,b=4:8"]).await.unwrap();
    assert!(remote.status.success(), "{}", String::from_utf8_lossy(&remote.stderr));
    assert_eq!(String::from_utf8_lossy(&remote.stdout), String::from_utf8_lossy(&local.stdout));
    let out = tokio::task::spawn_blocking(move || {
        common::exo_command().args(["cluster", "--api-addr", &api_addr]).output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a *") && text.contains("b ") && text.contains("round trip"), "{text}");

    // `exo bench` through node a over a=0:4,b=4:8: per-stage figures from both nodes, and the
    // bytes that crossed: per token one hidden row (64 floats) plus the small token frames
    let bench_out = {
        let (model, api) = (model.clone(), a.api.trim_start_matches("http://").to_string());
        tokio::task::spawn_blocking(move || {
            common::exo_command()
                .args(["bench", model.to_str().unwrap(), "--pp", "32", "--tg", "16", "--repeat", "2", "--json"])
                .args(["--split", "a=0:4,b=4:8"])
                .env("EXO_API_ADDR", api)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(bench_out.status.success(), "{}", String::from_utf8_lossy(&bench_out.stderr));
    let r: Value = serde_json::from_slice(&bench_out.stdout).unwrap();
    assert_eq!(
        r["stages"],
        // n_threads: the nodes' --threads 1 (hosted stages once took the machine's default)
        json!([
            { "node": "a", "range": { "begin": 0, "end": 4 }, "n_threads": 1 },
            { "node": "b", "range": { "begin": 4, "end": 8 }, "n_threads": 1 }
        ]),
        "{r}"
    );
    for t in r["tests"].as_array().unwrap() {
        let ms = t["stage_compute_ms"].as_array().unwrap();
        assert!(ms.len() == 2 && ms.iter().all(|x| x.as_f64().unwrap() > 0.0), "{t}");
        let per_token = t["transfer_bytes_per_token"].as_f64().unwrap();
        assert!((256.0..256.0 + 400.0).contains(&per_token), "{t}");
    }
    let nodes: Vec<&str> = r["nodes"].as_array().unwrap().iter().map(|n| n["node"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["a", "b"]);
    assert!(r["nodes"].as_array().unwrap().iter().all(|n| n["peak_rss_bytes"].as_u64().unwrap() > 1 << 20));

    // kill c in the middle of a generation over a and c: the stream pauses, the model is
    // re-placed over a and b, and it completes without an error (tests/procs/recovery.rs checks the
    // text; here the two-node placement forced through /instances)
    let placement = json!([{ "node": "a", "begin": 0, "end": 4 }, { "node": "c", "begin": 4, "end": 8 }]);
    let r = http
        .post(format!("{}/instances", a.api))
        .json(&json!({ "model": "tiny-llama", "placement": placement }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let body = json!({ "model": "tiny-llama", "prompt": "go on forever", "options": { "num_predict": 400 } });
    let mut resp = http.post(format!("{}/api/generate", a.api)).json(&body).send().await.unwrap();
    assert!(resp.status().is_success());
    let _first = resp.chunk().await.unwrap();
    c.child.kill().unwrap();
    let mut tail = String::new();
    while let Ok(Some(chunk)) =
        tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await.expect("the stream hung")
    {
        tail.push_str(&String::from_utf8_lossy(&chunk));
    }
    let last: Value = serde_json::from_str(tail.lines().rev().find(|l| !l.is_empty()).unwrap()).unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(last.get("error").is_none(), "{last}");
    // c leaves the cluster
    wait_for(&http, &format!("{}/cluster", a.api), |v| {
        v["nodes"].as_array().is_some_and(|n| n.iter().all(|x| x["name"] != "c"))
    })
    .await;
}

/// A node that cannot hold the model places it on a peer by itself (placement from the peers'
/// profiles), and the answer is the same as computed anywhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_too_big_for_this_node_is_placed_on_a_peer() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    let small = spawn_with("small", models.path(), &[], &["--memory-limit", "20MiB"]);
    let big = spawn("big", models.path(), &[&small.peer]);
    let http = reqwest::Client::new();
    // wait until small has big's profile
    wait_for(&http, &format!("{}/cluster", small.api), |v| {
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["name"] == "big" && x["profile"]["memory_offered"].is_u64()))
    })
    .await;
    let want = generate(&http, &big.api, "Hello there", 0, 0.0).await;
    let got = generate(&http, &small.api, "Hello there", 0, 0.0).await;
    assert_eq!(got, want);
    let cl: Value = http.get(format!("{}/cluster", small.api)).send().await.unwrap().json().await.unwrap();
    let stages = cl["instances"][0]["stages"].as_array().unwrap().clone();
    assert!(stages.iter().all(|s| s["node"] == "big"), "{cl}");
    // big stops cleanly (SIGTERM): it says goodbye, so small drops it at once, well before the
    // heartbeat timeout, and big exits 0
    let mut big = big;
    Command::new("kill").args(["-TERM", &big.child.id().to_string()]).status().unwrap();
    let t = Instant::now();
    wait_for(&http, &format!("{}/cluster", small.api), |v| {
        v["nodes"].as_array().is_some_and(|n| n.iter().all(|x| x["name"] != "big"))
    })
    .await;
    assert!(t.elapsed() < Duration::from_millis(2500), "dropped only after {:?}", t.elapsed());
    let status = big.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
