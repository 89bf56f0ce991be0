//! Three nodes in one process on loopback: pipelines over 2 and 3 stages give exactly the
//! single-node output (greedy and seeded sampling), also with 4 requests at once; refusals and
//! failures are clean.

use crate::common;

use exo::cluster::{ClusterChain, ClusterNode, NodeConfig, StagePlacement};
use exo::engine::{ContextParams, LayerRange, SamplingParams, StageHandle};
use exo::pipeline::{generate, Chain, GenerateRequest, Pipeline};
use exo::store::Store;
use exo::transport::Security;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn store(dir: &Path) -> Store {
    common::offline_store(dir)
}

fn ctx() -> ContextParams {
    ContextParams { n_ctx: 512, n_batch: 16, n_ubatch: 16, n_threads: 1, n_seq_max: 4, exact: false }
}

async fn node(name: &str, models: &Path, namespace: &str) -> Arc<ClusterNode> {
    node_in(name, models, namespace, common::test_security()).await
}

async fn node_in(name: &str, models: &Path, namespace: &str, security: Security) -> Arc<ClusterNode> {
    let cfg = NodeConfig {
        namespace: namespace.into(),
        node_name: name.into(),
        peer_bind: "127.0.0.1:0".parse().unwrap(),
        peers: vec![],
        memory_limit: None,
        decode_gbps: Some(10.0),
        cache_dir: models.join("cache"),
        threads: 1,
        discovery: false,
        advertise: None,
        security,
    };
    ClusterNode::start(cfg, store(models)).await.unwrap()
}

fn models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), d.path().join("tiny-llama.gguf")).unwrap();
    d
}

async fn gen<P: Pipeline>(p: &P, vocab: &StageHandle, seq: i32, prompt: &str, sampling: SamplingParams) -> Vec<i32> {
    let tokens = vocab.tokenize(prompt, true, false).await.unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt: tokens,
        past: vec![],
        seq,
        sampling,
        max_tokens: Some(32),
        ignore_eos: true,
        draft_window: 0,
    };
    generate(p, req, |t| {
        out.push(t);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    p.seq_rm(seq, -1, -1).await.unwrap();
    out
}

fn seeded(seed: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.0,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        seed,
        banned: Vec::new(),
        logit_bias: Vec::new(),
        draws: 0,
        grammar: None,
        generated: 0,
    }
}

