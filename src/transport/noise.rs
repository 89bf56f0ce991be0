//! Peer connections are authenticated and encrypted: a Noise handshake keyed by the cluster
//! secret, then every frame inside encrypted, authenticated records.
//!
//! The pattern is `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2s`:
//! - **XX**: both sides send their static keys, encrypted, during the handshake. Nodes find each
//!   other by mDNS or `--peers` and know nothing of each other's keys beforehand, which rules out
//!   KK and IK (they need the peer's static key in advance: a key directory, or trust on first
//!   use). The static keys still give every connection a long-term node identity.
//! - **psk0**: the cluster secret is mixed in before the first message, so the first message's
//!   AEAD tag already proves that the initiator holds it. A responder rejects an outsider before
//!   any Diffie-Hellman work and before it sends its static key; with psk3 (the usual XX choice)
//!   an outsider would get the responder's static key and two DH operations per attempt, and the
//!   initiator's static key would travel under keys an active outsider could derive.
//! - **ChaChaPoly, BLAKE2s**: constant-time and fast in plain software on every CPU we target
//!   (no AES instructions needed); WireGuard's choice too.
//!
//! Before the handshake each side's preamble (a flags byte and the cluster's key id) travels in
//! the clear and is bound into the handshake as its prologue, so that a node of another cluster
//! gets a clear refusal naming both key ids instead of a failed decryption.
//!
//! Records: a u16 big-endian length, then one Noise transport message (ciphertext and a 16-byte
//! tag; at most 65535 bytes, Noise's limit). The plaintexts are the frame byte stream of
//! frame.rs, parsed with the same [`decode_header`] (magic, version, size cap before
//! allocating). Each direction's nonce is its record counter (TCP keeps records in order), so a
//! replayed, dropped, reordered or altered record fails authentication and ends the connection;
//! each direction rekeys (Noise's REKEY) every [`REKEY_EVERY`] records.

use super::frame::{decode_header, encode_header, read_frame_capped, write_frame, Frame, Header, HEADER_LEN};
use super::message::Kind;
use super::TransportError;
use crate::secret::{KeyId, NodeKeys};
use snow::StatelessTransportState;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::secret::NOISE_PARAMS;
const PROLOGUE: &[u8] = b"exo-rs peer protocol 2";
const TAG: usize = 16;
/// Noise's largest message.
pub const MAX_RECORD: usize = 65535;
/// Plaintext bytes per record.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG;
/// Records per direction between rekeys.
pub const REKEY_EVERY: u64 = 1 << 16;
/// Handshake frames are tiny (preamble + at most 96 bytes); anything bigger is refused before
/// it is read.
const MAX_HANDSHAKE_FRAME: u32 = 512;
const PREAMBLE_LEN: usize = 9;
const FLAG_PLAINTEXT: u8 = 1;
/// Records are gathered up to this many bytes per socket write.
const FLUSH_AT: usize = 1 << 20;

/// How this node authenticates and protects its peer connections.
#[derive(Clone, Debug)]
pub struct Security {
    pub keys: Arc<NodeKeys>,
    /// Bench only (`EXO_UNSAFE_PLAINTEXT_PEERS`): handshake as usual, then records travel
    /// unencrypted and unauthenticated, to measure what encryption costs. Both sides must agree.
    pub plaintext: bool,
    /// First handshake messages this node answered lately (shared by its clones: one node, one
    /// record; a harness or test that makes a new `Security` starts from none).
    pub answered: FirstMessages,
}

impl Security {
    pub fn new(keys: Arc<NodeKeys>) -> Security {
        Security { keys, plaintext: false, answered: FirstMessages::default() }
    }

    pub fn key_id(&self) -> KeyId {
        self.keys.key_id()
    }

    fn preamble(&self) -> [u8; PREAMBLE_LEN] {
        let mut p = [0u8; PREAMBLE_LEN];
        p[0] = if self.plaintext { FLAG_PLAINTEXT } else { 0 };
        p[1..].copy_from_slice(&self.key_id().0);
        p
    }

