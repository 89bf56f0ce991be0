//! Placement knows where bytes are, on three `exo serve` processes where only node a holds the
//! model: the preview prices each stage's transfer (bytes, source, seconds over the measured
//! link), a node that fetched a window needs no bytes for it when placed again, and an automatic
//! placement between two equally fast nodes goes to the one that holds (most of) the model.

use crate::common;

use common::nodes::{spawn_env, wait_for, ANY};
use exo::gguf::{GgufFile, ModelFiles, ModelShape};
use exo::placement::{bytes_to_move, Holds, ModelCost, Weights};
use exo::store::partial::{missing, window_ranges, Partial};
use serde_json::{json, Value};
use std::path::Path;

/// Bytes of the window `[b, e)` as a stage's fetch takes them (header included).
fn window_bytes(path: &Path, b: u32, e: u32) -> u64 {
    let shape = ModelShape::from_files(&ModelFiles::open(path).unwrap()).unwrap();
    window_ranges(&GgufFile::open(path).unwrap(), shape.n_layer, b, e).iter().map(|r| r.1 - r.0).sum()
}

/// Within the alignment padding that the placement's per-tensor sums leave out.
fn about(got: u64, want: u64) -> bool {
    got.abs_diff(want) <= want / 100 + 4096
}

/// Placement's bytes to move mirror what a stage's fetch takes: the window's ranges minus the
/// ranges of the windows the node holds, for tied and untied heads, first, middle and last
/// stages, with and without held windows.
#[test]
fn bytes_to_move_are_what_the_fetch_takes() {
    for preset in ["tiny-llama", "tiny-llama-tied"] {
        let path = common::model(preset);
        let shape = ModelShape::from_files(&ModelFiles::open(&path).unwrap()).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let n = shape.n_layer;
        let cost = ModelCost::from_shape(preset, &shape);
        let held_sets: [&[(u32, u32)]; 5] = [&[], &[(0, 3)], &[(5, n)], &[(2, 6)], &[(0, 2), (6, n)]];
        for held in held_sets {
            let holds = if held.is_empty() { vec![] } else { vec![("x".to_string(), Holds::Windows(held.to_vec()))] };
            let w = Weights { header_bytes: g.file_size - cost.total_weight_bytes(), holds, hub_bandwidth: vec![] };
            let have: Vec<(u64, u64)> =
                exo::store::partial::merge(held.iter().flat_map(|&(b, e)| window_ranges(&g, n, b, e)).collect(), 0);
            for (b, e) in [(0, n), (0, 3), (2, 6), (3, n), (7, n), (0, 1)] {
                let want: u64 = missing(&window_ranges(&g, n, b, e), &have).iter().map(|r| r.1 - r.0).sum();
                let got = bytes_to_move(&cost, &w, "x", b, e);
                // exact here: the generated models' tensors need no alignment padding
                assert_eq!(got, want, "{preset}, holding {held:?}, window {b}:{e}");
            }
        }
    }
}

async fn preview(http: &reqwest::Client, api: &str) -> Value {
    let r = http.get(format!("{api}/placements/preview?model=tiny-llama")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn candidate<'a>(p: &'a Value, strategy: &str) -> &'a Value {
    p["candidates"].as_array().unwrap().iter().find(|c| c["strategy"] == strategy).unwrap()
}

fn stage<'a>(c: &'a Value, node: &str) -> &'a Value {
    c["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["node"] == node)
        .unwrap_or_else(|| panic!("no stage on {node}: {c}"))
}

