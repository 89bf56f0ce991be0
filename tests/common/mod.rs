//! Shared helpers for integration tests: generated models, cached per build.
#![allow(dead_code)]

pub mod http;
pub mod hub;
pub mod load;
pub mod nodes;
pub mod procs;
pub mod real;
pub mod weights;
pub mod workload;

use exo::synth;
use std::path::PathBuf;

/// Path of a generated preset model, written on first use (deterministic, so concurrent writers
/// produce identical files; the writer renames atomically).
pub fn model(preset: &str) -> PathBuf {
    let spec = synth::preset(preset).unwrap_or_else(|| panic!("unknown preset {preset}"));
    model_from(&spec, preset)
}

pub fn model_from(spec: &synth::ModelSpec, file_stem: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{file_stem}.gguf"));
    if !p.exists() {
        synth::make_model(spec, &p).unwrap();
    }
    p
}

/// Running under CI (`CI` set and not empty): what a developer's machine may skip must run there.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A test that cannot run here says why and returns; under CI that is a failure instead (a
/// missing tool or model there is a broken setup, never a pass).
pub fn skip(why: &str) {
    assert!(!under_ci(), "under CI this test must run, but: {why}");
    eprintln!("skipped: {why}");
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A store over `dir` only: no other tools' caches, no network.
pub fn offline_store(dir: &std::path::Path) -> exo::store::Store {
    let mut s = exo::store::Store::from_env();
    s.dirs = vec![dir.to_path_buf()];
    s.read_only = vec![];
    s.hf_cache = None;
    s.ollama = None;
    s.offline = true;
    s.link_targets = link_targets();
    s
}

/// Where the tests' models live: the links in their models dirs point there, so those dirs are
/// what an `exo` the tests start allows links into (`EXO_LINK_TARGETS`).
pub fn link_targets() -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-models"),
    ];
    for var in ["EXO_TEST_REAL_MODEL", "EXO_TEST_SWA_MODEL"] {
        v.extend(std::env::var_os(var).map(PathBuf::from).and_then(|p| p.parent().map(|d| d.to_path_buf())));
    }
    v
}

/// The `exo` binary, allowed to follow the tests' links to their models.
pub fn exo_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_exo"));
    c.env("EXO_LINK_TARGETS", std::env::join_paths(link_targets()).expect("no colon in test paths"));
    c
}

/// Runs the `exo` binary as a user on a machine with no node running: no models dir, no mDNS,
/// no startup measurement.
pub fn exo(args: &[&str]) -> std::process::Output {
    exo_command()
        .args(args)
        .env("EXO_MODELS_DIRS", "/nonexistent")
        .env("EXO_API_ADDR", "127.0.0.1:1")
        .env("EXO_NO_DISCOVERY", "1")
        .env("EXO_DECODE_GBPS", "10")
        .env("EXO_CONFIG_DIR", config_dir())
        .output()
        .unwrap()
}

/// Eight prompts of different lengths for batching tests (tests/inproc/runtime.rs, tests/inproc/cluster.rs).
pub const BATCH_PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The quick brown fox jumps over the lazy dog and then",
    "In a hole in the ground there lived",
    "It was the best of times",
    "Call me Ishmael.",
    "All happy families are alike;",
    "A longer prompt, so that the batch holds rows of different lengths and positions",
    "Hello",
];
pub const BATCH_STEPS: usize = 24;

/// A config dir for CLI runs in tests (an embedded node creates its keys there, not in $HOME).
pub fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("exo-config")
}

/// One shared test cluster secret: in-process nodes given this are in one cluster (each with
/// its own fresh static key).
pub fn test_security() -> exo::transport::Security {
    security_for([7u8; 32])
}

/// A node of the cluster whose secret is `secret`.
pub fn security_for(secret: [u8; 32]) -> exo::transport::Security {
    let keys = exo::secret::NodeKeys::ephemeral(exo::secret::ClusterSecret::from_bytes(secret)).unwrap();
    exo::transport::Security::new(std::sync::Arc::new(keys))
}
