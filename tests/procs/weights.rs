//! Weights travel: a stage's window in a sparse partial model (same outputs as the whole file,
//! only the window's bytes on disk), fetched with verification and resumption; and `exo serve`
//! nodes that lack the model fetching their windows from the node that has it.

use crate::common;

use common::nodes::{spawn_env, wait_for, ANY};
use common::weights::{generate_n, partial_of, place_model, window_bytes};
use exo::engine::{Batch, BatchInput, ContextParams, DecodeOutput, ModelWindow, StageHandle, StageSpec};
use exo::gguf::{GgufFile, ModelFiles, ModelShape};
use exo::store::fetch::{fetch_window, BoxFut, FileInfo, RangeSource, SourceError, PIECE};
use exo::store::partial::{allocated_bytes, hash_range, Partial};
use exo::synth;
use serde_json::{json, Value};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A whole file on this machine as a source; it fails every read after `fail_after` reads.
struct FileSource {
    path: PathBuf,
    reads: AtomicU64,
    bytes: AtomicU64,
    fail_after: u64,
}

impl FileSource {
    fn new(path: &Path, fail_after: u64) -> Arc<FileSource> {
        Arc::new(FileSource { path: path.into(), reads: 0.into(), bytes: 0.into(), fail_after })
    }
}

impl RangeSource for FileSource {
    fn name(&self) -> String {
        "a test file".into()
    }
    fn info(&self) -> BoxFut<'_, Result<FileInfo, SourceError>> {
        let g = GgufFile::open(&self.path).unwrap();
        Box::pin(async move { Ok(FileInfo { size: g.file_size, data_offset: g.data_offset }) })
    }
    fn hash(&self, start: u64, end: u64) -> BoxFut<'_, Result<Option<String>, SourceError>> {
        Box::pin(async move { hash_range(&self.path, start, end).map(Some).map_err(|e| e.to_string().into()) })
    }
    fn read(&self, start: u64, len: u32) -> BoxFut<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            if self.reads.fetch_add(1, Ordering::SeqCst) >= self.fail_after {
                return Err("the source went away".into());
            }
            let mut b = vec![0u8; len as usize];
            std::fs::File::open(&self.path).unwrap().read_exact_at(&mut b, start).map_err(|e| e.to_string())?;
            self.bytes.fetch_add(len as u64, Ordering::SeqCst);
            Ok(b)
        })
    }
}

/// Wide layers (about 4 MB each) so that a window dwarfs the header and the 1 MiB margin.
fn wide_model() -> PathBuf {
    let spec =
        synth::ModelSpec { n_embd: 256, n_ff: 1024, n_head: 8, n_head_kv: 4, ..synth::preset("tiny-llama").unwrap() };
    common::model_from(&spec, "wide-llama")
}

fn quiet() -> exo::store::fetch::OnProgress {
    Arc::new(|_, _| {})
}