    /// Starts a handshake (the builder only borrows; the state copies what it needs).
    fn handshake(&self, initiator: bool) -> Result<snow::HandshakeState, TransportError> {
        let mut prologue = PROLOGUE.to_vec();
        prologue.extend_from_slice(&self.preamble());
        let psk = self.keys.secret.psk();
        let b = snow::Builder::new(NOISE_PARAMS.parse().expect("valid pattern"))
            .local_private_key(&self.keys.private)
            .and_then(|b| b.psk(0, &psk))
            .and_then(|b| b.prologue(&prologue))
            .map_err(hs_err("setting up the handshake"))?;
        if initiator { b.build_initiator() } else { b.build_responder() }.map_err(hs_err("starting the handshake"))
    }
}

pub fn parse_preamble(b: &[u8]) -> Result<(u8, KeyId), TransportError> {
    if b.len() < PREAMBLE_LEN {
        return Err(TransportError::Handshake(format!("a {}-byte handshake message is too short", b.len())));
    }
    Ok((b[0], KeyId(b[1..PREAMBLE_LEN].try_into().expect("8 bytes"))))
}

fn hs_err(what: &str) -> impl Fn(snow::Error) -> TransportError + '_ {
    move |e| TransportError::Handshake(format!("{what}: {e}"))
}

/// The state a completed handshake leaves: the transport keys and who the peer is.
pub struct Session {
    cipher: Cipher,
    pub remote_static: [u8; 32],
}

#[derive(Clone)]
enum Cipher {
    Noise(Arc<RwLock<StatelessTransportState>>),
    Plain,
}

fn finish(hs: snow::HandshakeState, sec: &Security) -> Result<Session, TransportError> {
    let remote_static = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| TransportError::Handshake("the peer sent no static key".into()))?;
    let t = hs.into_stateless_transport_mode().map_err(hs_err("finishing the handshake"))?;
    let cipher = if sec.plaintext { Cipher::Plain } else { Cipher::Noise(Arc::new(RwLock::new(t))) };
    Ok(Session { cipher, remote_static })
}

impl Session {
    /// A record layer without keys: records travel unencrypted. Only the bench-only plaintext
    /// mode reaches it through a handshake; tests and the fuzz targets drive the frame parser
    /// inside records with it.
    pub fn plaintext() -> Session {
        Session { cipher: Cipher::Plain, remote_static: [0u8; 32] }
    }

    /// The record reader and writer over the two halves of the connection.
    pub fn split<R, W>(self, r: R, w: W) -> (RecordReader<R>, RecordWriter<W>) {
        self.split_rekeying(r, w, REKEY_EVERY)
    }

    pub fn split_rekeying<R, W>(self, r: R, w: W, rekey_every: u64) -> (RecordReader<R>, RecordWriter<W>) {
        let reader = RecordReader {
            r,
            cipher: self.cipher.clone(),
            nonce: 0,
            rekey_every,
            plain: Vec::with_capacity(MAX_PLAIN),
            at: 0,
            rec: vec![0u8; MAX_RECORD],
        };
        let writer = RecordWriter { w, cipher: self.cipher, nonce: 0, rekey_every, out: Vec::new(), first: Vec::new() };
        (reader, writer)
    }
}

fn handshake_frame(payload: Vec<u8>) -> Frame {
    Frame { kind: Kind::Handshake as u16, request: 0, payload }
}

/// The connecting side's handshake.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sec: &Security) -> Result<Session, TransportError> {
    let mut hs = sec.handshake(true)?;
    let mut buf = [0u8; 256];
    let n = hs.write_message(&[], &mut buf).map_err(hs_err("first message"))?;
    let mut first = sec.preamble().to_vec();
    first.extend_from_slice(&buf[..n]);
    write_frame(s, &handshake_frame(first)).await?;
    let f = read_frame_capped(s, MAX_HANDSHAKE_FRAME).await?.ok_or(TransportError::Closed)?;
    match Kind::from_u16(f.kind) {
        Some(Kind::Handshake) => {}
        Some(Kind::OtherCluster) => {
            let (_, theirs) = parse_preamble(&f.payload)?;
            return Err(TransportError::OtherCluster { ours: sec.key_id(), theirs });
        }
        Some(Kind::Refused) => {
            return Err(TransportError::Refused(String::from_utf8_lossy(&f.payload).into_owned()));
        }
        _ => return Err(TransportError::Unexpected(f.kind)),
    }
    hs.read_message(&f.payload, &mut buf).map_err(|_| {
        TransportError::Handshake(
            "the peer's answer failed authentication: it does not hold this cluster's secret".into(),
        )
    })?;
    let n = hs.write_message(&[], &mut buf).map_err(hs_err("third message"))?;
    write_frame(s, &handshake_frame(buf[..n].to_vec())).await?;
    finish(hs, sec)
}

