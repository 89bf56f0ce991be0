//! The fuzz corpora in the normal suite: every seed (fuzz/seeds/TARGET/*) and every input a
//! fuzzer ever crashed on (fuzz/regressions/TARGET/*, one file per crash, named for the bug)
//! through the same harness the fuzz target runs (exo::fuzzing). The seeds are written by
//! `cargo test --release --test inproc fuzz_regressions -- --ignored write_seeds`.

use crate::common;

use exo::fuzzing::{fuzz_security, TARGETS};
use exo::transport::{noise, BatchMsg, Frame, Kind, LoadStage};
use std::path::{Path, PathBuf};

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind)
}

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir(kind).join(target)) else { return vec![] };
    let mut v: Vec<_> = rd.flatten().map(|e| (e.path(), std::fs::read(e.path()).unwrap())).collect();
    v.sort();
    v
}

#[test]
fn every_seed_and_every_past_crash_passes_its_harness() {
    let mut seeds = 0;
    for (target, run) in TARGETS {
        let s = inputs("seeds", target);
        assert!(!s.is_empty(), "no seeds for fuzz target {target}");
        seeds += s.len();
        for (path, data) in s.iter().chain(inputs("regressions", target).iter()) {
            // a panic names the input
            let r = std::panic::catch_unwind(|| run(data));
            assert!(r.is_ok(), "{} fails its harness", path.display());
        }
    }
    assert!(seeds >= 30, "{seeds} seeds");
}

/// A few thousand mutants of the seeds through every harness, in the normal suite: no coverage
/// guidance (that is `fuzz/run.sh`), but each run tries new inputs near the valid ones, where
/// length and offset checks live. Deterministic per seed file; the count is bounded.
#[test]
fn mutated_seeds_pass_every_harness() {
    const PER_TARGET: usize = 1_500;
    for (target, run) in TARGETS {
        let seeds = inputs("seeds", target);
        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ target.len() as u64;
        for i in 0..PER_TARGET {
            let (path, base) = &seeds[i % seeds.len()];
            let other = &seeds[(i / seeds.len()) % seeds.len()].1;
            let data = mutate(base, other, &mut rng);
            let r = std::panic::catch_unwind(|| run(&data));
            assert!(r.is_ok(), "a mutant of {} fails its harness: {:?}", path.display(), data);
        }
    }
}