/// One decode of 4 tokens (first stage) or 4 hidden rows through `[b, e)` of `path`.
async fn run_window(path: &Path, b: u32, e: u32, n_layer: u32) -> Vec<f32> {
    let stage = StageHandle::load(StageSpec {
        window: ModelWindow::layers(path, b, e),
        context: ContextParams { n_ctx: 64, n_batch: 8, n_ubatch: 8, n_threads: 1, n_seq_max: 1, exact: false },
    })
    .unwrap();
    let n_embd = stage.info().n_embd;
    let input = if b == 0 {
        BatchInput::Tokens(vec![1, 5, 9, 13])
    } else {
        BatchInput::Hidden((0..4 * n_embd).map(|i| ((i % 17) as f32 - 8.0) * 0.05).collect())
    };
    let batch =
        Batch { input, pos: vec![0, 1, 2, 3], seq: vec![0; 4], output: vec![true; 4], spec: Default::default() };
    match stage.decode(batch, e == n_layer, false).await.unwrap() {
        DecodeOutput::Hidden(h) => h,
        DecodeOutput::Last { logits, .. } => logits.concat(),
        DecodeOutput::Embedding(_) => panic!("an embedding from a plain decode"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_windows_load_like_the_whole_file_and_take_only_their_bytes() {
    let whole = wide_model();
    let n_layer = ModelShape::from_files(&ModelFiles::open(&whole).unwrap()).unwrap().n_layer;
    for (b, e) in [(0, 3), (3, 5), (5, n_layer)] {
        let d = tempfile::tempdir().unwrap();
        let src = FileSource::new(&whole, u64::MAX);
        let (path, done) = fetch_window(d.path(), "wide", (b, e), src.clone(), PIECE, quiet()).await.unwrap();
        let want = window_bytes(&whole, b, e);
        assert_eq!(done.bytes, want, "moved exactly the window's bytes");
        let du = allocated_bytes(&path);
        let size = std::fs::metadata(&whole).unwrap().len();
        println!("window {b}..{e}: {want} bytes of {size}; allocated {du}");
        assert!(du.abs_diff(want) <= want / 20 + (1 << 20), "allocated {du} vs window {want}");
        assert!(du < size / 2, "the file is sparse");
        assert_eq!(run_window(&path, b, e, n_layer).await, run_window(&whole, b, e, n_layer).await, "{b}..{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_transfers_resume_corrupt_ranges_come_again_and_windows_grow() {
    let whole = wide_model();
    let n_layer = ModelShape::from_files(&ModelFiles::open(&whole).unwrap()).unwrap().n_layer;
    let d = tempfile::tempdir().unwrap();
    let piece = 1 << 20; // 1 MiB pieces: the window is several
                         // the source goes away after 5 reads of 1 MiB chunks... (reads are 4 MiB at most; a piece is 1)
    let dying = FileSource::new(&whole, 5);
    let err = fetch_window(d.path(), "wide", (2, 6), dying, piece, quiet()).await.unwrap_err();
    assert!(err.to_string().contains("the source went away"), "{err}");
    let p = Partial::open(&Partial::path_in(d.path(), "wide")).unwrap();
    let kept: u64 = p.present().iter().map(|r| r.1 - r.0).sum();
    assert!(kept > 0 && !p.has_window(2, 6), "some verified pieces were kept: {kept}");

    // resumed: only what was missing moves
    let src = FileSource::new(&whole, u64::MAX);
    let (path, done) = fetch_window(d.path(), "wide", (2, 6), src.clone(), piece, quiet()).await.unwrap();
    let want = window_bytes(&whole, 2, 6);
    assert_eq!(done.bytes + kept, want, "resumed from the {kept} verified bytes");
    assert_eq!(run_window(&path, 2, 6, n_layer).await, run_window(&whole, 2, 6, n_layer).await);

    // a byte flipped on disk: found, that piece alone fetched again
    let p = Partial::open(&path).unwrap();
    let victim = p.sidecar.pieces[p.sidecar.pieces.len() / 2].clone();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAB, 0xCD], victim.start + 7).unwrap();
    let src = FileSource::new(&whole, u64::MAX);
    let (_, done) = fetch_window(d.path(), "wide", (2, 6), src, piece, quiet()).await.unwrap();
    assert_eq!((done.repaired, done.bytes), (1, victim.end - victim.start));
    assert_eq!(run_window(&path, 2, 6, n_layer).await, run_window(&whole, 2, 6, n_layer).await);

    // the same or a smaller window moves nothing; a larger one only its new layers
    for (b, e) in [(2, 6), (3, 5)] {
        let src = FileSource::new(&whole, u64::MAX);
        let (_, done) = fetch_window(d.path(), "wide", (b, e), src, piece, quiet()).await.unwrap();
        assert_eq!(done.bytes, 0, "{b}..{e} is already here");
    }
    let before = allocated_bytes(&path);
    let src = FileSource::new(&whole, u64::MAX);
    let (_, done) = fetch_window(d.path(), "wide", (0, n_layer), src, piece, quiet()).await.unwrap();
    assert_eq!(done.bytes, window_bytes(&whole, 0, n_layer) - want);
    assert!(allocated_bytes(&path) > before);
    assert!(Partial::open(&path).unwrap().has_window(0, n_layer));
    assert_eq!(run_window(&path, 0, n_layer, n_layer).await, run_window(&whole, 0, n_layer, n_layer).await);
    // a whole-looking partial is still not the model for the store
    let store = common::offline_store(d.path());
    assert!(store.resolve_name("wide").is_err());
    assert_eq!(store.partials().len(), 1);
    // `exo list` shows it as a partial with its layers
    let out = common::exo_command()
        .arg("list")
        .env("EXO_MODELS_DIRS", d.path())
        .env("EXO_MODELS_READ_ONLY_DIRS", "")
        .env("HOME", d.path())
        .env("EXO_CONFIG_DIR", common::config_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("partial") && text.contains(&format!("layers 0..{n_layer} of {n_layer}")),
        "{text}"
    );
}

async fn generate(http: &reqwest::Client, base: &str, prompt: &str) -> String {
    generate_n(http, base, "tiny-llama", prompt, 16).await
}

async fn place(http: &reqwest::Client, base: &str, placement: Value) {
    place_model(http, base, "tiny-llama", placement).await.unwrap();
}

/// The partial of tiny-llama under a node's models dir.
fn node_partial(dir: &Path) -> Partial {
    partial_of(dir, "tiny-llama").expect("a partial model")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_model_fetch_their_windows_from_the_node_that_has_it() {
    let model = common::model("tiny-llama");
    let n_layer = ModelShape::from_files(&ModelFiles::open(&model).unwrap()).unwrap().n_layer;
    // only node a has the model; b and c start with empty models dirs
    let (da, db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join("tiny-llama.gguf")).unwrap();
    // one cluster secret for the three (each node's HOME is its own models dir)
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let a = spawn_env("a", da.path(), ANY, &[], &[], &env);
    let b = spawn_env("b", db.path(), ANY, &[&a.peer], &[], &env);
    let _c = spawn_env("c", dc.path(), ANY, &[&a.peer, &b.peer], &[], &env);
    let api = a.api.clone();
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{api}/cluster"), |v| v["nodes"].as_array().is_some_and(|n| n.len() == 3)).await;
    let prompt = "The quick brown fox jumps over";
    let want = generate(&http, &api, prompt).await;

    // 2 nodes: b takes the first half (embedding included) from a
    place(&http, &api, json!([{ "node": "b", "begin": 0, "end": 4 }, { "node": "a", "begin": 4, "end": n_layer }]))
        .await;
    assert_eq!(generate(&http, &api, prompt).await, want, "b's window from a partial model");
    let pb = node_partial(db.path());
    let window = window_bytes(&model, 0, 4);
    assert!(pb.allocated().abs_diff(window) <= window / 20 + (1 << 20), "b holds {} for {window}", pb.allocated());
    assert!(pb.has_window(0, 4));
    // the others learn what b holds from its pongs: a has the whole file, b a window
    wait_for(&http, &format!("{api}/cluster"), |v| {
        let held = |n: &str| v["nodes"].as_array().unwrap().iter().find(|x| x["name"] == n).unwrap()["held"].clone();
        held("b")[0]["windows"] == json!([[0, 4]]) && held("b")[0]["whole"] == false && held("a")[0]["whole"] == true
    })
    .await;

    // 3 nodes: c gets the last stage (head) from a; b grows its file to 0..6
    place(
        &http,
        &api,
        json!([{ "node": "a", "begin": 0, "end": 2 }, { "node": "b", "begin": 2, "end": 6 }, { "node": "c", "begin": 6, "end": n_layer }]),
    )
    .await;
    assert_eq!(generate(&http, &api, prompt).await, want, "over 3 nodes");
    assert!(node_partial(db.path()).has_window(0, 6), "the larger window extended b's file");
    let pc = node_partial(dc.path());
    let window = window_bytes(&model, 6, n_layer);
    assert!(pc.allocated().abs_diff(window) <= window / 20 + (1 << 20));
    let log = std::fs::read_to_string(db.path().join("b.log")).unwrap();
    assert!(log.contains("window in place"), "{log}");
}

/// Automatic placement: node a holds the model but cannot run it (--memory-limit); the
/// placement puts it on b, which has nothing, and b fetches it from a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_placement_on_a_node_without_the_model_fetches_it() {
    let model = common::model("tiny-llama");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join("tiny-llama.gguf")).unwrap();
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let a = spawn_env("a", da.path(), ANY, &[], &["--memory-limit", "20MiB"], &env);
    let _b = spawn_env("b", db.path(), ANY, &[&a.peer], &[], &env);
    let api_a = a.api.clone();
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{api_a}/cluster"), |v| {
        v["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x["name"] == "b" && x["profile"]["memory_offered"].is_u64()))
    })
    .await;
    let prompt = "The quick brown fox jumps over";
    let got = generate(&http, &api_a, prompt).await;
    let cl: Value = http.get(format!("{api_a}/cluster")).send().await.unwrap().json().await.unwrap();
    assert!(cl["instances"][0]["stages"].as_array().unwrap().iter().all(|s| s["node"] == "b"), "{cl}");
    assert!(node_partial(db.path()).has_window(0, 8));
    assert!(common::offline_store(db.path()).resolve_name("tiny-llama").is_err(), "a partial is never the whole model");
    // the same text as one node holding the model
    let dr = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&model, dr.path().join("tiny-llama.gguf")).unwrap();
    let r = spawn_env("ref", dr.path(), ANY, &[], &[], &[]);
    let api_r = r.api.clone();
    wait_for(&http, &format!("{api_r}/cluster"), |v| v["nodes"].is_array()).await;
    assert_eq!(got, generate(&http, &api_r, prompt).await);
}

