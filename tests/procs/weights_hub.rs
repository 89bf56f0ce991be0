//! Windows from the hub and from whichever node holds the model: the hub as a range source
//! (only a window's bytes move, a dropped connection is asked again, an assembled file is checked
//! against the hub's SHA-256), and `exo serve` clusters where no node, or not the coordinator,
//! has the model.

use crate::common;

use common::hub::{self, Hub};
use common::nodes::{spawn_env, wait_for, Node, ANY};
use exo::gguf::{GgufFile, ModelFiles, ModelShape};
use exo::store::fetch::{fetch_window, FetchError, RangeSource, PIECE};
use exo::store::partial::{allocated_bytes, window_ranges, Partial};
use exo::store::{HubFile, HubRange, Store};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const REPO: &str = "test/wide";
const FILE: &str = "wide.gguf";
/// How the nodes name the hub's model.
const NAME: &str = "hf.co/test/wide";

/// Wide layers (about 4 MB each) so that a window dwarfs the header and the 1 MiB margin.
fn wide_model() -> PathBuf {
    let spec = exo::synth::ModelSpec {
        n_embd: 256,
        n_ff: 1024,
        n_head: 8,
        n_head_kv: 4,
        ..exo::synth::preset("tiny-llama").unwrap()
    };
    common::model_from(&spec, "wide-llama")
}

fn n_layer(path: &Path) -> u32 {
    ModelShape::from_files(&ModelFiles::open(path).unwrap()).unwrap().n_layer
}

fn window(path: &Path, b: u32, e: u32) -> Vec<(u64, u64)> {
    window_ranges(&GgufFile::open(path).unwrap(), n_layer(path), b, e)
}

fn bytes_of(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|x| x.1 - x.0).sum()
}

async fn hub_with_wide() -> (Arc<Hub>, String, PathBuf) {
    let model = wide_model();
    let h = Arc::new(Hub::default());
    h.add(REPO, FILE, std::fs::read(&model).unwrap());
    let url = hub::serve(h.clone()).await;
    (h, url, model)
}

fn store_for(dir: &Path, endpoint: &str) -> Store {
    let mut s = common::offline_store(dir);
    (s.offline, s.endpoint, s.token) = (false, endpoint.to_string(), None);
    s
}

async fn hub_source(store: &Store, model: &Path) -> Arc<dyn RangeSource> {
    let f =
        HubFile { repo: REPO.into(), file: FILE.into(), size: std::fs::metadata(model).unwrap().len(), sha256: None };
    let r: HubRange = store.hub_range(&f).await.unwrap();
    Arc::new(r)
}