fn next(rng: &mut u64) -> u64 {
    // xorshift64*: reproducible without a dependency
    *rng ^= *rng >> 12;
    *rng ^= *rng << 25;
    *rng ^= *rng >> 27;
    rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One to four edits: flip a bit, set an interesting byte, insert, delete, truncate, or splice
/// a piece of another seed (what libFuzzer's mutators do, minus the coverage feedback).
fn mutate(base: &[u8], other: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut d = base.to_vec();
    for _ in 0..1 + next(rng) % 4 {
        let at = |rng: &mut u64, len: usize| if len == 0 { 0 } else { (next(rng) % len as u64) as usize };
        match next(rng) % 6 {
            0 if !d.is_empty() => {
                let i = at(rng, d.len());
                d[i] ^= 1 << (next(rng) % 8);
            }
            1 if !d.is_empty() => {
                let i = at(rng, d.len());
                d[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][(next(rng) % 5) as usize];
            }
            2 => {
                let i = at(rng, d.len() + 1);
                d.insert(i, next(rng) as u8);
            }
            3 if !d.is_empty() => {
                let i = at(rng, d.len());
                let n = 1 + at(rng, 16).min(d.len() - i - 1);
                d.drain(i..i + n);
            }
            4 => d.truncate(at(rng, d.len() + 1)),
            _ if !other.is_empty() => {
                let (i, j) = (at(rng, d.len() + 1), at(rng, other.len()));
                let n = 1 + at(rng, 64).min(other.len() - j - 1);
                d.splice(i..i, other[j..j + n].iter().copied());
            }
            _ => {}
        }
    }
    d
}

#[test]
fn the_gguf_overflow_the_fuzzer_found_is_a_clear_error() {
    // a tensor byte size that wrapped around in release builds (now checked)
    let data = std::fs::read(dir("regressions").join("gguf/tensor_bytes_overflow")).unwrap();
    let e = exo::gguf::GgufFile::parse(&data[..], Path::new("x.gguf"), data.len() as u64).unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
}

#[test]
fn a_huge_block_count_the_fuzzer_found_is_refused_before_allocating() {
    // llama.block_count of ~4e9 made ModelShape allocate 32 GB and abort
    let data = std::fs::read(dir("regressions").join("gguf/huge_block_count")).unwrap();
    let f = exo::gguf::GgufFile::parse(&data[..], Path::new("x.gguf"), data.len() as u64).unwrap();
    let e = exo::gguf::ModelShape::from_files(&exo::gguf::ModelFiles { files: vec![f] }).unwrap_err();
    assert!(e.to_string().contains("block_count") && e.to_string().contains("implausible"), "{e}");
}

#[tokio::test]
async fn the_handshake_seed_reaches_past_the_first_message() {
    // so the fuzzer explores the responder's later states too: the seed's first message is
    // accepted (the responder answers and then waits for a third message that is not there)
    let data = std::fs::read(dir("seeds").join("handshake/first_message")).unwrap();
    let mut s = Recorder::default();
    let mut input = &data[1..];
    let mut stream = tokio::io::join(&mut input, &mut s);
    let e = noise::respond(&mut stream, &fuzz_security(false)).await.err().unwrap();
    assert!(matches!(e, exo::transport::TransportError::Closed), "{e}");
    assert!(s.0.len() > 96, "the responder sent its second message");
}

/// Records what a stream writes (the seeds are real protocol bytes).
#[derive(Default)]
struct Recorder(Vec<u8>);

impl tokio::io::AsyncRead for Recorder {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(())) // end of stream
    }
}

