//! Weights travel with a ~1 GB generated model (TinyLlama-1.1B's shape, Q8_0) over three
//! `exo serve` processes where only node a has it: b's fetch, killed with its process half-way,
//! resumes after a restart from the pieces it had verified (a piece corrupted meanwhile is
//! fetched again), each node's disk holds only its window, and the text is a's own.

use crate::common;

use common::nodes::{spawn_env, wait_for, ANY};
use common::weights::{about, generate_n, partial_of, place_model, window_bytes};
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const MODEL: &str = "tinyllama-1b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_model_over_three_processes_with_a_killed_fetch_resumed() {
    let model = common::model(MODEL);
    let (da, db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join(format!("{MODEL}.gguf"))).unwrap();
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let a = spawn_env("a", da.path(), ANY, &[], &[], &env);
    let mut b = spawn_env("b", db.path(), ANY, &[&a.peer], &[], &env);
    let b_ports = b.ports;
    let _c = spawn_env("c", dc.path(), ANY, &[&a.peer, &b.peer], &[], &env);
    let api = a.api.clone();
    let http = reqwest::Client::new();
    let three = |v: &Value| {
        v["nodes"].as_array().is_some_and(|n| n.len() == 3 && n.iter().all(|x| x["profile"]["memory_offered"].is_u64()))
    };
    wait_for(&http, &format!("{api}/cluster"), three).await;
    // the reference: a alone
    place_model(&http, &api, MODEL, json!([{ "node": "a", "begin": 0, "end": 22 }])).await.unwrap();
    let want = generate_n(&http, &api, MODEL, "Once upon a time", 4).await;

    // b 0..14 (about 650 MB), c 14..18, a 18..22; b dies once it has verified some pieces
    let split = json!([{ "node": "b", "begin": 0, "end": 14 }, { "node": "c", "begin": 14, "end": 18 },
        { "node": "a", "begin": 18, "end": 22 }]);
    let placing = {
        let (http, api, split) = (http.clone(), api.clone(), split.clone());
        tokio::spawn(async move { place_model(&http, &api, MODEL, split).await })
    };
    let t = Instant::now();
    let pieces = loop {
        // the header, then at least one 64 MiB piece of the window
        if let Some(p) = partial_of(db.path(), MODEL).filter(|p| p.sidecar.pieces.len() >= 2) {
            break p.sidecar.pieces;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "b never recorded a piece");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    let window_b = window_bytes(&model, 0, 14);
    let before = partial_of(db.path(), MODEL).unwrap();
    assert!(!before.has_window(0, 14), "the fetch ended before b was killed");
    let kept: u64 = before.present().iter().map(|r| r.1 - r.0).sum();
    assert!(kept > 0 && kept < window_b, "{kept} of {window_b}");
    assert!(placing.await.unwrap().is_err(), "a placement on a killed node cannot succeed");
    // a piece b verified goes bad on its disk while it is down
    let bad = &pieces[1];
    let f = std::fs::OpenOptions::new().write(true).open(&before.path).unwrap();
    f.write_at(b"\xff\xff\xff\xff", bad.start + (bad.end - bad.start) / 2).unwrap();
    drop(f);

    // at the ports it had, so that c (which dialed it) finds it again
    let _b = spawn_env("b", db.path(), b_ports, &[&a.peer], &[], &env);
    wait_for(&http, &format!("{api}/cluster"), three).await;
    place_model(&http, &api, MODEL, split).await.unwrap();
    assert_eq!(generate_n(&http, &api, MODEL, "Once upon a time", 4).await, want, "over three nodes");

    // b's second fetch took what it lacked and the corrupt piece again, not the whole window
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    let second = cl["transfers"].as_array().unwrap().iter().find(|t| t["node"] == "b" && t["state"] == "done").cloned();
    let moved = second.expect("b's fetch is listed on a")["done_bytes"].as_u64().unwrap();
    let expect = window_b - kept + (bad.end - bad.start);
    assert!(moved.abs_diff(expect) <= 1 << 20, "b moved {moved}, expected about {expect} (kept {kept})");
    let log = std::fs::read_to_string(db.path().join("b.log")).unwrap();
    assert!(log.contains("corrupt ranges in a partial model"), "{log}");
    // each node's disk holds its window
    for (dir, b, e) in [(&db, 0, 14), (&dc, 14, 18)] {
        let p = partial_of(dir.path(), MODEL).unwrap();
        assert!(about(p.allocated(), window_bytes(&model, b, e)), "{b}..{e}: {} on disk", p.allocated());
    }
    assert!(partial_of(da.path(), MODEL).is_none(), "a has the whole file");
}