/// `exo run tiny-llama "Once upon a time"` (8 greedy tokens) with `args` and `env`.
async fn exo_run(args: Vec<String>, env: Vec<(&'static str, String)>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        common::exo_command()
            .args(["run", "tiny-llama", "Once upon a time", "--temperature", "0", "--max-tokens", "8"])
            .args(args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// `exo run` through node a, placing a stage on b which lacks the model: b reports its fetch to
/// a, a lists it among its transfers, and `exo run` says (a bar on a terminal, a line here) how
/// b's window came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exo_run_shows_each_node_fetching_its_window() {
    let model = common::model("tiny-llama");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join("tiny-llama.gguf")).unwrap();
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let a = spawn_env("a", da.path(), ANY, &[], &[], &env);
    let _b = spawn_env("b", db.path(), ANY, &[&a.peer], &[], &env);
    let api = a.api.clone();
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{api}/cluster"), |v| v["nodes"].as_array().is_some_and(|n| n.len() == 2)).await;
    let args = vec!["--split".into(), "b=0:5,a=5:8".into()];
    let env = vec![
        ("EXO_API_ADDR", format!("127.0.0.1:{}", a.ports.0)),
        ("EXO_CONFIG_DIR", config.path().display().to_string()),
        ("EXO_MODELS_DIRS", "/nonexistent".into()),
    ];
    let out = exo_run(args, env).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty());
    let line = err.lines().find(|l| l.starts_with("b: ")).unwrap_or_else(|| panic!("no line for b: {err}"));
    assert!(line.contains("of tiny-llama from node a in"), "{line}");
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    let t = cl["transfers"].as_array().unwrap().iter().find(|t| t["node"] == "b").cloned().unwrap();
    let window = window_bytes(&model, 0, 5) - GgufFile::open(&model).unwrap().data_offset;
    assert_eq!((t["state"].as_str(), t["kind"].as_str()), (Some("done"), Some("window")), "{t}");
    assert!(t["done_bytes"].as_u64().unwrap().abs_diff(window) < window / 20 + (1 << 20), "{t} vs {window}");
}

