//! The cluster's protections with nodes in one process on loopback: another cluster's node is
//! refused both ways with both key ids and never listed; a recording relay between two nodes
//! running a pipeline sees only ciphertext (and, as a control, sees everything when the
//! bench-only plaintext mode is on); a tampered or replayed record closes that connection;
//! connections per address, the handshake timeout and stage loads are bounded.

use crate::common;

use exo::cluster::{ClusterChain, ClusterNode, NodeConfig, StagePlacement};
use exo::engine::{ContextParams, LayerRange, SamplingParams};
use exo::pipeline::{generate, GenerateRequest};
use exo::transport::{Kind, Security};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ctx() -> ContextParams {
    ContextParams { n_ctx: 512, n_batch: 16, n_ubatch: 16, n_threads: 1, n_seq_max: 2, exact: false }
}

struct Opts {
    security: Security,
    port: u16,
    advertise: Option<String>,
    memory_limit: Option<u64>,
}

fn opts(security: Security) -> Opts {
    Opts { security, port: 0, advertise: None, memory_limit: None }
}

async fn node(name: &str, models: &Path, o: Opts) -> Arc<ClusterNode> {
    let cfg = NodeConfig {
        namespace: "t".into(),
        node_name: name.into(),
        peer_bind: format!("127.0.0.1:{}", o.port).parse().unwrap(),
        peers: vec![],
        memory_limit: o.memory_limit,
        decode_gbps: Some(10.0),
        cache_dir: models.join("cache"),
        threads: 1,
        discovery: false,
        advertise: o.advertise,
        security: o.security,
    };
    ClusterNode::start(cfg, common::offline_store(models)).await.unwrap()
}