fn quiet() -> exo::store::fetch::OnProgress {
    Arc::new(|_, _| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_from_the_hub_takes_only_its_bytes_and_survives_a_dropped_connection() {
    let (h, url, model) = hub_with_wide().await;
    let d = tempfile::tempdir().unwrap();
    let store = store_for(d.path(), &url);
    let want = window(&model, 2, 5);
    // the connection drops half-way through the window's first tensor bytes
    let mid = want[1].0 + (want[1].1 - want[1].0) / 2;
    *h.drop_at.lock().unwrap() = Some((FILE.into(), mid));
    let (path, done) =
        fetch_window(d.path(), NAME, (2, 5), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap();
    assert!(h.drop_at.lock().unwrap().is_none(), "the connection was dropped");
    assert_eq!(done.bytes, bytes_of(&want), "received the window's bytes");
    // the hub served the header probe and the window, nothing of the other layers
    let (header_end, probe) = (want[0].1, 2 << 20);
    for (s, e) in h.data_requests(FILE) {
        let inside = s < probe || want.iter().any(|w| w.0 <= s && e < w.1);
        assert!(inside, "bytes {s}..={e} are outside the window {want:?}");
    }
    let served = h.data_bytes(FILE);
    let dropped = 4 << 20; // the chunk asked again
    println!("window 2..5: {} bytes, hub served {served} (header {header_end})", bytes_of(&want));
    assert!(served <= bytes_of(&want) + probe + dropped, "{served}");
    let du = allocated_bytes(&path);
    assert!(du.abs_diff(bytes_of(&want)) <= bytes_of(&want) / 20 + (1 << 20), "allocated {du}");
    // taken by size: hashed here and marked so
    let p = Partial::open(&path).unwrap();
    assert!(p.sidecar.pieces.iter().all(|x| x.unverified) && p.has_window(2, 5));
    // a corrupted byte on disk is still found by the local hashes, and that piece alone comes again
    let victim = p.sidecar.pieces.last().unwrap().clone();
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::File::options().write(true).open(&path).unwrap(),
        b"XY",
        victim.start + 3,
    )
    .unwrap();
    let before = h.data_bytes(FILE);
    let (_, done) =
        fetch_window(d.path(), NAME, (2, 5), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap();
    assert_eq!((done.repaired, done.bytes), (1, victim.end - victim.start));
    assert!(h.data_bytes(FILE) - before <= (victim.end - victim.start) + probe);
    // the header asked again (a stage checks the size first, then fetches) is read once
    let src = hub_source(&store, &model).await;
    let before = h.data_bytes(FILE);
    let first = src.info().await.unwrap();
    let once = h.data_bytes(FILE) - before;
    assert_eq!(src.info().await.unwrap(), first);
    assert_eq!(h.data_bytes(FILE) - before, once, "the second ask reads nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assembled_file_is_checked_against_the_hubs_sha256() {
    let (h, url, model) = hub_with_wide().await;
    let d = tempfile::tempdir().unwrap();
    let store = store_for(d.path(), &url);
    let n = n_layer(&model);
    // the hub sends bad bytes past the header: every range has its size, the whole does not match
    let data_offset = GgufFile::open(&model).unwrap().data_offset;
    *h.corrupt_from.lock().unwrap() = Some((FILE.into(), data_offset + 4096));
    let err = fetch_window(d.path(), NAME, (0, n), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap_err();
    assert!(matches!(err, FetchError::WholeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    let p = Partial::open(&Partial::path_in(d.path(), NAME)).unwrap();
    assert!(p.sidecar.pieces.is_empty() && p.sidecar.windows.is_empty(), "the unverified ranges were dropped");
    // fixed: the file assembles, matches and its ranges count as verified
    *h.corrupt_from.lock().unwrap() = None;
    let (path, _) =
        fetch_window(d.path(), NAME, (0, n), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap();
    let p = Partial::open(&path).unwrap();
    assert!(p.complete() && p.sidecar.pieces.iter().all(|x| !x.unverified));
    assert_eq!(exo::store::sha256_file(&path).unwrap(), exo::store::sha256_file(&model).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_ignores_ranges_or_misstates_the_size_is_refused() {
    let (h, url, model) = hub_with_wide().await;
    let d = tempfile::tempdir().unwrap();
    let store = store_for(d.path(), &url);
    *h.ignore_range.lock().unwrap() = true;
    let err = fetch_window(d.path(), NAME, (0, 2), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap_err();
    assert!(err.to_string().contains("ranges not supported"), "{err}");
    *h.ignore_range.lock().unwrap() = false;
    *h.claim_size.lock().unwrap() = Some(1 << 40);
    let err = fetch_window(d.path(), NAME, (0, 2), hub_source(&store, &model).await, PIECE, quiet()).await.unwrap_err();
    assert!(err.to_string().contains("Content-Range"), "{err}");
    *h.claim_size.lock().unwrap() = None;
    // a reference to another size of the file, or a hostile path, is refused before any read
    let size = std::fs::metadata(&model).unwrap().len();
    let other = HubFile { repo: REPO.into(), file: FILE.into(), size: size + 1, sha256: None };
    assert!(store.hub_range(&other).await.err().unwrap().to_string().contains("bytes"));
    let evil = HubFile { repo: REPO.into(), file: "../../etc/passwd.gguf".into(), size, sha256: None };
    assert!(store.hub_range(&evil).await.err().unwrap().to_string().contains("relative path"));
}

/// Three `exo serve` nodes on loopback, each with its own empty (or given) models dir, all
/// pointed at `hub` (online), sharing one cluster secret.
struct Cluster {
    nodes: Vec<Node>,
    dirs: Vec<tempfile::TempDir>,
    _config: tempfile::TempDir,
}

async fn cluster(names: &[&'static str], hub: &str, extra: &[&[&str]]) -> Cluster {
    let config = tempfile::tempdir().unwrap();
    let dirs: Vec<tempfile::TempDir> = names.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("EXO_CONFIG_DIR", config.path().to_str().unwrap()), ("EXO_OFFLINE", "0"), ("HF_ENDPOINT", hub)];
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let peers: Vec<&str> = nodes.iter().map(|n| n.peer.as_str()).collect();
        let node = spawn_env(n, dirs[i].path(), ANY, &peers, extra.get(i).copied().unwrap_or(&[]), &env);
        nodes.push(node);
    }
    Cluster { nodes, dirs, _config: config }
}

impl Cluster {
    async fn ready(&self) {
        let n = self.nodes.len();
        wait_for(&reqwest::Client::new(), &format!("{}/cluster", self.nodes[0].api), |v| {
            v["nodes"]
                .as_array()
                .is_some_and(|x| x.len() == n && x.iter().all(|y| y["profile"]["memory_offered"].is_u64()))
        })
        .await;
    }
    fn dir(&self, name: &str) -> &Path {
        self.dirs[self.nodes.iter().position(|n| n.name == name).unwrap()].path()
    }
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir(name).join(format!("{name}.log"))).unwrap_or_default()
    }
}

async fn generate(base: &str, model: &str) -> Result<String, (u16, String)> {
    let body = json!({ "model": model, "prompt": "The quick brown fox jumps over", "stream": false, "raw": true,
        "options": { "num_predict": 12, "seed": 0, "temperature": 0.0 } });
    let r = reqwest::Client::new().post(format!("{base}/api/generate")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    match status.is_success() {
        true => Ok(v["response"].as_str().unwrap().to_string()),
        false => Err((status.as_u16(), v.to_string())),
    }
}

async fn place(base: &str, model: &str, placement: Value) -> Result<(), String> {
    let r = reqwest::Client::new()
        .post(format!("{base}/instances"))
        .json(&json!({ "model": model, "placement": placement }))
        .send()
        .await
        .unwrap();
    match r.status().is_success() {
        true => Ok(()),
        false => Err(r.text().await.unwrap()),
    }
}

/// The text of one node holding the whole model (no cluster).
async fn reference_text(model: &Path) -> String {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(model, d.path().join("wide.gguf")).unwrap();
    let node = spawn_env("ref", d.path(), ANY, &[], &[], &[]);
    wait_for(&reqwest::Client::new(), &format!("{}/cluster", node.api), |v| v["nodes"].is_array()).await;
    generate(&node.api, "wide").await.unwrap()
}

fn partial_of(dir: &Path, model: &str) -> Partial {
    Partial::open(&Partial::path_in(dir, model)).unwrap_or_else(|| panic!("no partial of {model} in {dir:?}"))
}

/// Each node's partial takes about its window's bytes on disk.
fn assert_windows(c: &Cluster, model: &Path, name: &str, stages: &[(&str, u32, u32)]) {
    for &(node, b, e) in stages {
        let p = partial_of(c.dir(node), name);
        let want = bytes_of(&window(model, b, e));
        let du = p.allocated();
        println!("{node} {b}..{e}: window {want} bytes, allocated {du}");
        assert!(p.has_window(b, e), "{node} has {:?}", p.sidecar.windows);
        assert!(du.abs_diff(want) <= want / 20 + (1 << 20), "{node} holds {du} for a window of {want}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_has_the_model_each_fetches_its_window_from_the_hub() {
    let (h, url, model) = hub_with_wide().await;
    let n = n_layer(&model);
    let size = std::fs::metadata(&model).unwrap().len();
    let want = reference_text(&model).await;
    let c = cluster(&["a", "b", "c"], &url, &[]).await;
    c.ready().await;
    let api = c.nodes[0].api.clone();

    // 2 nodes, forced; the coordinator a holds only the header
    place(&api, NAME, json!([{ "node": "b", "begin": 0, "end": 4 }, { "node": "c", "begin": 4, "end": n }]))
        .await
        .unwrap();
    assert_eq!(generate(&api, NAME).await.unwrap(), want, "b and c from the hub");
    let pa = partial_of(c.dir("a"), NAME);
    assert!(pa.sidecar.windows.is_empty() && pa.allocated() < 3 << 20, "a: header only, {}", pa.allocated());
    let hub_file = pa.sidecar.hub.as_ref().expect("a recorded the hub file");
    assert_eq!((pa.sidecar.n_layer, hub_file.file.as_str(), hub_file.size), (n, FILE, size));
    assert_windows(&c, &model, NAME, &[("b", 0, 4), ("c", 4, n)]);
    let windows = bytes_of(&window(&model, 0, 4)) + bytes_of(&window(&model, 4, n));
    let served = h.data_bytes(FILE);
    println!("2 stages: hub served {served} bytes for windows of {windows} (file {size})");
    assert!(served <= windows + 3 * (2 << 20), "{served} for {windows}");

    // 3 nodes, forced: a fetches its own window like any stage; b and c reuse what they have
    let before = h.data_bytes(FILE);
    place(
        &api,
        NAME,
        json!([{ "node": "a", "begin": 0, "end": 2 }, { "node": "b", "begin": 2, "end": 4 }, { "node": "c", "begin": 4, "end": n }]),
    )
    .await
    .unwrap();
    assert_eq!(generate(&api, NAME).await.unwrap(), want, "a, b and c");
    assert_windows(&c, &model, NAME, &[("a", 0, 2)]);
    let moved = h.data_bytes(FILE) - before;
    let a_window = bytes_of(&window(&model, 0, 2)) - GgufFile::open(&model).unwrap().data_offset;
    println!("3 stages: hub served {moved} more bytes; a's window past the header is {a_window}");
    assert!(moved <= a_window + 3 * (2 << 20), "{moved}");
    assert!(c.log("b").contains("the hub"), "b fetched from the hub");

    // `exo run` through a: the node shows the model from its header and pulls nothing
    let before = h.data_bytes(FILE);
    let api_addr = api.trim_start_matches("http://").to_string();
    let out = tokio::task::spawn_blocking(move || {
        common::exo_command()
            .args(["run", NAME, "The quick brown fox", "--temperature", "0", "--max-tokens", "8"])
            .env("EXO_API_ADDR", api_addr)
            .env("EXO_NO_DISCOVERY", "1")
            .env("EXO_MODELS_DIRS", "/nonexistent")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.trim().is_empty(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(h.data_bytes(FILE) - before < 4 << 20, "no pull: {} bytes", h.data_bytes(FILE) - before);
    assert!(!c.dir("a").join("hf").exists(), "a downloaded nothing whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_placement_with_no_holder_fetches_from_the_hub_and_a_bad_hub_is_named() {
    let (h, url, model) = hub_with_wide().await;
    let n = n_layer(&model);
    let want = reference_text(&model).await;
    // a cannot run anything: the placement puts every layer on b
    let c = cluster(&["a", "b"], &url, &[&["--memory-limit", "20MiB"]]).await;
    c.ready().await;
    let api = c.nodes[0].api.clone();
    // hostile first: the hub ignores ranges; the load fails and says why
    *h.ignore_range.lock().unwrap() = true;
    let (status, body) = generate(&api, NAME).await.unwrap_err();
    assert!(status >= 500 && body.contains("ranges not supported"), "{status} {body}");
    *h.ignore_range.lock().unwrap() = false;
    assert_eq!(generate(&api, NAME).await.unwrap(), want);
    let cl: Value = reqwest::get(format!("{api}/cluster")).await.unwrap().json().await.unwrap();
    assert!(cl["instances"][0]["stages"].as_array().unwrap().iter().all(|s| s["node"] == "b"), "{cl}");
    // b assembled the whole file from ranges: checked against the hub's sha256
    let pb = partial_of(c.dir("b"), NAME);
    assert!(pb.complete() && pb.sidecar.pieces.iter().all(|x| !x.unverified), "b's file was checked whole");
    assert_windows(&c, &model, NAME, &[("b", 0, n)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_the_model_gets_the_header_and_the_windows_from_the_node_that_has_it() {
    let model = wide_model();
    let n = n_layer(&model);
    let want = reference_text(&model).await;
    // nobody can reach a hub: only b has the model
    let c = cluster(&["a", "b", "c"], "http://127.0.0.1:1", &[]).await;
    std::os::unix::fs::symlink(&model, c.dir("b").join("wide.gguf")).unwrap();
    c.ready().await;
    let api = c.nodes[0].api.clone();
    // a learns from b's pongs that b holds it
    wait_for(&reqwest::Client::new(), &format!("{api}/cluster"), |v| {
        v["nodes"].as_array().unwrap().iter().any(|x| x["name"] == "b" && x["held"][0]["model"] == "wide")
    })
    .await;
    // hostile: a name that is a path (b's file) is no model name anywhere
    let path = c.dir("b").join("wide.gguf");
    let (status, body) = generate(&api, path.to_str().unwrap()).await.unwrap_err();
    assert!(status == 404 || status == 400, "{status} {body}");
    // a name no node holds and no hub knows: not found, as before
    let (status, body) = generate(&api, "nowhere").await.unwrap_err();
    assert!(status == 404 && body.contains("nowhere"), "{status} {body}");
    place(&api, "wide", json!([{ "node": "a", "begin": 0, "end": 4 }, { "node": "c", "begin": 4, "end": n }]))
        .await
        .unwrap();
    assert_eq!(generate(&api, "wide").await.unwrap(), want);
    assert_windows(&c, &model, "wide", &[("a", 0, 4), ("c", 4, n)]);
    assert!(c.log("c").contains("node b"), "c fetched from b: {}", c.log("c"));
    // b is still the only node holding it whole; a and c hold windows
    assert!(common::offline_store(c.dir("a")).resolve_name("wide").is_err());
}