/// First handshake messages answered lately, by their ephemeral key (a fresh one per handshake
/// from an honest peer).
#[derive(Clone, Default)]
pub struct FirstMessages(Arc<Seen>);

impl std::fmt::Debug for FirstMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstMessages")
    }
}

/// Ephemeral keys seen, the newest [`Seen::CAP`] of them.
#[derive(Default)]
struct Seen(std::sync::Mutex<SeenKeys>);

/// The keys (for lookups) and their order (to forget the oldest).
type SeenKeys = (std::collections::HashSet<[u8; 32]>, std::collections::VecDeque<[u8; 32]>);

impl Seen {
    const CAP: usize = 1 << 16;

    /// Records the ephemeral key `msg` starts with; false when it was seen before.
    fn fresh(&self, msg: &[u8]) -> bool {
        let Some(e) = msg.get(..32).and_then(|e| <[u8; 32]>::try_from(e).ok()) else { return false };
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (set, order) = &mut *g;
        if !set.insert(e) {
            return false;
        }
        order.push_back(e);
        if order.len() > Self::CAP {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }
}

/// The accepting side's handshake; refuses a peer of another cluster with both key ids.
pub async fn respond<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, sec: &Security) -> Result<Session, TransportError> {
    let f = read_frame_capped(s, MAX_HANDSHAKE_FRAME).await?.ok_or(TransportError::Closed)?;
    if f.kind != Kind::Handshake as u16 {
        return Err(TransportError::Unexpected(f.kind));
    }
    let (flags, theirs) = parse_preamble(&f.payload)?;
    let refuse = |reason: String| Frame { kind: Kind::Refused as u16, request: 0, payload: reason.into_bytes() };
    if theirs != sec.key_id() {
        let _ =
            write_frame(s, &Frame { kind: Kind::OtherCluster as u16, request: 0, payload: sec.preamble().to_vec() })
                .await;
        return Err(TransportError::OtherCluster { ours: sec.key_id(), theirs });
    }
    if flags != sec.preamble()[0] {
        let msg = "one of the two nodes runs with EXO_UNSAFE_PLAINTEXT_PEERS (bench only) and the other does not";
        let _ = write_frame(s, &refuse(msg.into())).await;
        return Err(TransportError::Handshake(msg.into()));
    }
    let mut hs = sec.handshake(false)?;
    let mut buf = [0u8; 256];
    if hs.read_message(&f.payload[PREAMBLE_LEN..], &mut buf).is_err() {
        let _ = write_frame(
            s,
            &refuse("the handshake failed: this node could not authenticate you with the cluster secret".into()),
        )
        .await;
        return Err(TransportError::Handshake(
            "the peer's first message failed authentication: it names this cluster's key id but does not hold its secret".into(),
        ));
    }
    // a recorded first message sent again passes the check above (it is authentic), and
    // answering it costs the DH work of the second message: a repeat is refused before that
    if !sec.answered.0.fresh(&f.payload[PREAMBLE_LEN..]) {
        return Err(TransportError::Handshake("a replayed first handshake message".into()));
    }
    let n = hs.write_message(&[], &mut buf).map_err(hs_err("second message"))?;
    write_frame(s, &handshake_frame(buf[..n].to_vec())).await?;
    let f = read_frame_capped(s, MAX_HANDSHAKE_FRAME).await?.ok_or(TransportError::Closed)?;
    if f.kind != Kind::Handshake as u16 {
        return Err(TransportError::Unexpected(f.kind));
    }
    hs.read_message(&f.payload, &mut buf)
        .map_err(|_| TransportError::Handshake("the peer's last handshake message failed authentication".into()))?;
    finish(hs, sec)
}

