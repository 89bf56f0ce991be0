//! `exo bench` in one process: the report's shape and the figures that can be checked exactly
//! (token counts, bytes handed between stages), and usage errors.

use crate::common;

use common::exo;

use serde_json::Value;

fn bench(model: &str, extra: &[&str]) -> Value {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    let path = out_file.path().to_str().unwrap();
    let mut args = vec!["bench", model, "--pp", "16,40", "--tg", "24", "--repeat", "2", "--threads", "1"];
    args.extend_from_slice(&["--json-out", path]);
    args.extend_from_slice(extra);
    let out = exo(&args);
    assert!(out.status.success(), "exo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| pp16 |") && table.contains("| tg24 |") && table.contains("peak memory"), "{table}");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn reports_every_test_per_stage_and_what_crosses_between_stages() {
    let m = common::model("tiny-llama"); // 8 layers, n_embd 64
    let m = m.to_str().unwrap();
    for (split, n_stages) in [(None, 1usize), (Some("0:3,3:8"), 2), (Some("0:2,2:4,4:6,6:8"), 4)] {
        let r = match split {
            Some(s) => bench(m, &["--split", s]),
            None => bench(m, &[]),
        };
        assert_eq!(r["n_layer"], 8);
        assert_eq!(r["stages"].as_array().unwrap().len(), n_stages, "{r}");
        let names: Vec<&str> = r["tests"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["pp16", "pp40", "tg24"]);
        for t in r["tests"].as_array().unwrap() {
            let runs = t["runs"].as_array().unwrap();
            assert_eq!(runs.len(), 2, "{t}");
            assert!(t["tokens_per_s"].as_f64().unwrap() > 0.0, "{t}");
            assert!(t["ttft_ms"].as_f64().unwrap() > 0.0, "{t}");
            let stage_ms = t["stage_compute_ms"].as_array().unwrap();
            assert_eq!(stage_ms.len(), n_stages);
            assert!(stage_ms.iter().all(|x| x.as_f64().unwrap() > 0.0), "{t}");
            // in one process the hidden state of each token is handed over once per cut:
            // 64 floats x 4 bytes x (stages - 1), for prompt and generated tokens alike
            assert_eq!(t["transfer_bytes_per_token"].as_f64().unwrap(), (256 * (n_stages - 1)) as f64, "{t}");
            for run in runs {
                let n = t["n_prompt"].as_f64().unwrap() + t["n_gen"].as_f64().unwrap();
                let want = n / run["seconds"].as_f64().unwrap();
                assert!((run["tokens_per_s"].as_f64().unwrap() - want).abs() < 1e-6 * want, "{run}");
            }
        }
        let nodes = r["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0]["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    }
}

#[test]
fn generation_runs_produce_exactly_tg_tokens_even_past_end_of_generation() {
    // end-of-generation is banned (engine::sampler's test checks the ban itself), so a long
    // tg completes; the bench fails any run that generated fewer tokens than asked
    let m = common::model("tiny-llama");
    let out = exo(&["bench", m.to_str().unwrap(), "--pp", "", "--tg", "200", "--repeat", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["tests"][0]["name"], "tg200");
    assert_eq!(r["tests"][0]["n_gen"], 200);
}

#[test]
fn bad_arguments_are_usage_errors() {
    let m = common::model("tiny-llama");
    let m = m.to_str().unwrap();
    for (args, says) in [
        (vec!["--pp", "12x"], "not a token count"),
        (vec!["--repeat", "0"], "--repeat"),
        (vec!["--pp", "", "--tg", "0"], "nothing to measure"),
        (vec!["--split", "0:3,4:8"], "gap"),
        (vec!["--split", "a=0:4,b=4:8"], "running node"),
    ] {
        let mut all = vec!["bench", m];
        all.extend_from_slice(&args);
        let out = exo(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