// a prompt longer than n_batch (16) so the prefill is sent as several pipelined chunks
const PROMPT: &str =
    "Once upon a time there was a little model that wanted to run on every machine in the world, one layer at a time.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_over_two_and_three_nodes_match_one_node() {
    let m = models();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let (a, b, c) = (node("a", m.path(), "t").await, node("b", m.path(), "t").await, node("c", m.path(), "t").await);
    let local = Chain::load(&path, None, ctx(), true).unwrap();
    let want_greedy = gen(&local, local.vocab(), 0, PROMPT, SamplingParams::greedy()).await;
    let want_seeded = gen(&local, local.vocab(), 0, PROMPT, seeded(5)).await;
    let st = |n: &Arc<ClusterNode>, b, e| StagePlacement {
        node: n.hello.node_name.clone(),
        addr: n.peer_addr().to_string(),
        range: LayerRange { begin: b, end: e },
    };
    let placements = vec![
        vec![st(&a, 0, 4), st(&b, 4, 8)],
        vec![st(&a, 0, 3), st(&b, 3, 6), st(&c, 6, 8)],
        // the coordinator holds no layers at all
        vec![st(&b, 0, 5), st(&c, 5, 8)],
    ];
    for p in placements {
        let names: Vec<String> = p.iter().map(|s| format!("{}={}", s.node, s.range)).collect();
        let chain = ClusterChain::load(a.clone(), "tiny-llama", &path, size, p, ctx()).await.unwrap();
        assert_eq!(
            gen(&chain, chain.vocab(), 0, PROMPT, SamplingParams::greedy()).await,
            want_greedy,
            "{names:?} greedy"
        );
        assert_eq!(gen(&chain, chain.vocab(), 1, PROMPT, seeded(5)).await, want_seeded, "{names:?} seeded");
    }
    // the peers know each other and have measured round trips
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let peers = a.peers();
    assert!(peers.iter().any(|p| p.name == "b" && p.rtt_ms.is_some()), "{peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_requests_equal_each_alone() {
    let m = models();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let (a, b, c) = (node("a", m.path(), "t").await, node("b", m.path(), "t").await, node("c", m.path(), "t").await);
    let st = |n: &Arc<ClusterNode>, b, e| StagePlacement {
        node: n.hello.node_name.clone(),
        addr: n.peer_addr().to_string(),
        range: LayerRange { begin: b, end: e },
    };
    let chain = Arc::new(
        ClusterChain::load(a.clone(), "tiny-llama", &path, size, vec![st(&a, 0, 2), st(&b, 2, 5), st(&c, 5, 8)], ctx())
            .await
            .unwrap(),
    );
    let prompts = [
        "Hello there, how are you?",
        "The quick brown fox jumps over the lazy dog.",
        "Write a poem about the sea.",
        "What is the capital of France?",
    ];
    let mut alone = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        alone.push(gen(chain.as_ref(), chain.vocab(), i as i32, p, seeded(i as u32)).await);
    }
    let tasks: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (chain, p) = (chain.clone(), p.to_string());
            tokio::spawn(async move { gen(chain.as_ref(), chain.vocab(), i as i32, &p, seeded(i as u32)).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), alone[i], "request {i} differs when run concurrently");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_version_mismatches_are_refused_clearly() {
    use exo::transport::{self, Endpoint, Hello, TransportError};
    let m = models();
    let a = node("a", m.path(), "alpha").await;
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    let other = Hello {
        version: transport::PROTOCOL_VERSION,
        namespace: "beta".into(),
        node_id: "x".into(),
        node_name: "x".into(),
        peer_addr: "127.0.0.1:1".into(),
    };
    let ep = |hello: Hello| Endpoint::new(hello, common::test_security(), tx.clone());
    let err = transport::connect(a.peer_addr(), &ep(other.clone())).await.err().expect("refused");
    assert!(matches!(err, TransportError::Refused(_)), "{err}");
    assert!(
        err.to_string().contains("namespace") && err.to_string().contains("alpha") && err.to_string().contains("beta"),
        "{err}"
    );
    let old = Hello { version: 999, namespace: "alpha".into(), ..other };
    let err = transport::connect(a.peer_addr(), &ep(old)).await.err().expect("refused");
    assert!(err.to_string().contains("version"), "{err}");
    assert!(a.peers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = models();
    let a = node("a", m.path(), "t").await;
    // garbage instead of a handshake
    let mut s = tokio::net::TcpStream::connect(a.peer_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the connection should just close");
    // a valid header announcing a 4 GiB payload: refused from the header, nothing allocated
    let mut s = tokio::net::TcpStream::connect(a.peer_addr()).await.unwrap();
    let mut h = Vec::new();
    h.extend_from_slice(&exo::transport::MAGIC);
    h.extend_from_slice(&exo::transport::PROTOCOL_VERSION.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&0u64.to_le_bytes());
    h.extend_from_slice(&u32::MAX.to_le_bytes());
    s.write_all(&h).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // the node still works
    let b = node("b", m.path(), "t").await;
    b.conn(a.peer_addr()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_model_is_named() {
    let m = models();
    let empty = tempfile::tempdir().unwrap();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let (a, b) = (node("a", m.path(), "t").await, node("lacking", empty.path(), "t").await);
    let st = |n: &Arc<ClusterNode>, b, e| StagePlacement {
        node: n.hello.node_name.clone(),
        addr: n.peer_addr().to_string(),
        range: LayerRange { begin: b, end: e },
    };
    // a has the file but not under this name: no node can send b its window
    let err = ClusterChain::load(a.clone(), "elsewhere", &path, size, vec![st(&b, 0, 8)], ctx()).await.err().unwrap();
    let s = err.to_string();
    assert!(s.contains("lacking") && s.contains("does not have model"), "{s}");
    assert!(s.contains("cannot fetch its window") && s.contains("does not have elsewhere"), "{s}");
    // by its name a has it whole, and sends b the window
    ClusterChain::load(a.clone(), "tiny-llama", &path, size, vec![st(&a, 0, 4), st(&b, 4, 8)], ctx()).await.unwrap();
    assert!(empty.path().join("partial/tiny-llama.gguf").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_node_that_dies_ends_the_request_quickly() {
    let m = models();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let a = node("a", m.path(), "t").await;
    // b runs in its own runtime so that it can be shut down like a killed process
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let dir = m.path().to_path_buf();
    let b_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let b = node("b", &dir, "t").await;
            addr_tx.send(b.peer_addr().to_string()).unwrap();
            let _ = stop_rx.await;
        });
        rt.shutdown_timeout(Duration::from_millis(100));
    });
    let b_addr = addr_rx.recv().unwrap();
    let stages = vec![
        StagePlacement { node: "a".into(), addr: a.peer_addr().to_string(), range: LayerRange { begin: 0, end: 4 } },
        StagePlacement { node: "b".into(), addr: b_addr, range: LayerRange { begin: 4, end: 8 } },
    ];
    let chain = Arc::new(ClusterChain::load(a.clone(), "tiny-llama", &path, size, stages, ctx()).await.unwrap());
    let tokens = chain.vocab().tokenize(PROMPT, true, false).await.unwrap();
    let c2 = chain.clone();
    let job = tokio::spawn(async move {
        let req = GenerateRequest {
            prompt: tokens,
            past: vec![],
            seq: 0,
            sampling: SamplingParams::greedy(),
            max_tokens: Some(100_000),
            ignore_eos: true,
            draft_window: 0,
        };
        generate(c2.as_ref(), req, |_| ControlFlow::Continue(())).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    stop_tx.send(()).unwrap();
    b_thread.join().unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), job)
        .await
        .expect("the request hung")
        .unwrap()
        .expect_err("must fail");
    assert!(t.elapsed() < Duration::from_secs(5));
    let s = err.to_string();
    assert!(s.contains("b") && (s.contains("went away") || s.contains("closed") || s.contains("reach")), "{s}");
    // and b leaves the peer list once it stops answering
    let t = Instant::now();
    while a.peers().iter().any(|p| p.name == "b") {
        assert!(t.elapsed() < Duration::from_secs(6), "b is still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runtime's batcher over a 2-stage cluster pipeline: 8 greedy requests at once (two groups
/// of four in flight, one per stage) each give the text they give alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_batched_requests_over_two_nodes_equal_each_alone() {
    use exo::runtime::{Event, Forced, GenRequest, Input, Limits, ModelRef, Runtime};
    let d = tempfile::tempdir().unwrap();
    // batch-invariant kernels: batched and single decoding pick the same tokens (tests/inproc/exact.rs)
    std::os::unix::fs::symlink(common::model("tiny-llama-calm"), d.path().join("tiny-llama.gguf")).unwrap();
    let (a, b) = (node("a", d.path(), "t").await, node("b", d.path(), "t").await);
    let t = Instant::now();
    while a.address_of("b").is_none() {
        b.conn(a.peer_addr()).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let limits = Limits { parallel: 8, queue: 8, default_ctx: 256, threads: 1, ..Limits::default() };
    let rt = Runtime::new(store(d.path()), limits, Some(a.clone()));
    let model = ModelRef::Name("tiny-llama".into());
    let placement =
        vec![("a".to_string(), LayerRange { begin: 0, end: 4 }), ("b".to_string(), LayerRange { begin: 4, end: 8 })];
    let inst = rt.place(&model, Forced::Nodes(placement), None, None).await.unwrap();
    assert_eq!(inst.pipe().n_stages(), 2);
    let text = |p: &'static str| {
        let (rt, model) = (rt.clone(), model.clone());
        async move {
            let mut r = GenRequest::new(model, Input::Raw(p.into()), SamplingParams::greedy());
            r.max_tokens = Some(common::BATCH_STEPS as u64);
            r.ignore_eos = true;
            let mut g = rt.generate(r).await.unwrap();
            let mut out = String::new();
            while let Some(ev) = g.events.recv().await {
                match ev {
                    Event::Text(t) => out.push_str(&t),
                    Event::Thinking(_) => {}
                    Event::Done { .. } => return out,
                    Event::Failed(e) => panic!("{e}"),
                }
            }
            panic!("no end")
        }
    };
    let mut alone = Vec::new();
    for p in common::BATCH_PROMPTS {
        alone.push(text(p).await);
    }
    let tasks: Vec<_> = common::BATCH_PROMPTS.iter().map(|p| tokio::spawn(text(p))).collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), alone[i], "request {i}");
    }
}

/// A node's tasks (accepting, dispatching, heartbeats) stop when the last handle to it drops:
/// its peer port is released and a peer that knew it sees it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_node_stops_its_tasks_and_releases_its_peer_port() {
    let d = models();
    let a = node("a", d.path(), "drop").await;
    let b = node("b", d.path(), "drop").await;
    let addr: std::net::SocketAddr = b.hello.peer_addr.parse().unwrap();
    a.conn(&b.hello.peer_addr).await.unwrap();
    drop(b);
    let t = Instant::now();
    loop {
        // the port can be bound again once the accept loop has let go of its listener
        if std::net::TcpListener::bind(addr).is_ok() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "the dropped node still holds {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("peer port released {:?} after the drop", t.elapsed());
}