/// Writes frames as encrypted records.
pub struct RecordWriter<W> {
    w: W,
    cipher: Cipher,
    nonce: u64,
    rekey_every: u64,
    out: Vec<u8>,
    first: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> RecordWriter<W> {
    pub async fn write_frame(&mut self, f: &Frame) -> Result<(), TransportError> {
        let h = encode_header(f)?;
        // the first record carries the header and the start of the payload
        let k = f.payload.len().min(MAX_PLAIN - HEADER_LEN);
        let mut first = std::mem::take(&mut self.first);
        first.clear();
        first.extend_from_slice(&h);
        first.extend_from_slice(&f.payload[..k]);
        self.out.clear();
        let r = self.seal(&first);
        self.first = first;
        r?;
        for chunk in f.payload[k..].chunks(MAX_PLAIN) {
            self.seal(chunk)?;
            if self.out.len() >= FLUSH_AT {
                self.w.write_all(&self.out).await?;
                self.out.clear();
            }
        }
        self.w.write_all(&self.out).await?;
        self.w.flush().await?;
        Ok(())
    }

    fn seal(&mut self, plain: &[u8]) -> Result<(), TransportError> {
        let start = self.out.len();
        match &self.cipher {
            Cipher::Plain => {
                self.out.extend_from_slice(&(plain.len() as u16).to_be_bytes());
                self.out.extend_from_slice(plain);
            }
            Cipher::Noise(t) => {
                let len = plain.len() + TAG;
                self.out.resize(start + 2 + len, 0);
                self.out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
                let n = t
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_message(self.nonce, plain, &mut self.out[start + 2..])
                    .map_err(|e| TransportError::Handshake(format!("encrypting: {e}")))?;
                debug_assert_eq!(n, len);
                self.nonce += 1;
                if self.nonce % self.rekey_every == 0 {
                    t.write().unwrap_or_else(|e| e.into_inner()).rekey_outgoing();
                }
            }
        }
        Ok(())
    }
}

/// Reads frames out of encrypted records.
pub struct RecordReader<R> {
    r: R,
    cipher: Cipher,
    nonce: u64,
    rekey_every: u64,
    plain: Vec<u8>,
    at: usize,
    rec: Vec<u8>,
}

impl<R: AsyncRead + Unpin> RecordReader<R> {
    /// The next frame's checked header; `Ok(None)` on a clean end between frames.
    pub async fn read_header(&mut self) -> Result<Option<Header>, TransportError> {
        if self.at == self.plain.len() && !self.fill().await? {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_LEN];
        self.take(&mut h).await?;
        decode_header(&h).map(Some)
    }

    /// The payload of the frame whose header was just read (`len` already checked).
    pub async fn read_payload(&mut self, len: u32) -> Result<Vec<u8>, TransportError> {
        let mut p = vec![0u8; len as usize];
        self.take(&mut p).await?;
        Ok(p)
    }

    pub async fn read_frame(&mut self) -> Result<Option<Frame>, TransportError> {
        let Some(h) = self.read_header().await? else { return Ok(None) };
        let payload = self.read_payload(h.len).await?;
        Ok(Some(Frame { kind: h.kind, request: h.request, payload }))
    }