/// `exo run` with no node running here joins the cluster itself (EXO_PEERS): a model only node a
/// holds comes as a header, then this process's own window, and never whole; the text is the one
/// node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exo_run_without_a_local_node_fetches_only_its_window() {
    let model = common::model("tiny-llama");
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join("tiny-llama.gguf")).unwrap();
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let a = spawn_env("a", da.path(), ANY, &[], &[], &env);
    let http = reqwest::Client::new();
    wait_for(&http, &format!("{}/cluster", a.api), |v| v["nodes"].is_array()).await;
    // nothing answers at EXO_API_ADDR, so the runtime runs in the `exo run` process
    let no_api = "127.0.0.1:1".to_string();
    let run = |models: &Path, args: Vec<String>, peers: Option<String>| {
        let models = models.display().to_string();
        let env = vec![
            ("EXO_API_ADDR", no_api.clone()),
            ("EXO_CONFIG_DIR", config.path().display().to_string()),
            ("EXO_MODELS_DIRS", models.clone()),
            ("EXO_MODELS_READ_ONLY_DIRS", String::new()),
            ("HOME", models),
            ("EXO_OFFLINE", "1".into()),
            ("EXO_NO_DISCOVERY", "1".into()),
            ("EXO_NODE_NAME", "r".into()),
            ("EXO_PEERS", peers.unwrap_or_default()),
        ];
        exo_run([args, vec!["--threads".into(), "1".into()]].concat(), env)
    };
    let want = run(da.path(), vec![], None).await;
    assert!(want.status.success(), "{}", String::from_utf8_lossy(&want.stderr));
    let split = vec!["--split".to_string(), "r=0:5,a=5:8".to_string()];
    let got = run(dr.path(), split, Some(a.peer.clone())).await;
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(got.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&got.stdout), String::from_utf8_lossy(&want.stdout), "{err}");
    let p = partial_of(dr.path(), "tiny-llama").expect("a partial model");
    assert!(p.has_window(0, 5));
    let window = window_bytes(&model, 0, 5);
    assert!(p.allocated().abs_diff(window) <= window / 20 + (1 << 20), "r holds {} for {window}", p.allocated());
    assert!(common::offline_store(dr.path()).resolve_name("tiny-llama").is_err(), "nothing whole at r");
}

