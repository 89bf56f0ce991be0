//! Fuzz harnesses: one function per fuzz target (fuzz/fuzz_targets/* call them), each feeding
//! arbitrary bytes to a parser that takes input from outside: peer frames and records, every
//! peer message decoder, the Noise handshake, the GGUF header reader, the cluster file and
//! `--split` parsers, and every API route's JSON body through the router. They panic only on a
//! broken invariant; `tests/inproc/fuzz_regressions.rs` replays the seed corpora and every input a
//! fuzzer ever crashed on through them in the normal test suite.

use crate::transport::noise::{self, Security, Session};
use crate::transport::{decode_header, read_frame, Kind, Message, HEADER_LEN, MAX_PAYLOAD};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A harness: takes any bytes, panics only on a broken invariant.
pub type Harness = fn(&[u8]);

/// The targets, by name (as in fuzz/Cargo.toml and the corpus folders).
pub const TARGETS: [(&str, Harness); 6] = [
    ("frame", frame),
    ("messages", messages),
    ("handshake", handshake),
    ("gguf", gguf),
    ("cluster_file", cluster_file),
    ("api", api),
];

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

/// Bare frames (the handshake's), then frames inside records (the plaintext record layer feeds
/// the same frame parser as the encrypted one).
pub fn frame(data: &[u8]) {
    if let Some(h) = data.get(..HEADER_LEN) {
        if let Ok(h) = decode_header(h.try_into().expect("20 bytes")) {
            assert!(h.len <= MAX_PAYLOAD);
        }
    }
    rt().block_on(async {
        let mut r = data;
        for _ in 0..64 {
            match read_frame(&mut r).await {
                Ok(Some(f)) => assert!(f.payload.len() <= MAX_PAYLOAD as usize),
                _ => break,
            }
        }
        let (mut rd, _) = Session::plaintext().split(data, tokio::io::sink());
        for _ in 0..64 {
            match rd.read_frame().await {
                Ok(Some(f)) => assert!(f.payload.len() <= MAX_PAYLOAD as usize),
                _ => break,
            }
        }
    });
}

/// First byte: the frame kind; the rest: its payload, through the one peer message codec (and
/// the Noise preamble parser for the handshake's own kind). What decodes re-encodes to a payload
/// that decodes to the same message (compared by its encoding).
pub fn messages(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else { return };
    let kind = k as u16 % 23;
    if kind == Kind::OtherCluster as u16 {
        let _ = crate::transport::noise::parse_preamble(rest);
    }
    if let Ok(m) = Message::decode(kind, rest) {
        assert_eq!(m.kind() as u16, kind);
        let b = m.encode();
        let again = Message::decode(kind, &b).unwrap_or_else(|e| panic!("{m:?} re-decodes: {e}"));
        assert_eq!(again.encode(), b, "{m:?}");
    }
}

/// A stream that reads a fixed script and swallows what is written.
struct Scripted<'a> {
    input: &'a [u8],
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.input.len());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The fixed identities the handshake target plays: cluster secret [7; 32], static keys [1; 32]
/// (initiator) and [2; 32] (responder); seeds recorded with them reach past the first message.
pub fn fuzz_security(initiator: bool) -> Security {
    let private = if initiator { [1u8; 32] } else { [2u8; 32] };
    let keys = crate::secret::NodeKeys {
        secret: crate::secret::ClusterSecret::from_bytes([7u8; 32]),
        private,
        public: [0u8; 32],
    };
    Security::new(Arc::new(keys))
}

/// First byte even: we answer a handshake scripted by the input; odd: we start one and the
/// input is the answer. A completed handshake goes on to read records from the rest.
pub fn handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    rt().block_on(async {
        let mut s = Scripted { input: rest };
        let r = if mode % 2 == 0 {
            noise::respond(&mut s, &fuzz_security(false)).await
        } else {
            noise::initiate(&mut s, &fuzz_security(true)).await
        };
        if let Ok(session) = r {
            let (mut rd, _) = session.split(s.input, tokio::io::sink());
            while let Ok(Some(_)) = rd.read_frame().await {}
        }
    });
}

/// A GGUF header (metadata, tensor table) and the model shape derived from it.
pub fn gguf(data: &[u8]) {
    let path = std::path::Path::new("fuzz.gguf");
    if let Ok(f) = crate::gguf::GgufFile::parse(data, path, data.len() as u64) {
        for t in &f.tensors {
            // sizes computed without wrapping (release builds do not trap on overflow)
            let (blck, tsize) = crate::gguf::ggml_type_size(t.type_id).expect("checked type");
            let n: u128 = t.dims.iter().map(|d| *d as u128).product();
            assert_eq!(t.bytes as u128, n / blck as u128 * tsize as u128, "{t:?}");
            let end = f.data_offset as u128 + t.offset as u128 + t.bytes as u128;
            assert!(end <= data.len() as u128, "{t:?}");
        }
        let _ = crate::gguf::ModelShape::from_files(&crate::gguf::ModelFiles { files: vec![f] });
    }
}

/// A cluster file, a `--split` (first byte: the model's layer count) and the unit parsers.
pub fn cluster_file(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = crate::placement::parse_cluster(s);
    let n_layer = data.first().copied().unwrap_or(0) as u32;
    if let Ok(stages) = crate::placement::parse_split(s.get(1..).unwrap_or(""), n_layer) {
        // a parsed split covers the model, in order, without gaps
        let tiled = crate::engine::LayerRange::tiling(stages.iter().map(|st| st.range), n_layer);
        assert_eq!(tiled, Ok(()), "{stages:?}");
    }
    let _ = crate::placement::units::parse_size(s);
    let _ = crate::placement::units::parse_bandwidth(s);
    let _ = crate::placement::units::parse_duration(s);
}

/// The routes that take a body (method, path), chosen by the input's first byte.
pub const API_ROUTES: [(&str, &str); 10] = [
    ("POST", "/api/generate"),
    ("POST", "/api/chat"),
    ("POST", "/api/show"),
    ("POST", "/api/pull"),
    ("DELETE", "/api/delete"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/messages"),
    ("POST", "/instances"),
    ("POST", "/bench"),
];

fn api_router() -> &'static axum::Router {
    static APP: OnceLock<(axum::Router, tempfile::TempDir)> = OnceLock::new();
    &APP.get_or_init(|| {
        // an empty, offline store: bodies are parsed and checked, no model is ever loaded
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = crate::store::Store::from_env();
        store.dirs = vec![dir.path().to_path_buf()];
        store.read_only = vec![];
        store.hf_cache = None;
        store.ollama = None;
        store.offline = true;
        let runtime = crate::runtime::Runtime::new(store, crate::runtime::Limits::default(), None);
        (crate::api::router(crate::api::AppState { runtime }), dir)
    })
    .0
}

/// A JSON body through the router: any answer but a server error (a 503 "busy" aside).
pub fn api(data: &[u8]) {
    use tower::ServiceExt;
    let Some((&r, body)) = data.split_first() else { return };
    let (method, path) = API_ROUTES[r as usize % API_ROUTES.len()];
    rt().block_on(async {
        let req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(body.to_vec()))
            .expect("request");
        let resp = api_router().clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let text = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
        assert!(
            !status.is_server_error() || status == axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&text)
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_messages_seed_reaches_past_the_codec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/messages");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            let kind = data[0] as u16 % 23;
            if kind != Kind::OtherCluster as u16 {
                let m = Message::decode(kind, &data[1..]);
                assert!(m.is_ok(), "{}: {:?}", e.path().display(), m.err());
            }
            messages(&data);
            n += 1;
        }
        assert!(n >= 19, "{n} seeds");
    }
}
