//! `exo plan` on header-only GGUFs with real model shapes and a hypothetical cluster file.

use crate::common;
use exo::synth::{self, WeightType};
use std::path::{Path, PathBuf};
use std::process::Output;

const CLUSTER: &str = r#"
[[node]]
name = "mac-studio"
memory = "64GiB"
backend = "metal"
decode_gbps = 400

[[node]]
name = "dgx-spark"
memory = "128GiB"
backend = "cpu"
decode_gbps = 60

[[link]]
a = "mac-studio"
b = "dgx-spark"
bandwidth = "1Gbit"
latency = "0.3ms"
"#;

fn setup(dir: &Path, model: &str, q: WeightType) -> (PathBuf, PathBuf) {
    let m = dir.join(format!("{model}.gguf"));
    synth::make_header_only(&synth::real_shape(model, q).unwrap(), &m).unwrap();
    let c = dir.join("cluster.toml");
    std::fs::write(&c, CLUSTER).unwrap();
    (m, c)
}

fn plan(args: &[&str]) -> Output {
    common::exo_command()
        .arg("plan")
        .args(args)
        .env("EXO_MODELS_DIRS", "/nonexistent")
        // no node there, whatever runs on this machine
        .env("EXO_API_ADDR", "127.0.0.1:1")
        .output()
        .unwrap()
}

#[test]
fn table_and_json_for_a_model_that_overflows_the_fast_node() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = setup(d.path(), "llama-3.1-70b", WeightType::Q8_0);
    let out = plan(&[m.to_str().unwrap(), "--cluster", c.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("mac-studio") && text.contains("dgx-spark") && text.contains("predicted decode"), "{text}");

    let out = plan(&[m.to_str().unwrap(), "--cluster", c.to_str().unwrap(), "--json", "--ctx", "8192"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fits"], true);
    assert!(v["error"].is_null());
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[0]["begin"], 0);
    assert_eq!(stages[1]["end"], 80);
    // the Mac is ~7x faster: it should hold most layers
    let mac = stages.iter().find(|s| s["node"] == "mac-studio").unwrap();
    assert!(mac["end"].as_u64().unwrap() - mac["begin"].as_u64().unwrap() > 60, "{v}");
    for s in stages {
        assert!(
            s["memory_bytes"].as_u64().unwrap()
                >= s["weight_bytes"].as_u64().unwrap() + s["kv_bytes"].as_u64().unwrap()
        );
    }
    assert!(v["predicted_decode_tokens_per_second"].as_f64().unwrap() > 0.0);
    assert!(v["predicted_ttft_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn model_that_does_not_fit_says_by_how_much() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = setup(d.path(), "llama-3.1-405b", WeightType::Q4KM);
    let out = plan(&[m.to_str().unwrap(), "--cluster", c.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("short by") && err.contains("mac-studio lacks"), "{err}");
    let out = plan(&[m.to_str().unwrap(), "--cluster", c.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["fits"], false);
    assert!(v["error"].as_str().unwrap().contains("short by"));
}

#[test]
fn forced_split_is_checked() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = setup(d.path(), "llama-3.1-70b", WeightType::Q8_0);
    let (m, c) = (m.to_str().unwrap(), c.to_str().unwrap());
    let out = plan(&[m, "--cluster", c, "--split", "dgx-spark=0:40,mac-studio=40:80"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = plan(&[m, "--cluster", c, "--split", "mac-studio=0:79,dgx-spark=79:80"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mac-studio lacks") && err.contains("layers 0:79"), "{err}");
    let out = plan(&[m, "--cluster", c, "--split", "0:40,41:80"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bad_cluster_files_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let (m, c) = setup(d.path(), "llama-3.1-8b", WeightType::Q4KM);
    std::fs::write(&c, CLUSTER.replace("\"128GiB\"", "\"lots\"")).unwrap();
    let out = plan(&[m.to_str().unwrap(), "--cluster", c.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("node[1].memory") && err.contains("lots"), "{err}");
    // without --cluster: the live cluster, which needs a running node (none here)
    let out = plan(&[m.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("--cluster") && err.contains("exo serve"), "{err}");
    // what only a described cluster can do
    let out = plan(&[m.to_str().unwrap(), "--split", "0:40,40:80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("need --cluster"));
}