/// An automatic placement over two nodes where only a holds the model: neither node alone has
/// the memory (each offers 80% of what one stage holding everything needs; wide layers, so that
/// half the weights save more than a second stage's compute buffers cost), so the load policy
/// splits it by itself; b fetches its window from a, the text is the one node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_split_fetches_the_other_nodes_window() {
    let model = wide_model();
    let config = tempfile::tempdir().unwrap();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap())];
    let http = reqwest::Client::new();
    let prompt = "The quick brown fox jumps over";
    // one sequence, so the policy cannot fit one node by shrinking the KV cache instead
    let one = ["--parallel", "1"];
    // what one node needs: the preview of a node alone holding the model
    let dr = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&model, dr.path().join("wide-llama.gguf")).unwrap();
    let r = spawn_env("ref", dr.path(), ANY, &[], &one, &[]);
    let api_r = r.api.clone();
    let p =
        wait_for(&http, &format!("{api_r}/placements/preview?model=wide-llama"), |v| v["candidates"].is_array()).await;
    let ours = p["candidates"].as_array().unwrap().iter().find(|c| c["strategy"] == "exo-rs").cloned().unwrap();
    let need = ours["stages"][0]["memory_bytes"].as_u64().unwrap_or_else(|| panic!("{ours}"));
    let want = generate_n(&http, &api_r, "wide-llama", prompt, 16).await;

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::os::unix::fs::symlink(&model, da.path().join("wide-llama.gguf")).unwrap();
    let limit = format!("{}", need * 8 / 10);
    let args = ["--parallel", "1", "--memory-limit", limit.as_str()];
    let a = spawn_env("a", da.path(), ANY, &[], &args, &env);
    let _b = spawn_env("b", db.path(), ANY, &[&a.peer], &args, &env);
    let api = a.api.clone();
    wait_for(&http, &format!("{api}/cluster"), |v| {
        v["nodes"].as_array().is_some_and(|n| {
            n.len() == 2
                && n.iter().all(|x| x["profile"]["memory_offered"].is_u64())
                && n[0]["held"][0]["whole"] == true
        })
    })
    .await;
    assert_eq!(generate_n(&http, &api, "wide-llama", prompt, 16).await, want, "split by the policy");
    let cl: Value = http.get(format!("{api}/cluster")).send().await.unwrap().json().await.unwrap();
    let stages = cl["instances"][0]["stages"].as_array().unwrap().clone();
    assert_eq!(stages.len(), 2, "{cl}");
    let on_b = stages.iter().find(|s| s["node"] == "b").unwrap_or_else(|| panic!("no stage on b: {cl}"));
    let (b, e) = (on_b["begin"].as_u64().unwrap() as u32, on_b["end"].as_u64().unwrap() as u32);
    let p = partial_of(db.path(), "wide-llama").expect("a partial model");
    assert!(p.has_window(b, e), "{cl}");
    let window = window_bytes(&model, b, e);
    assert!(p.allocated().abs_diff(window) <= window / 20 + (1 << 20), "b holds {} for {window}", p.allocated());
}

