//! `exo run` as a user runs it: the binary, a generated model, stdout compared byte for byte.

use crate::common;

use common::exo;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(model: &str, extra: &[&str]) -> Output {
    let mut args =
        vec!["run", model, "Tell me a story about a cat.", "--max-tokens", "64", "--ignore-eos", "--threads", "2"];
    args.extend_from_slice(extra);
    let out = exo(&args);
    assert!(out.status.success(), "exo {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn split_output_equals_unsplit_output_byte_for_byte() {
    for preset in ["tiny-llama", "tiny-qwen3moe"] {
        let m = common::model(preset);
        let m = m.to_str().unwrap();
        for sampling in [&["--temperature", "0"][..], &["--seed", "99", "--temperature", "0.9"][..]] {
            let whole = run(m, sampling).stdout;
            assert!(whole.len() > 64, "{preset}: only {} bytes of output", whole.len());
            for split in ["0:4,4:8", "0:3,3:6,6:8", "0:1,1:2,2:7,7:8"] {
                let mut args = sampling.to_vec();
                args.extend_from_slice(&["--split", split]);
                let parts = run(m, &args).stdout;
                assert_eq!(parts, whole, "{preset} {sampling:?} --split {split}");
            }
        }
    }
}

#[test]
fn different_seeds_give_different_output() {
    let m = common::model("tiny-llama");
    let m = m.to_str().unwrap();
    let a = run(m, &["--seed", "1"]).stdout;
    let b = run(m, &["--seed", "2"]).stdout;
    assert_ne!(a, b);
}

#[test]
fn invalid_splits_are_usage_errors_naming_the_problem() {
    let m = common::model("tiny-llama");
    let m = m.to_str().unwrap();
    for (split, says) in [
        ("0:4,5:8", "gap"),
        ("0:5,4:8", "overlap"),
        ("0:4,4:9", "beyond"),
        ("0:4,4:4,4:8", "empty"),
        ("0:4", "ends at layer 4"),
        ("zero:4", "cannot parse"),
    ] {
        let out = exo(&["run", m, "hi", "--split", split]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--split {split}: {err}");
        assert!(err.contains(says), "--split {split}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unknown_model_is_a_clear_runtime_error() {
    let out = exo(&["run", "no-such-model", "hi"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no-such-model") && err.contains("not found"), "{err}");
}

#[test]
fn model_is_found_by_name_in_models_dir_and_prompt_read_from_stdin() {
    let m = common::model("tiny-qwen2");
    let dir = m.parent().unwrap();
    let mut child = common::exo_command()
        .args(["run", "tiny-qwen2:latest", "--max-tokens", "8", "--seed", "3", "--verbose"])
        .env("EXO_MODELS_DIRS", dir)
        .env("EXO_API_ADDR", "127.0.0.1:1")
        .env("EXO_CONFIG_DIR", common::config_dir())
        .env("EXO_NO_DISCOVERY", "1")
        .env("EXO_DECODE_GBPS", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Why is the sky blue?").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("prompt eval rate:") && err.contains("eval rate:") && err.contains("load duration:"), "{err}");
    assert!(err.contains("placement: ") && err.contains(" 0:8"), "{err}");
}

#[test]
fn make_model_writes_a_loadable_model() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    let out = exo(&["dev", "make-model", "--preset", "tiny-llama-tied", "--out", p.to_str().unwrap(), "--layers", "4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = exo(&["run", p.to_str().unwrap(), "hello", "--max-tokens", "4", "--split", "0:2,2:4"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = exo(&["dev", "make-model", "--preset", "nope", "--out", "/tmp/x.gguf"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Interactive chat needs a terminal: `script` (util-linux, always on Debian) provides one.
#[test]
fn interactive_chat_in_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        common::skip("`script` is not installed, no pseudo-terminal to test with");
        return;
    }
    let m = common::model("tiny-llama");
    let cmd =
        format!("EXO_API_ADDR=127.0.0.1:1 {} run {} --max-tokens 6 --seed 1", env!("CARGO_BIN_EXE_exo"), m.display());
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\n/set parameter temperature 0\n/set parameter bogus 1\nAnd again\n/clear\n/bye\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.matches(">>> ").count() >= 5, "{text}");
    assert!(text.contains("Set parameter 'temperature' to '0'"), "{text}");
    assert!(text.contains("unknown parameter \"bogus\""), "{text}");
    assert!(text.contains("Cleared session context"), "{text}");
}