    async fn take(&mut self, out: &mut [u8]) -> Result<(), TransportError> {
        let mut done = 0;
        while done < out.len() {
            if self.at == self.plain.len() && !self.fill().await? {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
            let n = (out.len() - done).min(self.plain.len() - self.at);
            out[done..done + n].copy_from_slice(&self.plain[self.at..self.at + n]);
            (done, self.at) = (done + n, self.at + n);
        }
        Ok(())
    }

    /// Reads and opens the next record; `Ok(false)` on a clean end of stream before it.
    async fn fill(&mut self) -> Result<bool, TransportError> {
        let mut l = [0u8; 2];
        match self.r.read_exact(&mut l[..1]).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        self.r.read_exact(&mut l[1..]).await?;
        let len = u16::from_be_bytes(l) as usize;
        let min = match self.cipher {
            Cipher::Plain => 1,
            Cipher::Noise(_) => TAG + 1,
        };
        if len < min {
            return Err(TransportError::Crypto);
        }
        self.r.read_exact(&mut self.rec[..len]).await?;
        self.at = 0;
        match &self.cipher {
            Cipher::Plain => {
                self.plain.clear();
                self.plain.extend_from_slice(&self.rec[..len]);
            }
            Cipher::Noise(t) => {
                self.plain.resize(len - TAG, 0);
                t.read()
                    .unwrap_or_else(|e| e.into_inner())
                    .read_message(self.nonce, &self.rec[..len], &mut self.plain)
                    .map_err(|_| TransportError::Crypto)?;
                self.nonce += 1;
                if self.nonce % self.rekey_every == 0 {
                    t.write().unwrap_or_else(|e| e.into_inner()).rekey_incoming();
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::ClusterSecret;

    fn sec(secret: u8) -> Security {
        Security::new(Arc::new(NodeKeys::ephemeral(ClusterSecret::from_bytes([secret; 32])).unwrap()))
    }

    async fn pair(a: Security, b: Security) -> (Result<Session, TransportError>, Result<Session, TransportError>) {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        tokio::join!(initiate(&mut x, &a), respond(&mut y, &b))
    }

    #[tokio::test]
    async fn same_secret_talks_other_secret_is_refused_by_key_id() {
        let (a, b) = (sec(1), sec(1));
        let (i, r) = pair(a.clone(), b.clone()).await;
        let (i, r) = (i.unwrap(), r.unwrap());
        assert_eq!(i.remote_static, b.keys.public);
        assert_eq!(r.remote_static, a.keys.public);
        let (i, r) = pair(sec(1), sec(2)).await;
        for e in [i.err().unwrap(), r.err().unwrap()] {
            assert!(matches!(e, TransportError::OtherCluster { .. }), "{e}");
            let s = e.to_string();
            assert!(s.contains("another cluster") && s.contains(&sec(1).key_id().to_string()), "{s}");
            assert!(s.contains(&sec(2).key_id().to_string()), "{s}");
        }
        // plaintext (bench) and encrypted nodes never mix
        let plain = Security { plaintext: true, ..sec(1) };
        let (i, r) = pair(plain, sec(1)).await;
        assert!(i.is_err() && r.is_err());
    }

    #[tokio::test]
    async fn a_forged_key_id_without_the_secret_learns_nothing() {
        // same key id (copied from mDNS), another secret: the responder rejects message 1
        let honest = sec(1);
        let forger = sec(3);
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let pre = honest.preamble();
        // the forger's handshake uses its own secret under the honest key id
        let mut hs = Security::new(forger.keys.clone()).handshake(true).unwrap();
        let mut buf = [0u8; 256];
        let n = hs.write_message(&[], &mut buf).unwrap();
        let mut first = pre.to_vec();
        first.extend_from_slice(&buf[..n]);
        write_frame(&mut x, &handshake_frame(first)).await.unwrap();
        let r = respond(&mut y, &honest).await.err().unwrap();
        assert!(r.to_string().contains("does not hold"), "{r}");
        let f = read_frame_capped(&mut x, 512).await.unwrap().unwrap();
        assert_eq!(f.kind, Kind::Refused as u16, "no static key or handshake message in reply");
    }

    #[tokio::test]
    async fn a_replayed_first_message_is_refused_before_any_dh_work() {
        let honest = sec(7);
        // a genuine first message, recorded
        let mut hs = honest.handshake(true).unwrap();
        let mut buf = [0u8; 256];
        let n = hs.write_message(&[], &mut buf).unwrap();
        let mut first = honest.preamble().to_vec();
        first.extend_from_slice(&buf[..n]);
        let answer = |msg: Vec<u8>| {
            let honest = honest.clone();
            async move {
                let (mut x, mut y) = tokio::io::duplex(1 << 16);
                write_frame(&mut x, &handshake_frame(msg)).await.unwrap();
                drop(x);
                let t = std::time::Instant::now();
                (respond(&mut y, &honest).await.err().unwrap().to_string(), t.elapsed())
            }
        };
        // the first time it is answered (the reply costs the DH work; the replayer cannot go on)
        let (e, _) = answer(first.clone()).await;
        assert!(!e.contains("replayed"), "{e}");
        // replays are refused before that, 200 of them in well under the time of 200 DHs
        let t = std::time::Instant::now();
        for _ in 0..200 {
            let (e, _) = answer(first.clone()).await;
            assert!(e.contains("replayed"), "{e}");
        }
        println!("200 replays refused in {:?}", t.elapsed());
        // an honest peer's new handshake still works
        let (i, r) = pair(honest.clone(), honest.clone()).await;
        assert!(i.is_ok() && r.is_ok());
    }

    #[tokio::test]
    async fn frames_of_every_size_roundtrip_across_rekeys() {
        let (mut x, mut y) = tokio::io::duplex(1 << 20);
        let (si, sr) = (sec(1), sec(1));
        let (i, r) = tokio::join!(initiate(&mut x, &si), respond(&mut y, &sr));
        let (_xr, xw) = tokio::io::split(x);
        let (yr, _yw) = tokio::io::split(y);
        let (_, mut w) = i.unwrap().split_rekeying(tokio::io::empty(), xw, 3);
        let (mut rd, _) = r.unwrap().split_rekeying(yr, tokio::io::sink(), 3);
        let sizes = [0usize, 1, MAX_PLAIN - HEADER_LEN, MAX_PLAIN - HEADER_LEN + 1, 3 * MAX_PLAIN + 7, 200_000];
        let frames: Vec<Frame> = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| Frame { kind: 8, request: i as u64, payload: (0..*n).map(|b| (b * 7 + i) as u8).collect() })
            .collect();
        let want = frames.clone();
        let writer = tokio::spawn(async move {
            for f in &frames {
                w.write_frame(f).await.unwrap();
            }
        });
        for f in want {
            assert_eq!(rd.read_frame().await.unwrap().unwrap(), f);
        }
        writer.await.unwrap();
    }

    /// Records written by one session, opened by the other; `edit` alters the stream between.
    async fn deliver(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<Result<Option<Frame>, TransportError>> {
        let (mut x, mut y) = tokio::io::duplex(1 << 16);
        let (si, sr) = (sec(1), sec(1));
        let (i, r) = tokio::join!(initiate(&mut x, &si), respond(&mut y, &sr));
        let (_, mut w) = i.unwrap().split(tokio::io::empty(), Vec::new());
        for n in [10usize, 20, 30] {
            w.write_frame(&Frame { kind: 4, request: n as u64, payload: vec![n as u8; n] }).await.unwrap();
        }
        let mut wire = w.w.clone();
        edit(&mut wire);
        let (mut rd, _) = r.unwrap().split(&wire[..], tokio::io::sink());
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(rd.read_frame().await);
        }
        got
    }

    #[tokio::test]
    async fn tampered_replayed_or_dropped_records_fail_authentication() {
        let ok = deliver(|_| {}).await;
        assert!(ok.iter().all(|r| matches!(r, Ok(Some(_)))), "{ok:?}");
        // each frame is one record here: 2 + 16 + 20 + n bytes
        let first = 2 + TAG + HEADER_LEN + 10;
        let tampered = deliver(|w| w[first + 5] ^= 1).await;
        assert!(tampered[0].is_ok() && matches!(tampered[1], Err(TransportError::Crypto)), "{tampered:?}");
        let replayed = deliver(|w| {
            let rec = w[..first].to_vec();
            w.splice(first..first, rec);
        })
        .await;
        assert!(replayed[0].is_ok() && replayed[1].is_err(), "{replayed:?}");
        let dropped = deliver(|w| {
            w.drain(..first);
        })
        .await;
        assert!(dropped[0].is_err(), "{dropped:?}");
    }
}