/// A disk without room for the window: refused before a byte of it moves, naming what is needed
/// and what is free; no partial file is left behind (one holding a finished window is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_does_not_fit_the_disk_is_refused_before_fetching() {
    use exo::store::fetch::{fetch_window_on, Room};
    let whole = wide_model();
    let d = tempfile::tempdir().unwrap();
    let want = window_bytes(&whole, 2, 6);
    let small = move |_: &std::path::Path| Ok(want / 2);
    let src = FileSource::new(&whole, u64::MAX);
    let room = Room { free: &small, budget: None };
    let err = fetch_window_on(d.path(), "wide", (2, 6), src.clone(), PIECE, quiet(), &room).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not enough free space") && msg.contains("free"), "{msg}");
    assert!(Partial::open(&Partial::path_in(d.path(), "wide")).is_none(), "no partial left: {msg}");
    assert!(!Partial::path_in(d.path(), "wide").exists());

    // room for one window: it is fetched; the next that does not fit leaves it in place
    let (path, _) = fetch_window(d.path(), "wide", (2, 4), src.clone(), PIECE, quiet()).await.unwrap();
    let tiny = |_: &std::path::Path| Ok(1024);
    let room = Room { free: &tiny, budget: None };
    assert!(fetch_window_on(d.path(), "wide", (4, 6), src.clone(), PIECE, quiet(), &room).await.is_err());
    assert!(Partial::open(&path).is_some_and(|p| p.has_window(2, 4)), "the finished window stays");
}

/// A disk that fills while the window arrives (its free space misread, as when another writer
/// takes it meanwhile): a real tmpfs smaller than the window. The fetch fails and removes its
/// partial file: the disk is not left full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_fills_during_a_fetch_is_not_left_full() {
    use exo::store::fetch::{fetch_window_on, Room};
    let whole = wide_model();
    let want = window_bytes(&whole, 2, 6);
    let mnt = tempfile::tempdir().unwrap();
    let size = (want / 2).div_ceil(4096) * 4096;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        common::skip("cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(mnt.path());
    let empty = fs4::available_space(mnt.path()).unwrap();
    let plenty = |_: &std::path::Path| Ok(u64::MAX / 4);
    let room = Room { free: &plenty, budget: None };
    let src = FileSource::new(&whole, u64::MAX);
    let err = fetch_window_on(mnt.path(), "wide", (2, 6), src, PIECE, quiet(), &room).await.unwrap_err();
    println!("{want} bytes onto a {size}-byte tmpfs: {err}");
    assert!(!Partial::path_in(mnt.path(), "wide").exists(), "the partial file was removed: {err}");
    let after = fs4::available_space(mnt.path()).unwrap();
    assert!(after + (64 << 10) >= empty, "the space came back: {after} of {empty} free");
}

/// EXO_PARTIAL_BUDGET_GB holds before a fetch: a window that would take the partial models past
/// it is refused before a byte of it moves (saying so); within it, the least recently used other
/// partial is deleted before the new window arrives, not after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partial_budget_holds_before_a_fetch() {
    use exo::store::fetch::{fetch_window_on, Room};
    let whole = wide_model();
    let want = window_bytes(&whole, 2, 6);
    let d = tempfile::tempdir().unwrap();
    let plenty = |_: &std::path::Path| Ok(u64::MAX / 4);
    let src = FileSource::new(&whole, u64::MAX);
    let fetch = |model: &'static str, budget: u64| {
        let (dir, src) = (d.path().to_path_buf(), src.clone());
        async move {
            let room = Room { free: &plenty, budget: Some(budget) };
            fetch_window_on(&dir, model, (2, 6), src, PIECE, quiet(), &room).await
        }
    };
    let err = fetch("a", want / 2).await.unwrap_err().to_string();
    assert!(err.contains("EXO_PARTIAL_BUDGET_GB"), "{err}");
    assert!(!Partial::path_in(d.path(), "a").exists(), "nothing kept: {err}");

    let one = fetch("a", 4 * want).await.unwrap().0;
    let held = Partial::open(&one).unwrap().allocated();
    // room for one and a half: "a" goes before "b" is fetched
    let (two, _) = fetch("b", held * 3 / 2).await.unwrap();
    assert!(!one.exists(), "the least recently used partial made room");
    assert!(Partial::open(&two).is_some_and(|p| p.has_window(2, 6)));
}
