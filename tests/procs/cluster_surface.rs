//! The cluster's own surface on two `exo serve` processes: `GET /placements/preview` (ours, exo's
//! memory split, one node; hostile queries refused naming the field), `GET /metrics` after a
//! request over a 2-stage placement (counters that moved where the work happened), `exo ps` and
//! `exo plan MODEL` against the running node.

use crate::common;

use common::nodes::{cluster, wait_for};
use serde_json::{json, Value};
use std::collections::HashMap;

/// `name{labels}` -> value, from Prometheus text.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")))
        })
        .collect()
}

fn exo_at(api: &str, args: &[&str]) -> std::process::Output {
    common::exo_command()
        .args(args)
        .env("EXO_API_ADDR", api.trim_start_matches("http://"))
        .env("EXO_CONFIG_DIR", common::config_dir())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_metrics_ps_and_plan() {
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    let nodes = cluster(&["a", "b"], models.path()).await;
    let (api, http) = (nodes[0].api.clone(), reqwest::Client::new());
    // placement search needs b's profile
    wait_for(&http, &format!("{api}/cluster"), |v| v["nodes"][1]["profile"].is_object()).await;

    // the candidates, each covering every layer
    let r = http.get(format!("{api}/placements/preview?model=tiny-llama")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["n_layer"], 8, "{p}");
    assert_eq!(p["nodes"], json!(["a", "b"]), "{p}");
    let c = p["candidates"].as_array().unwrap();
    let names: Vec<&str> = c.iter().map(|c| c["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["exo-rs", "exo-memory-split", "one-node"], "{p}");
    for c in c {
        assert_eq!(c["fits"], true, "{c}");
        assert!(c["predicted_decode_tokens_per_second"].as_f64().unwrap() > 0.0, "{c}");
        let stages = c["stages"].as_array().unwrap();
        assert_eq!(stages[0]["begin"], 0, "{c}");
        assert_eq!(stages.last().unwrap()["end"], 8, "{c}");
        assert!(stages.iter().all(|s| s["memory_bytes"].as_u64().unwrap() > 0), "{c}");
    }
    assert_eq!(c[1]["stages"].as_array().unwrap().len(), 2, "exo's split uses every node: {p}");
    assert_eq!(c[2]["stages"].as_array().unwrap().len(), 1, "{p}");
    // nothing was loaded
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    assert_eq!(cl["instances"], json!([]), "{cl}");

    // hostile queries: a 4xx whose message names the field
    for (q, status, field) in [
        ("", 400, "model"),
        ("model=", 400, "model"),
        ("model=/etc/passwd", 400, "path"),
        ("model=../tiny-llama", 400, "path"),
        ("model=tiny-llama.gguf", 400, "path"),
        ("model=tiny-llama&ctx=abc", 400, "ctx"),
        ("model=tiny-llama&ctx=0", 400, "ctx"),
        ("model=tiny-llama&ctx=4096", 400, "ctx: 4096 is more than"),
        ("model=tiny-llama&ctx=99999999999", 400, "ctx"),
        ("model=tiny-llama&model=x", 400, "model"),
        ("model=tiny-llama&evil=1", 400, "evil"),
        ("model=a%00b", 400, "control characters"),
        ("model=a%ffb", 404, "not found"),
        ("model=no-such-model", 404, "no-such-model"),
    ] {
        let r = http.get(format!("{api}/placements/preview?{q}")).send().await.unwrap();
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!(got, status, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{q}: {v}");
    }

    // a request over a 2-stage placement, then the counters
    let placement = json!([{ "node": "a", "begin": 0, "end": 5 }, { "node": "b", "begin": 5, "end": 8 }]);
    let r = http
        .post(format!("{api}/instances"))
        .json(&json!({ "model": "tiny-llama", "placement": placement }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let body = json!({ "model": "tiny-llama", "prompt": "Hello there", "stream": false, "raw": true,
        "options": { "num_predict": 6, "temperature": 0 } });
    let v: Value = http.post(format!("{api}/api/generate")).json(&body).send().await.unwrap().json().await.unwrap();
    let generated = v["eval_count"].as_f64().unwrap();
    let prompt = v["prompt_eval_count"].as_f64().unwrap();
    let r = http.get(format!("{api}/metrics")).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let text = r.text().await.unwrap();
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get("exo_requests_total{model=\"tiny-llama\"}"), 1.0);
    assert_eq!(get("exo_generated_tokens_total{model=\"tiny-llama\"}"), generated);
    assert_eq!(get("exo_prompt_tokens_total{model=\"tiny-llama\"}"), prompt);
    assert_eq!(get("exo_requests_finished_total{model=\"tiny-llama\",reason=\"length\"}"), 1.0);
    assert_eq!(get("exo_time_to_first_token_seconds_count{model=\"tiny-llama\"}"), 1.0);
    assert_eq!(get("exo_time_to_first_token_seconds_bucket{model=\"tiny-llama\",le=\"+Inf\"}"), 1.0);
    assert_eq!(get("exo_load_duration_seconds_count{model=\"tiny-llama\"}"), 1.0);
    assert_eq!(get("exo_queue_depth{model=\"tiny-llama\"}"), 0.0);
    assert_eq!(get("exo_active_requests{model=\"tiny-llama\"}"), 0.0);
    for (k, node, layers) in [(0, "a", "0:5"), (1, "b", "5:8")] {
        let l = format!("{{model=\"tiny-llama\",stage=\"{k}\",node=\"{node}\",layers=\"{layers}\"}}");
        assert!(get(&format!("exo_stage_compute_seconds_total{l}")) > 0.0, "{text}");
        // the prompt once, then one row per generated token but the last
        assert!(get(&format!("exo_stage_rows_total{l}")) >= prompt + generated - 1.0, "{text}");
    }
    assert!(get("exo_hop_data_bytes_sent_total{from=\"a\",to=\"b\"}") > 0.0, "{text}");
    assert!(get("exo_peer_rtt_seconds{from=\"a\",to=\"b\"}") > 0.0, "{text}");
    assert!(text.contains("exo_node_memory_offered_bytes{node=\"a\",backend=\"cpu\"}"), "{text}");

    // exo ps and exo plan against the running node
    let out = exo_at(&api, &["ps"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("tiny-llama") && stdout.contains("a=0:5,b=5:8"), "{stdout}");
    assert!(stdout.contains("from now"), "{stdout}");
    let out = exo_at(&api, &["plan", "tiny-llama"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for s in ["exo-rs:", "exo-memory-split:", "one-node:", "tokens/s predicted", "nodes: a, b"] {
        assert!(stdout.contains(s), "{s}: {stdout}");
    }
    let out = exo_at(&api, &["plan", "tiny-llama", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["candidates"].as_array().unwrap().len(), 3, "{v}");
    let out = exo_at(&api, &["plan", "no-such-model"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-model"));
}

#[test]
fn plan_and_ps_without_a_node_say_how_to_start_one() {
    for args in [&["plan", "tiny-llama"][..], &["ps"]] {
        let out = common::exo(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains("no exo node is running") && err.contains("exo serve"), "{args:?}: {err}");
    }
}