fn models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), d.path().join("tiny-llama.gguf")).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_cluster_is_refused_both_ways_and_never_listed() {
    let m = models();
    let (ours, theirs) = (common::security_for([1; 32]), common::security_for([2; 32]));
    let (our_id, their_id) = (ours.key_id().to_string(), theirs.key_id().to_string());
    let a = node("a", m.path(), opts(ours)).await;
    let x = node("x", m.path(), opts(theirs)).await;
    for (from, to) in [(&a, &x), (&x, &a)] {
        let e = from.conn(to.peer_addr()).await.err().expect("refused").to_string();
        assert!(e.contains("another cluster") && e.contains(&our_id) && e.contains(&their_id), "{e}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.peers().is_empty() && x.peers().is_empty(), "{:?} {:?}", a.peers(), x.peers());
    // a node of the same cluster joins
    let b = node("b", m.path(), opts(common::security_for([1; 32]))).await;
    b.conn(a.peer_addr()).await.unwrap();
}

/// A relay on `listen` to `target` that records every byte, both ways.
async fn recording_relay(listen: TcpListener, target: String, log: Arc<Mutex<Vec<u8>>>) {
    loop {
        let Ok((inbound, _)) = listen.accept().await else { continue };
        let (target, log) = (target.clone(), log.clone());
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            tokio::spawn(pump(ir, ow, log.clone()));
            tokio::spawn(pump(or, iw, log));
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        log.lock().unwrap().extend_from_slice(&buf[..n]);
    }
}

fn entropy(b: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    b.iter().for_each(|x| counts[*x as usize] += 1);
    let n = b.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| *c as f64 / n).map(|p| -p * p.log2()).sum()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Two nodes (a coordinates, stages a=0:4 and b=4:8) whose peer traffic all crosses recording
/// relays; returns the capture and the prompt's tokens.
async fn captured_pipeline(plaintext: bool) -> (Vec<u8>, Vec<i32>, Vec<i32>) {
    let m = models();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sec = |s: Security| Security { plaintext, ..s };
    let mut nodes = Vec::new();
    for name in ["alpha-node", "beta-node"] {
        let (port, relay) = (free_port(), TcpListener::bind("127.0.0.1:0").await.unwrap());
        let relay_addr = relay.local_addr().unwrap().to_string();
        tokio::spawn(recording_relay(relay, format!("127.0.0.1:{port}"), log.clone()));
        let o = Opts { port, advertise: Some(relay_addr), ..opts(sec(common::test_security())) };
        nodes.push(node(name, m.path(), o).await);
    }
    let (a, b) = (nodes[0].clone(), nodes[1].clone());
    let st = |n: &Arc<ClusterNode>, b, e| StagePlacement {
        node: n.hello.node_name.clone(),
        addr: n.peer_addr().to_string(),
        range: LayerRange { begin: b, end: e },
    };
    let chain = ClusterChain::load(a.clone(), "tiny-llama", &path, size, vec![st(&a, 0, 4), st(&b, 4, 8)], ctx())
        .await
        .unwrap();
    let prompt = chain
        .vocab()
        .tokenize("The quick brown fox jumps over the lazy dog, again and again, until the sun goes down.", true, false)
        .await
        .unwrap();
    let mut out = Vec::new();
    let req = GenerateRequest {
        prompt: prompt.clone(),
        past: vec![],
        seq: 0,
        sampling: SamplingParams::greedy(),
        max_tokens: Some(48),
        ignore_eos: true,
        draft_window: 0,
    };
    generate(&chain, req, |t| {
        out.push(t);
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    // heartbeats (profiles in pongs) cross the relays too
    tokio::time::sleep(Duration::from_millis(1200)).await;
    drop(chain);
    let captured = log.lock().unwrap().clone();
    (captured, prompt, out)
}

/// What a plaintext capture of that pipeline gives away.
fn leaks(capture: &[u8], prompt: &[i32], generated: &[i32]) -> Vec<String> {
    let mut found = Vec::new();
    for w in prompt.windows(3).chain(generated.windows(3)) {
        let b: Vec<u8> = w.iter().flat_map(|t| t.to_le_bytes()).collect();
        if contains(capture, &b) {
            found.push(format!("token ids {w:?}"));
            break;
        }
    }
    let texts = ["tiny-llama", "alpha-node", "beta-node", "\"tokens\"", "n_ctx", "memory_total", "llama"];
    for s in texts {
        if contains(capture, s.as_bytes()) {
            found.push(format!("{s:?}"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_relay_sees_only_ciphertext() {
    let (capture, prompt, generated) = captured_pipeline(false).await;
    assert!(capture.len() > 20_000, "{} bytes captured", capture.len());
    let leaked = leaks(&capture, &prompt, &generated);
    assert!(leaked.is_empty(), "the capture shows {leaked:?}");
    let h = entropy(&capture);
    println!("captured {} bytes, entropy {h:.4} bits/byte", capture.len());
    assert!(h > 7.95, "entropy {h:.4} bits/byte");
    // the control: the same run without encryption (bench-only mode) gives all of it away, so
    // the checks above can fail
    let (plain, prompt, generated) = captured_pipeline(true).await;
    let leaked = leaks(&plain, &prompt, &generated);
    assert!(leaked.len() >= 5, "{leaked:?}");
    assert!(entropy(&plain) < 7.0, "{}", entropy(&plain));
}

/// What the man in the middle does to the next record from the connecting side.
const PASS: u8 = 0;
const TAMPER: u8 = 1;
const REPLAY: u8 = 2;

/// Forwards a connection to `target` record by record (after the bare handshake frames) and
/// alters the initiator's next record as `mode` says; `target_closed` is set when the target
/// ends the connection.
async fn mitm(listen: TcpListener, target: String, mode: Arc<AtomicU8>, target_closed: Arc<AtomicU8>) {
    let (inbound, _) = listen.accept().await.unwrap();
    let outbound = TcpStream::connect(&target).await.unwrap();
    let (mut ir, mut iw) = inbound.into_split();
    let (mut or, mut ow) = outbound.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match or.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if iw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        target_closed.store(1, Ordering::SeqCst);
        let _ = iw.shutdown().await;
    });
    // the initiator's two bare handshake frames
    for _ in 0..2 {
        let mut h = [0u8; exo::transport::HEADER_LEN];
        ir.read_exact(&mut h).await.unwrap();
        let len = exo::transport::decode_header(&h).unwrap().len as usize;
        let mut p = vec![0u8; len];
        ir.read_exact(&mut p).await.unwrap();
        ow.write_all(&h).await.unwrap();
        ow.write_all(&p).await.unwrap();
    }
    loop {
        let mut l = [0u8; 2];
        if ir.read_exact(&mut l).await.is_err() {
            return;
        }
        let mut rec = vec![0u8; u16::from_be_bytes(l) as usize];
        if ir.read_exact(&mut rec).await.is_err() {
            return;
        }
        let mut out = [l.to_vec(), rec].concat();
        match mode.swap(PASS, Ordering::SeqCst) {
            TAMPER => {
                let i = out.len() / 2;
                out[i] ^= 0x40;
            }
            REPLAY => out = [out.clone(), out].concat(),
            _ => {}
        }
        if ow.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_replayed_record_closes_that_connection() {
    let m = models();
    let b = node("b", m.path(), opts(common::test_security())).await;
    let a = node("a", m.path(), opts(common::test_security())).await;
    for what in [TAMPER, REPLAY] {
        let listen = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listen.local_addr().unwrap().to_string();
        let (mode, closed) = (Arc::new(AtomicU8::new(PASS)), Arc::new(AtomicU8::new(0)));
        tokio::spawn(mitm(listen, b.peer_addr().to_string(), mode.clone(), closed.clone()));
        let c = a.conn(&addr).await.unwrap();
        c.request(Kind::Ping, vec![], Duration::from_secs(5)).await.expect("an untouched ping is answered");
        mode.store(what, Ordering::SeqCst);
        let r = c.request(Kind::Ping, vec![1, 2, 3], Duration::from_secs(5)).await;
        assert!(r.is_err(), "mode {what}: the altered ping was answered");
        let t = Instant::now();
        while closed.load(Ordering::SeqCst) == 0 || !c.is_closed() {
            assert!(t.elapsed() < Duration::from_secs(3), "mode {what}: b did not close the connection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // b still serves everyone else
    let c = a.conn(b.peer_addr()).await.unwrap();
    c.request(Kind::Ping, vec![], Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_cannot_keep_a_member_out_and_the_handshake_is_bounded() {
    let m = models();
    let a = node("a", m.path(), opts(common::test_security())).await;
    let b = node("b", m.path(), opts(common::test_security())).await;
    let pending = exo::cluster::limits::MAX_PENDING_PER_ADDRESS;
    // 32 silent connections from b's own address: beyond the pending cap the oldest close at once
    let mut silent = Vec::new();
    for _ in 0..32 {
        silent.push(TcpStream::connect(a.peer_addr()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = [0u8; 8];
    let mut closed = 0;
    for s in &mut silent[..32 - pending] {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("closed at once");
        closed += (n.unwrap_or(0) == 0) as usize;
    }
    assert_eq!(closed, 32 - pending);
    // a member from the same address joins while the flood holds every pending place
    let t = Instant::now();
    let c = b.conn(a.peer_addr()).await.expect("a member is never locked out");
    c.request(Kind::Ping, vec![], Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // silent connections still pending are closed when the handshake time is up
    let t = Instant::now();
    let last = silent.last_mut().unwrap();
    let n = tokio::time::timeout(Duration::from_secs(10), last.read(&mut buf)).await.expect("closed").unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() < exo::transport::HANDSHAKE_TIMEOUT + Duration::from_secs(2), "{:?}", t.elapsed());
    drop(silent);

    // from many addresses (127.0.0.2-.81 on loopback): the total cap holds, a member still joins
    let mut flood = Vec::new();
    for i in 0..80u8 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::from(([127, 0, 0, 2 + i], 0))).unwrap();
        flood.push(sock.connect(a.peer_addr().parse().unwrap()).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // a node that has no connection to `a` yet
    let fresh = node("c", m.path(), opts(common::test_security())).await;
    let t = Instant::now();
    let c = fresh.conn(a.peer_addr()).await.expect("a member joins through a flood from many addresses");
    c.request(Kind::Ping, vec![], Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let mut open = 0;
    for s in &mut flood {
        let r = tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await;
        open += r.is_err() as usize;
    }
    assert!(open <= exo::cluster::limits::MAX_PENDING, "{open} handshaking connections open at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_loads_are_bounded_by_what_the_node_offers() {
    let m = models();
    let path = m.path().join("tiny-llama.gguf");
    let size = std::fs::metadata(&path).unwrap().len();
    let a = node("a", m.path(), opts(common::test_security())).await;
    let small = node("small", m.path(), Opts { memory_limit: Some(1 << 20), ..opts(common::test_security()) }).await;
    let st = |n: &Arc<ClusterNode>, b, e| StagePlacement {
        node: n.hello.node_name.clone(),
        addr: n.peer_addr().to_string(),
        range: LayerRange { begin: b, end: e },
    };
    let load = |stages: Vec<StagePlacement>, c: ContextParams| {
        let (a, path) = (a.clone(), path.clone());
        async move { ClusterChain::load(a, "tiny-llama", &path, size, stages, c).await.err().map(|e| e.to_string()) }
    };
    let e = load(vec![st(&a, 0, 4), st(&small, 4, 8)], ctx()).await.expect("refused");
    assert!(e.contains("small") && e.contains("offers 1048576 bytes") && e.contains("KV cache"), "{e}");
    let huge = ContextParams { n_ctx: 1 << 24, ..ctx() };
    let e = load(vec![st(&a, 0, 4), st(&a, 4, 8)], huge).await.expect("refused");
    assert!(e.contains("n_ctx = 16777216") && e.contains("outside 1..="), "{e}");
    let seqs = ContextParams { n_seq_max: 100_000, ..ctx() };
    let e = load(vec![st(&a, 0, 8)], seqs).await.expect("refused");
    assert!(e.contains("n_seq_max"), "{e}");
    // within bounds it loads
    assert_eq!(load(vec![st(&a, 0, 4), st(&a, 4, 8)], ctx()).await, None);
}
