//! The model store against a local hub server: fresh downloads (a split set too), resume after a
//! dropped connection, corrupt downloads, a full disk, read-only dirs, other tools' caches used in
//! place, offline mode, and the pull/list/rm commands.

use crate::common;

use common::hub::{self, Hub};
use exo::store::{self, Location, Resolved, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const REPO: &str = "test-org/Tiny-GGUF";

/// A hub holding a generated model as a single Q8_0-named file and as a 2-file Q4_K_M-named set.
fn setup() -> (Arc<Hub>, Vec<u8>, Vec<Vec<u8>>) {
    let spec = exo::synth::preset("tiny-llama").unwrap();
    let d = tempfile::tempdir().unwrap();
    let single = d.path().join("one.gguf");
    exo::synth::make_model(&spec, &single).unwrap();
    let parts = exo::synth::make_split_model(&spec, d.path(), "set", 2).unwrap();
    let hub = Arc::new(Hub::default());
    let one = std::fs::read(&single).unwrap();
    hub.add(REPO, "Tiny-Q8_0.gguf", one.clone());
    let set: Vec<Vec<u8>> = parts.iter().map(|p| std::fs::read(p).unwrap()).collect();
    hub.add(REPO, "Tiny-Q4_K_M/Tiny-Q4_K_M-00001-of-00002.gguf", set[0].clone());
    hub.add(REPO, "Tiny-Q4_K_M/Tiny-Q4_K_M-00002-of-00002.gguf", set[1].clone());
    hub.add(REPO, "README.md", b"# tiny".to_vec());
    (hub, one, set)
}

fn store(endpoint: &str, rw: &Path) -> Store {
    let mut s = Store::from_env();
    s.dirs = vec![rw.to_path_buf()];
    s.read_only = vec![];
    s.hf_cache = None;
    s.ollama = None;
    s.offline = false;
    s.endpoint = endpoint.to_string();
    s.token = None;
    s.chunk_size = 64 << 10; // small chunks: progress is committed often, so resume is visible
    s
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let q = e.path();
            if q.is_dir() {
                out.extend(files_under(&q));
            } else {
                out.push(q);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_download_of_a_file_and_a_split_set() {
    let (hub, one, set) = setup();
    let url = hub::serve(hub.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, dir.path());

    // no quantization named: Q4_K_M, which here is a split set, fetched whole
    let m = s.pull(&format!("hf.co/{REPO}"), Arc::new(store::Quiet)).await.unwrap();
    assert_eq!(m.paths.len(), 2);
    for (p, want) in m.paths.iter().zip(&set) {
        assert_eq!(&std::fs::read(p).unwrap(), want);
    }
    let shape = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(m.first()).unwrap()).unwrap();
    assert_eq!(shape.n_files, 2);

    let m = s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap();
    assert_eq!(std::fs::read(m.first()).unwrap(), one);
    assert!(m.first().starts_with(dir.path()));
    // both are now found locally, without the network
    let mut offline = s.clone();
    offline.offline = true;
    for name in [format!("hf.co/{REPO}:q8_0"), format!("hf.co/{REPO}:q4_k_m")] {
        assert!(matches!(offline.resolve(&name).unwrap(), Resolved::Local(_)), "{name}");
    }
    // a second pull does not download again
    let before = hub.data_requests("Tiny-Q8_0.gguf").len();
    s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap();
    assert_eq!(hub.data_requests("Tiny-Q8_0.gguf").len(), before);
}

// current-thread runtime: hf-hub's chunk tasks then run in order, so the committed prefix (and
// with it the resume point) is deterministic; on a multi-thread runtime a resume may restart
// earlier than strictly needed, never later
#[tokio::test]
async fn interrupted_download_resumes() {
    let (hub, one, _) = setup();
    let at = one.len() as u64 * 6 / 10;
    *hub.drop_at.lock().unwrap() = Some(("Tiny-Q8_0.gguf".into(), at));
    let url = hub::serve(hub.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, dir.path());
    let name = format!("hf.co/{REPO}:Q8_0");

    let err = s.pull(&name, Arc::new(store::Quiet)).await.unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    // nothing looks complete: only a partial file
    assert!(matches!(s.resolve(&name).unwrap(), Resolved::Remote(_)));
    assert!(files_under(dir.path()).iter().any(|p| p.to_string_lossy().ends_with(".sync.part")));

    let first_round = hub.data_requests("Tiny-Q8_0.gguf").len();
    let m = s.pull(&name, Arc::new(store::Quiet)).await.unwrap();
    assert_eq!(std::fs::read(m.first()).unwrap(), one);
    let resumed = &hub.data_requests("Tiny-Q8_0.gguf")[first_round..];
    let restart = resumed.iter().map(|r| r.0).min().unwrap();
    assert!(restart > 0, "the second pull started from byte 0");
    assert!(restart <= at, "resumed beyond what was received");
    println!("dropped at byte {at} of {}, resumed from byte {restart}", one.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_download_is_detected_and_removed() {
    let (hub, _, _) = setup();
    hub.corrupt.lock().unwrap().push("Tiny-Q8_0.gguf".into());
    let url = hub::serve(hub.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, dir.path());
    let err = s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
    let left: Vec<PathBuf> = files_under(dir.path())
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".lock"))
        .filter(|p| p.to_string_lossy().contains("Q8_0") || p.parent().is_some_and(|d| d.ends_with("blobs")))
        .collect();
    assert!(left.is_empty(), "corrupt data kept: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_space_is_refused_before_downloading() {
    let (hub, _, _) = setup();
    let url = hub::serve(hub.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&url, dir.path()).with_free_space(|_| Ok(1000));
    let err = s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("free"), "{err}");
    assert!(hub.data_requests("Tiny-Q8_0.gguf").is_empty(), "bytes were downloaded anyway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_dirs_are_used_but_never_written() {
    let (hub, one, _) = setup();
    let url = hub::serve(hub.clone()).await;
    let rw = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("shared-model.gguf"), &one).unwrap();
    let mut s = store(&url, rw.path());
    s.read_only = vec![ro.path().to_path_buf()];
    let before = files_under(ro.path());

    // found and used in place
    match s.resolve("shared-model").unwrap() {
        Resolved::Local(m) => {
            assert_eq!(m.location, Location::ReadOnlyDir);
            assert_eq!(m.first(), ro.path().join("shared-model.gguf"));
        }
        other => panic!("{other:?}"),
    }
    // never deleted from
    let err = s.remove("shared-model").unwrap_err();
    assert!(matches!(err, StoreError::NotOurs { .. }), "{err}");
    // downloads go to the writable dir only
    let m = s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap();
    assert!(m.first().starts_with(rw.path()));
    assert_eq!(files_under(ro.path()), before);
    // and removable from there
    s.remove(&format!("hf.co/{REPO}:q8_0")).unwrap();
    assert!(matches!(s.resolve(&format!("hf.co/{REPO}:q8_0")).unwrap(), Resolved::Remote(_)));
}

#[test]
fn hugging_face_cache_and_ollama_store_are_used_in_place() {
    let model = common::model("tiny-qwen2");
    let bytes = std::fs::read(&model).unwrap();
    let sha = store::sha256_file(&model).unwrap();
    let home = tempfile::tempdir().unwrap();

    // Hugging Face cache: blobs + snapshot link + refs/main
    let hf = home.path().join("hf/hub");
    let repo_dir = hf.join("models--someone--Qwen-Tiny-GGUF");
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join(format!("snapshots/{}", hub::COMMIT))).unwrap();
    std::fs::write(repo_dir.join(format!("blobs/{sha}")), &bytes).unwrap();
    std::os::unix::fs::symlink(
        format!("../../blobs/{sha}"),
        repo_dir.join(format!("snapshots/{}/qwen-tiny-Q6_K.gguf", hub::COMMIT)),
    )
    .unwrap();
    std::fs::write(repo_dir.join("refs/main"), hub::COMMIT).unwrap();

    // Ollama: manifest pointing at a blob
    let ol = home.path().join("ollama");
    std::fs::create_dir_all(ol.join("blobs")).unwrap();
    std::fs::create_dir_all(ol.join("manifests/registry.ollama.ai/library/tinyqwen")).unwrap();
    std::fs::write(ol.join(format!("blobs/sha256-{sha}")), &bytes).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{sha}"), "size": bytes.len()},
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00", "size": 1}
        ]
    });
    std::fs::write(ol.join("manifests/registry.ollama.ai/library/tinyqwen/latest"), manifest.to_string()).unwrap();

    let mut s = store("http://127.0.0.1:9", &home.path().join("own"));
    s.hf_cache = Some(hf.clone());
    s.ollama = Some(ol.clone());
    s.offline = true;
    let names: Vec<String> = s.local_models().iter().map(|m| format!("{} [{}]", m.name, m.location.label())).collect();
    assert!(names.contains(&"hf.co/someone/Qwen-Tiny-GGUF:q6_k [HF cache]".to_string()), "{names:?}");
    assert!(names.contains(&"tinyqwen:latest [Ollama store]".to_string()), "{names:?}");
    for (name, under) in [("hf.co/someone/Qwen-Tiny-GGUF:Q6_K", &hf), ("tinyqwen", &ol), ("tinyqwen:latest", &ol)] {
        match s.resolve(name).unwrap() {
            Resolved::Local(m) => {
                assert!(m.first().starts_with(under), "{name}: {}", m.first().display());
                let shape =
                    exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles::open(m.first()).unwrap()).unwrap();
                assert_eq!(shape.architecture, "qwen2");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(s.local_models().iter().find(|m| m.name == "tinyqwen:latest").unwrap().quant.as_deref(), Some("f32"));
    assert!(matches!(s.remove("tinyqwen"), Err(StoreError::NotOurs { .. })));
    assert!(!home.path().join("own").exists(), "nothing was copied into the models dir");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_mode_never_touches_the_network() {
    let (hub, _, _) = setup();
    let url = hub::serve(hub.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = store(&url, dir.path());
    s.offline = true;
    let err = s.pull(&format!("hf.co/{REPO}:Q8_0"), Arc::new(store::Quiet)).await.unwrap_err();
    assert!(matches!(err, StoreError::Offline { .. }), "{err}");
    let err = s.pull("llama-3.1-8b", Arc::new(store::Quiet)).await.unwrap_err();
    assert!(matches!(err, StoreError::Offline { .. }), "{err}");
    assert_eq!(hub.total_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_rm_and_run_from_the_command_line() {
    let (hub, _, _) = setup();
    let url = hub::serve(hub.clone()).await;
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    let exo = |args: Vec<String>| {
        let (url, home, models) = (url.clone(), home.path().to_path_buf(), models.clone());
        tokio::task::spawn_blocking(move || {
            common::exo_command()
                .args(&args)
                .env("HOME", &home)
                .env("HF_HOME", home.join("hf"))
                .env("HF_ENDPOINT", &url)
                .env("EXO_MODELS_DIRS", &models)
                .env("EXO_API_ADDR", "127.0.0.1:1")
                .env("EXO_NO_DISCOVERY", "1")
                .env("EXO_DECODE_GBPS", "10")
                .env_remove("EXO_OFFLINE")
                .output()
                .unwrap()
        })
    };
    let name = format!("hf.co/{REPO}:Q8_0");
    let out = exo(vec!["pull".into(), name.clone()]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("pulling") && err.contains("100%"), "no progress lines: {err}");

    let out = exo(vec!["list".into()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("hf.co/{REPO}:q8_0")) && text.contains("models dir"), "{text}");
    let out = exo(vec!["list".into(), "--all".into()]).await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("llama-3.1-70b"));

    let out = exo(vec!["run".into(), name.clone(), "hello".into(), "--max-tokens".into(), "4".into()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let out = exo(vec!["rm".into(), name.clone()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = exo(vec!["list".into()]).await.unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Tiny"));

    let out = exo(vec!["run".into(), "lama-3.1-8b".into(), "hi".into()]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("did you mean") && err.contains("llama-3.1-8b"), "{err}");
}

/// Models dirs that are links, links inside them: a delete through a linked models dir removes
/// the file and says so (no 500 for the second unlink); a planted link to a file that is no GGUF,
/// or to a GGUF outside the models dirs and EXO_LINK_TARGETS, is never a model; a link loop in the hub layout does not hang the listing; errors name files
/// relative to their models dir.
#[test]
fn links_in_and_to_models_dirs() {
    let real = tempfile::tempdir().unwrap();
    let at = tempfile::tempdir().unwrap();
    let linked = at.path().join("models");
    std::os::unix::fs::symlink(real.path(), &linked).unwrap();
    exo::synth::make_model(&exo::synth::preset("tiny-llama").unwrap(), &real.path().join("tiny.gguf")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", real.path().join("passwd.gguf")).unwrap();
    // a loop in the hub layout: a snapshot dir that links back to the repo dir
    let snap = real.path().join("hf/models--org--loop/snapshots/r1");
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink(real.path().join("hf/models--org--loop"), snap.join("again")).unwrap();
    let mut s = store("http://127.0.0.1:1", &linked);
    s.offline = true;
    let t = std::time::Instant::now();
    let names: Vec<String> = s.local_models().into_iter().map(|m| m.name).collect();
    assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(names, ["tiny"], "only the real GGUF is a model");
    assert!(s.remove("passwd").is_err());
    assert!(std::path::Path::new("/etc/passwd").exists());

    let gone = s.remove("tiny").unwrap();
    assert_eq!(s.relative(gone.first()), Path::new("tiny.gguf"));
    assert!(!real.path().join("tiny.gguf").exists());
    assert!(s.local_models().is_empty());

    // a model outside the writable dirs: refused, naming no absolute path
    let ro = tempfile::tempdir().unwrap();
    exo::synth::make_model(&exo::synth::preset("tiny-llama").unwrap(), &ro.path().join("shared.gguf")).unwrap();
    s.read_only = vec![ro.path().to_path_buf()];
    let e = s.remove("shared").unwrap_err().to_string();
    assert!(!e.contains(&*ro.path().to_string_lossy()), "{e}");
    assert!(e.contains("shared.gguf"), "{e}");

    // a link to a GGUF outside every models dir: no model until its dir is allowed
    // (EXO_LINK_TARGETS); a link into the read-only dir is one
    let elsewhere = tempfile::tempdir().unwrap();
    exo::synth::make_model(&exo::synth::preset("tiny-llama").unwrap(), &elsewhere.path().join("x.gguf")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path().join("x.gguf"), real.path().join("outside.gguf")).unwrap();
    std::os::unix::fs::symlink(ro.path().join("shared.gguf"), real.path().join("inside.gguf")).unwrap();
    let names = |s: &Store| -> Vec<String> { s.local_models().into_iter().map(|m| m.name).collect() };
    assert_eq!(names(&s), ["inside", "shared"]);
    s.link_targets = vec![elsewhere.path().to_path_buf()];
    assert_eq!(names(&s), ["inside", "outside", "shared"]);
}