async fn generate(http: &reqwest::Client, api: &str) -> String {
    let body = json!({ "model": "tiny-llama", "prompt": "The quick brown fox jumps over", "stream": false,
        "raw": true, "options": { "num_predict": 12, "seed": 0, "temperature": 0.0 } });
    let r = http.post(format!("{api}/api/generate")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{v}");
    v["response"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placements_know_where_the_bytes_are() {
    let model = common::model("tiny-llama");
    let n = ModelShape::from_files(&ModelFiles::open(&model).unwrap()).unwrap().n_layer;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    std::os::unix::fs::symlink(&model, dirs[0].path().join("tiny-llama.gguf")).unwrap();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path().to_str().unwrap();
    // a holds the model and decodes at half the speed of b and c, which are equally fast: the
    // fastest placements are b alone and c alone
    let slow = [("EXO_CONFIG_DIR", cfg), ("EXO_DECODE_GBPS", "5")];
    let fast = [("EXO_CONFIG_DIR", cfg)];
    let a = spawn_env("a", dirs[0].path(), ANY, &[], &[], &slow);
    let b = spawn_env("b", dirs[1].path(), ANY, &[&a.peer], &[], &fast);
    let _c = spawn_env("c", dirs[2].path(), ANY, &[&a.peer, &b.peer], &[], &fast);
    let api = a.api.clone();
    let http = reqwest::Client::new();
    // profiles, what a holds, and the links b and c measured (shared with their pongs)
    wait_for(&http, &format!("{api}/cluster"), |v| {
        let nodes = v["nodes"].as_array().map_or(&[][..], |n| n.as_slice());
        // b's figure for c and c's for b (not only for a): what the stage-to-stage links use
        let measured = |by: &str| {
            let other = if by == "b" { "c" } else { "b" };
            v["links"].as_array().is_some_and(|l| l.iter().any(|l| l["measured_by"] == by && l["to"] == other))
        };
        nodes.len() == 3
            && nodes.iter().all(|x| x["profile"]["memory_offered"].is_u64())
            && nodes[0]["held"][0]["whole"] == true
            && measured("b")
            && measured("c")
    })
    .await;
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    let links = cl["links"].as_array().unwrap();
    assert!(links.iter().any(|l| l["from"] == "b" && l["to"] == "c" && l["measured_by"] == "b"), "{cl}");

    // before anything moved: every stage off a fetches its window from a
    let p = preview(&http, &api).await;
    let ours = candidate(&p, "exo-rs");
    assert_eq!(ours["stages"].as_array().unwrap().len(), 1, "{ours}");
    let s = &ours["stages"][0];
    assert_eq!(s["node"], "b", "equally fast, nobody but a holds it: the first of b and c; {ours}");
    assert_eq!(s["move_from"], "a", "{s}");
    assert!(about(s["move_bytes"].as_u64().unwrap(), window_bytes(&model, 0, n)), "{s}");
    assert!(s["move_seconds"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(ours["move_bytes"], s["move_bytes"]);
    let split = candidate(&p, "exo-memory-split");
    assert_eq!(split["stages"].as_array().unwrap().len(), 3, "{split}");
    let on_a = stage(split, "a");
    assert_eq!((on_a["move_bytes"].as_u64(), on_a["move_from"].is_null()), (Some(0), true), "{split}");
    for node in ["b", "c"] {
        let s = stage(split, node);
        let (b, e) = (s["begin"].as_u64().unwrap() as u32, s["end"].as_u64().unwrap() as u32);
        assert_eq!(s["move_from"], "a", "{s}");
        assert!(about(s["move_bytes"].as_u64().unwrap(), window_bytes(&model, b, e)), "{s}");
    }
    let slowest = ["b", "c"].iter().map(|x| stage(split, x)["move_seconds"].as_f64().unwrap()).fold(0.0, f64::max);
    assert_eq!(split["move_seconds"].as_f64().unwrap(), slowest, "the stages fetch in parallel");

    // c gets layers 2.. (the head included) from a
    let placement = json!([{ "node": "a", "begin": 0, "end": 2 }, { "node": "c", "begin": 2, "end": n }]);
    let r = http.post(format!("{api}/instances")).json(&json!({ "model": "tiny-llama", "placement": placement }));
    let r = r.send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let forced_text = generate(&http, &api).await;
    assert!(Partial::open(&Partial::path_in(dirs[2].path(), "tiny-llama")).unwrap().has_window(2, n));
    wait_for(&http, &format!("{api}/cluster"), |v| {
        v["nodes"].as_array().unwrap().iter().any(|x| x["name"] == "c" && x["held"][0]["windows"] == json!([[2, n]]))
    })
    .await;

    // placing again: c's window is not fetched again (only what lies outside it), and ours now
    // goes to c, which lacks only the first two layers and the embedding (b lacks everything)
    let p = preview(&http, &api).await;
    let split = candidate(&p, "exo-memory-split");
    let on_c = stage(split, "c");
    let (b, e) = (on_c["begin"].as_u64().unwrap() as u32, on_c["end"].as_u64().unwrap() as u32);
    let lacks = window_bytes(&model, b, e) - window_bytes(&model, b.max(2), e.max(2));
    assert!(about(on_c["move_bytes"].as_u64().unwrap(), lacks), "{split}: c lacks {lacks}");
    assert_eq!(on_c["move_from"].is_null(), lacks == 0, "{split}");
    let ours = candidate(&p, "exo-rs");
    let s = &ours["stages"][0];
    assert_eq!(
        (s["node"].as_str(), s["begin"].as_u64(), s["end"].as_u64()),
        (Some("c"), Some(0), Some(n as u64)),
        "{p}"
    );
    let lacking = window_bytes(&model, 0, n) - window_bytes(&model, 2, n);
    assert!(about(s["move_bytes"].as_u64().unwrap(), lacking), "{s}; lacks {lacking}");
    // `exo plan` shows the same
    let out = common::exo_command()
        .args(["plan", "tiny-llama"])
        .env("EXO_API_ADDR", api.trim_start_matches("http://"))
        .env("EXO_CONFIG_DIR", cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("TO MOVE") && text.contains("from a in") && text.contains("before loading"), "{text}");

    // an automatic placement: c (equally fast as b, holding most of the model) runs it
    let r = http.delete(format!("{api}/instances/tiny-llama")).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(generate(&http, &api).await, forced_text, "the same text on one node as over two");
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    let stages = cl["instances"][0]["stages"].as_array().unwrap();
    assert!(stages.iter().all(|s| s["node"] == "c"), "{cl}");
    assert!(Partial::open(&Partial::path_in(dirs[2].path(), "tiny-llama")).unwrap().has_window(0, n));
    // and once more, when a has heard: c holds every layer now (its partial is complete and
    // verified, so it is advertised whole), nothing moves
    wait_for(&http, &format!("{api}/cluster"), |v| {
        v["nodes"].as_array().unwrap().iter().any(|x| x["name"] == "c" && x["held"][0]["whole"] == true)
    })
    .await;
    let p = preview(&http, &api).await;
    let ours = candidate(&p, "exo-rs");
    assert_eq!((ours["stages"][0]["node"].as_str(), ours["move_bytes"].as_u64()), (Some("c"), Some(0)), "{ours}");
    assert!(ours["stages"][0]["move_from"].is_null(), "{ours}");
    let b_log = std::fs::read_to_string(dirs[1].path().join("b.log")).unwrap();
    assert!(Partial::open(&Partial::path_in(dirs[1].path(), "tiny-llama")).is_none(), "b fetched something: {b_log}");
}