impl tokio::io::AsyncWrite for Recorder {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        b: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.extend_from_slice(b);
        std::task::Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn frame_bytes(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let f = Frame { kind: kind as u16, request: 7, payload: payload.to_vec() };
    let mut b = exo::transport::encode_header(&f).unwrap().to_vec();
    b.extend_from_slice(payload);
    b
}

fn with(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

#[tokio::test]
#[ignore = "writes fuzz/seeds; run by hand when a format changes"]
async fn write_seeds() {
    let mut seeds: Vec<(&str, &str, Vec<u8>)> = Vec::new();
    let hello =
        br#"{"version":4,"namespace":"default","node_id":"00ff","node_name":"a","peer_addr":"127.0.0.1:52416"}"#;
    let batch = BatchMsg {
        instance: 1,
        stage: 1,
        sample: true,
        pos: vec![0, 1],
        seq: vec![0, 0],
        output: vec![false, true],
        tokens: vec![],
        hidden: vec![0.5; 8],
        spec: Default::default(),
        reply_to: "127.0.0.1:1".into(),
    }
    .encode();
    let tokens_batch = BatchMsg { hidden: vec![], tokens: vec![1, 2], stage: 0, ..BatchMsg::decode(&batch).unwrap() };
    // frame: bare frames, a stream of two, and the same inside plaintext records
    let two = [frame_bytes(Kind::Hello, hello), frame_bytes(Kind::Ping, &[])].concat();
    seeds.push(("frame", "hello", frame_bytes(Kind::Hello, hello)));
    seeds.push(("frame", "two", two.clone()));
    seeds.push(("frame", "forward", frame_bytes(Kind::Forward, &batch)));
    let mut records = Vec::new();
    for chunk in two.chunks(40) {
        records.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        records.extend_from_slice(chunk);
    }
    seeds.push(("frame", "records", records));
    // messages: one valid payload per kind
    let load = LoadStage {
        instance: 1,
        model: "tiny-llama".into(),
        model_size: 1000,
        range: exo::engine::LayerRange { begin: 0, end: 4 },
        n_ctx: 512,
        n_batch: 16,
        n_seq_max: 4,
        exact: false,
        next: Some("127.0.0.1:2".into()),
        index: 0,
        sources: vec![],
        hub: None,
    };
    let profile = serde_json::to_vec(&exo::profile::snapshot(None, Some(10.0))).unwrap();
    let pong_held = serde_json::to_vec(&exo::cluster::holdings::Pong {
        profile: exo::profile::snapshot(None, Some(10.0)),
        held: vec![exo::cluster::holdings::Held { model: "m".into(), size: 9, whole: false, windows: vec![(0, 4)] }],
        links: vec![exo::cluster::holdings::LinkFigure {
            node_id: "00ff".into(),
            name: "b".into(),
            rtt_ms: Some(0.3),
            bandwidth: Some(1e9),
        }],
    })
    .unwrap();
    let progress = serde_json::to_vec(&exo::transport::LoadProgressMsg {
        instance: 1,
        index: 0,
        transfers: vec![exo::transport::ProgressItem {
            id: 1,
            model: "m".into(),
            source: "node a".into(),
            done_bytes: 5,
            total_bytes: 9,
            state: "running".into(),
            error: None,
            seconds: 0.5,
        }],
    })
    .unwrap();
    use exo::transport::{Message, OpReply, PeerError, WeightsAsk};
    let refusal = Message::Error(PeerError::Load(exo::transport::LoadRefusal::Limit {
        node: "a".into(),
        field: "n_ctx".into(),
        value: 9,
        max: 1,
    }))
    .encode();
    let fault = exo::pipeline::StageFault {
        stage: 1,
        node: "b".into(),
        kind: exo::pipeline::FaultKind::Engine { detail: "stage 1 failed".into() },
    };
    for (name, kind, payload) in [
        ("hello", Kind::Hello, hello.to_vec()),
        ("load_stage", Kind::LoadStage, serde_json::to_vec(&load).unwrap()),
        ("loaded", Kind::Loaded, br#"{"n_ctx":512}"#.to_vec()),
        ("forward_hidden", Kind::Forward, batch.clone()),
        ("forward_tokens", Kind::Forward, tokens_batch.encode()),
        ("tokens", Kind::Tokens, Message::Tokens(Ok(vec![5, 6])).encode()),
        ("tokens_error", Kind::Tokens, Message::Tokens(Err(fault.clone())).encode()),
        ("embedding", Kind::Embedding, Message::Embedding(Ok(vec![0.5, -1.0])).encode()),
        ("embedding_error", Kind::Embedding, Message::Embedding(Err(fault)).encode()),
        ("seq_done", Kind::SeqDone, Message::SeqDone(OpReply::Removed(true)).encode()),
        (
            "weights_ask",
            Kind::WeightsAsk,
            Message::WeightsAsk(WeightsAsk::Read { model: "m".into(), start: 0, len: 4 }).encode(),
        ),
        ("seq_clear", Kind::SeqOp, br#"{"instance":1,"stage":0,"op":"Clear"}"#.to_vec()),
        ("seq_remove", Kind::SeqOp, br#"{"instance":1,"stage":0,"op":{"Remove":{"seq":0,"p0":3,"p1":-1}}}"#.to_vec()),
        ("unload", Kind::Unload, br#"{"instance":1}"#.to_vec()),
        ("pong", Kind::Pong, profile),
        ("pong_held", Kind::Pong, pong_held),
        ("load_progress", Kind::LoadProgress, progress),
        ("error", Kind::Error, refusal),
        ("other_cluster", Kind::OtherCluster, vec![0, 1, 2, 3, 4, 5, 6, 7, 8]),
    ] {
        seeds.push(("messages", name, with(kind as u8, &payload)));
    }
    // handshake: a real first message from the fuzz initiator (the responder gets past it), and
    // the answers an initiator can get
    let mut rec = Recorder::default();
    let _ = noise::initiate(&mut rec, &fuzz_security(true)).await;
    seeds.push(("handshake", "first_message", with(0, &rec.0)));
    let other = frame_bytes(Kind::OtherCluster, &[0, 9, 9, 9, 9, 9, 9, 9, 9]);
    seeds.push(("handshake", "other_cluster", with(1, &other)));
    seeds.push(("handshake", "refused", with(1, &frame_bytes(Kind::Refused, b"no"))));
    // gguf: a small complete file, and the real header of the test model
    let d = tempfile::tempdir().unwrap();
    let mut w = exo::gguf::GgufWriter::new();
    w.set("general.architecture", exo::gguf::Value::Str("llama".into()));
    w.set("llama.block_count", exo::gguf::Value::U32(2));
    w.set("llama.embedding_length", exo::gguf::Value::U32(8));
    w.set("tokenizer.ggml.tokens", exo::gguf::Value::Array(vec![exo::gguf::Value::Str("a".into())]));
    for name in ["token_embd.weight", "blk.0.attn_q.weight", "blk.1.attn_q.weight", "output.weight"] {
        w.add_tensor(exo::gguf::TensorSpec { name: name.into(), dims: vec![8, 4], type_id: 0 });
    }
    let small = d.path().join("small.gguf");
    w.write(&small, |t, out| out.write_all(&vec![0u8; t.bytes() as usize])).unwrap();
    seeds.push(("gguf", "small", std::fs::read(&small).unwrap()));
    let model = common::model("tiny-llama");
    let header = exo::gguf::GgufFile::open(&model).unwrap();
    let head = std::fs::read(&model).unwrap()[..header.data_offset as usize].to_vec();
    if head.len() < 64 << 10 {
        seeds.push(("gguf", "tiny_llama_header", head));
    }
    // cluster file and --split
    let toml = "[[node]]\nname = \"a\"\nmemory = \"64GiB\"\nbackend = \"metal\"\ndecode_gbps = 400\nprefill_tflops = 20\n\n[[node]]\nname = \"b\"\nmemory = \"128GiB\"\nbackend = \"cpu\"\ndecode_gbps = 60\n\n[[link]]\na = \"a\"\nb = \"b\"\nbandwidth = \"1Gbit\"\nlatency = \"0.3ms\"\n";
    seeds.push(("cluster_file", "two_nodes", toml.as_bytes().to_vec()));
    seeds.push(("cluster_file", "split_named", b"\x08a=0:4,b=4:8".to_vec()));
    seeds.push(("cluster_file", "split_ranges", b"\x160:11,11:22".to_vec()));
    seeds.push(("cluster_file", "units", b"100MB/s".to_vec()));
    // api: one valid body per route
    let bodies: [&str; 10] = [
        r#"{"model":"m","prompt":"Hi","stream":false,"options":{"num_predict":4,"temperature":0}}"#,
        r#"{"model":"m","messages":[{"role":"user","content":"Hi"}],"keep_alive":"5m"}"#,
        r#"{"model":"m"}"#,
        r#"{"model":"hf.co/org/repo:Q8_0","stream":false}"#,
        r#"{"model":"m"}"#,
        r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":4,"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"model":"m","prompt":"Hi","max_tokens":4,"stop":["\n"]}"#,
        r#"{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"Hi"}],"system":"be brief"}"#,
        r#"{"model":"m","placement":[{"node":"a","begin":0,"end":4}]}"#,
        r#"{"model":"m","pp":[16],"tg":4,"repeat":1}"#,
    ];
    for (i, b) in bodies.iter().enumerate() {
        let name = exo::fuzzing::API_ROUTES[i].1.trim_start_matches('/').replace('/', "_");
        seeds.push(("api", Box::leak(name.into_boxed_str()), with(i as u8, b.as_bytes())));
    }
    for (target, name, data) in seeds {
        let d = dir("seeds").join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), data).unwrap();
    }
}
