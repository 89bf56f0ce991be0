//! A peer connection: the Noise handshake, then the hello; a writer task, and a reader task
//! that hands answers to whoever asked (by request id) and everything else to the node as
//! [`Incoming`], each frame counted against the node's byte budget until it is handled.

use super::frame::{write_frame, Frame, HEADER_LEN, PROTOCOL_VERSION};
use super::message::{Kind, Message};
use super::noise::{self, RecordReader, RecordWriter, Security};
use super::payload::Hello;
use super::TransportError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// The whole handshake (Noise and hello) must be done within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A frame's payload must keep coming once its header arrived: all of it within this plus a
/// second per [`PAYLOAD_MIN_RATE`] bytes, or the connection closes (giving back its share of
/// [`QUEUE_BUDGET`]), so that stalled frames cannot hold the budget every peer reads into.
pub const PAYLOAD_GRACE: Duration = Duration::from_secs(10);
pub const PAYLOAD_MIN_RATE: u64 = 1 << 20;

fn payload_deadline(grace: Duration, len: u32) -> Duration {
    grace + Duration::from_secs(len as u64 / PAYLOAD_MIN_RATE)
}

/// Bytes of received frames a node holds before they are handled (all connections together):
/// a reader waits for room before it allocates a payload, so TCP pushes back on the sender.
pub const QUEUE_BUDGET: usize = 512 << 20;

/// What a node brings to each of its connections.
#[derive(Clone)]
pub struct Endpoint {
    pub hello: Hello,
    pub security: Security,
    pub incoming: mpsc::Sender<Incoming>,
    /// Bytes of received frames not yet handled ([`QUEUE_BUDGET`]).
    pub budget: Arc<Semaphore>,
    /// [`PAYLOAD_GRACE`] (shorter in tests).
    pub payload_grace: Duration,
}

impl Endpoint {
    pub fn new(hello: Hello, security: Security, incoming: mpsc::Sender<Incoming>) -> Endpoint {
        let budget = Arc::new(Semaphore::new(QUEUE_BUDGET));
        Endpoint { hello, security, incoming, budget, payload_grace: PAYLOAD_GRACE }
    }
}

/// A frame the node must act on, with the connection it came in on (to answer) and its share of
/// the byte budget (released when dropped: keep it as long as the frame's data is queued).
pub struct Incoming {
    pub frame: Frame,
    pub conn: Conn,
    pub queued: OwnedSemaphorePermit,
}

/// Kinds that answer a request on the same connection.
fn is_answer(kind: u16) -> bool {
    [Kind::Pong, Kind::Loaded, Kind::SeqDone, Kind::Error, Kind::WeightsMeta, Kind::WeightsData]
        .iter()
        .any(|k| *k as u16 == kind)
}

#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Hello,
    /// The peer's Noise static key (its node identity).
    peer_key: [u8; 32],
    /// Wakes the writer when the reader ends, so the socket closes at once.
    close: Notify,
    tx: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    next: AtomicU64,
    closed: AtomicBool,
    /// Set once with `closed`, for those who wait for it ([`Conn::closed`]).
    closed_watch: tokio::sync::watch::Sender<bool>,
    /// Bytes (headers included) of the frames that carry inference data (batches of tokens or
    /// hidden states, sampled tokens) queued on this connection; heartbeats and control are not.
    data_sent: AtomicU64,
}

/// Kinds that carry inference data, counted by [`Conn::data_bytes_sent`].
fn is_data(kind: Kind) -> bool {
    matches!(kind, Kind::Forward | Kind::Tokens)
}

impl Conn {
    pub fn peer(&self) -> &Hello {
        &self.inner.peer
    }

    /// First 8 bytes of the peer's static key, in hex.
    pub fn peer_key(&self) -> String {
        self.inner.peer_key[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
    }

    /// Closes the connection: the writer ends (shutting the socket for writing), so the peer
    /// sees it end; anything it still sends is read and dropped until it does.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.closed_watch.send_replace(true);
        self.inner.close.notify_one();
    }

    /// Completes once the connection has closed (at once if it has).
    pub async fn closed(&self) {
        let mut rx = self.inner.closed_watch.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Inference data sent on this connection so far (frame headers included).
    pub fn data_bytes_sent(&self) -> u64 {
        self.inner.data_sent.load(Ordering::Relaxed)
    }

    /// Sends without waiting for an answer.
    pub async fn send(&self, kind: Kind, request: u64, payload: Vec<u8>) -> Result<(), TransportError> {
        if self.is_closed() {
            return Err(TransportError::Closed);
        }
        if is_data(kind) {
            let n = (super::frame::HEADER_LEN + payload.len()) as u64;
            self.inner.data_sent.fetch_add(n, Ordering::Relaxed);
        }
        self.inner.tx.send(Frame { kind: kind as u16, request, payload }).await.map_err(|_| TransportError::Closed)
    }

    /// A fresh request id (unique on this connection).
    pub fn next_id(&self) -> u64 {
        self.inner.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `m` as the answer to (or without one: 0) `request`.
    pub async fn tell(&self, request: u64, m: &Message) -> Result<(), TransportError> {
        self.send(m.kind(), request, m.encode()).await
    }

    /// Sends `m` and waits for its answer; a typed error answer is [`TransportError::Peer`].
    pub async fn call(&self, m: &Message, timeout: Duration) -> Result<Message, TransportError> {
        let f = self.request(m.kind(), m.encode(), timeout).await?;
        match Message::decode(f.kind, &f.payload)? {
            Message::Error(e) => Err(TransportError::Peer(e)),
            answer => Ok(answer),
        }
    }

    /// Sends and waits for the answer frame with the same request id (an error answer too).
    pub async fn request(&self, kind: Kind, payload: Vec<u8>, timeout: Duration) -> Result<Frame, TransportError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().unwrap().insert(id, tx);
        // the reader marks the connection closed before it drops the waiters: checking after
        // registering means a dead connection never leaves us waiting for the timeout
        if self.is_closed() {
            self.inner.pending.lock().unwrap().remove(&id);
            return Err(TransportError::Closed);
        }
        if let Err(e) = self.send(kind, id, payload).await {
            self.inner.pending.lock().unwrap().remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

/// Starts the connection's tasks; `guard` is dropped when the connection ends.
fn spawn<G, R, W>(
    mut rd: RecordReader<R>,
    mut wr: RecordWriter<W>,
    peer: Hello,
    peer_key: [u8; 32],
    ep: &Endpoint,
    guard: G,
) -> Conn
where
    G: Send + 'static,
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let conn = Conn {
        inner: Arc::new(Inner {
            peer,
            peer_key,
            close: Notify::new(),
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closed_watch: tokio::sync::watch::Sender::new(false),
            data_sent: AtomicU64::new(0),
        }),
    };
    let c = conn.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => if wr.write_frame(&f).await.is_err() { break },
                    None => break,
                },
                _ = c.inner.close.notified() => break,
            }
        }
        // dropping the write half shuts the socket down for writing
    });
    let (c, incoming, budget, grace) = (conn.clone(), ep.incoming.clone(), ep.budget.clone(), ep.payload_grace);
    tokio::spawn(async move {
        let _guard = guard;
        let end = loop {
            let h = match rd.read_header().await {
                Ok(Some(h)) => h,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            // room in the budget first, then the allocation
            let Ok(queued) = budget.clone().acquire_many_owned(h.len + HEADER_LEN as u32).await else { break None };
            let limit = payload_deadline(grace, h.len);
            let payload = match tokio::time::timeout(limit, rd.read_payload(h.len)).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => break Some(e),
                Err(_) => break Some(TransportError::Timeout(limit)),
            };
            let f = Frame { kind: h.kind, request: h.request, payload };
            if is_answer(f.kind) {
                if let Some(w) = c.inner.pending.lock().unwrap().remove(&f.request) {
                    let _ = w.send(f);
                }
                continue;
            }
            if incoming.send(Incoming { frame: f, conn: c.clone(), queued }).await.is_err() {
                break None;
            }
        };
        if let Some(e) = end {
            // a malformed, oversized, tampered or replayed frame ends this connection, nothing else
            tracing::warn!(peer = %c.inner.peer.node_name, "closing peer connection: {e}");
        }
        c.inner.closed.store(true, Ordering::Relaxed);
        c.inner.closed_watch.send_replace(true);
        c.inner.close.notify_one();
        // waking every waiter with an error: dropping their senders does it
        c.inner.pending.lock().unwrap().clear();
    });
    conn
}

fn frame(m: &Message) -> Frame {
    Frame { kind: m.kind() as u16, request: 0, payload: m.encode() }
}

fn refuse(reason: String) -> Frame {
    frame(&Message::Refused(reason))
}

/// Connects to a peer: the Noise handshake, then introduces ourselves; fails with the peer's
/// reason if refused.
pub async fn connect(addr: &str, ep: &Endpoint) -> Result<Conn, TransportError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let session = noise::initiate(&mut s, &ep.security).await?;
        let peer_key = session.remote_static;
        let (r, w) = s.into_split();
        let (mut rd, mut wr) = session.split(r, w);
        wr.write_frame(&frame(&Message::Hello(ep.hello.clone()))).await?;
        let f = rd.read_frame().await?.ok_or(TransportError::Closed)?;
        match Message::decode(f.kind, &f.payload)? {
            Message::Welcome(theirs) => {
                if theirs.namespace != ep.hello.namespace {
                    return Err(TransportError::Namespace {
                        ours: ep.hello.namespace.clone(),
                        theirs: theirs.namespace,
                    });
                }
                Ok(spawn(rd, wr, theirs, peer_key, ep, ()))
            }
            Message::Refused(why) => Err(TransportError::Refused(why)),
            _ => Err(TransportError::Unexpected(f.kind)),
        }
    })
    .await
    .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?
}

/// Answers a connecting peer: the Noise handshake (a peer of another cluster is refused with
/// both key ids), then its protocol version and namespace, refusing with a reason the other side
/// will print. Everything within [`HANDSHAKE_TIMEOUT`]. `guard` (a connection slot) is held for
/// as long as the connection lives.
pub async fn accept<G: Send + 'static>(s: TcpStream, ep: &Endpoint, guard: G) -> Result<Conn, TransportError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_inner(s, ep, guard))
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?
}

async fn accept_inner<G: Send + 'static>(mut s: TcpStream, ep: &Endpoint, guard: G) -> Result<Conn, TransportError> {
    s.set_nodelay(true)?;
    let session = match noise::respond(&mut s, &ep.security).await {
        Ok(x) => x,
        Err(e @ TransportError::Version { .. }) => {
            let _ = write_frame(&mut s, &refuse(format!("{e}; upgrade the older node"))).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let peer_key = session.remote_static;
    let (r, w) = s.into_split();
    let (mut rd, mut wr) = session.split(r, w);
    let f = rd.read_frame().await?.ok_or(TransportError::Closed)?;
    let Message::Hello(theirs) = Message::decode(f.kind, &f.payload)? else {
        return Err(TransportError::Unexpected(f.kind));
    };
    let ours = &ep.hello;
    if theirs.version != PROTOCOL_VERSION {
        let e = TransportError::Version { ours: PROTOCOL_VERSION, theirs: theirs.version };
        wr.write_frame(&refuse(e.to_string())).await?;
        return Err(e);
    }
    if theirs.namespace != ours.namespace {
        let msg = format!(
            "namespace mismatch: node {} is in {:?}, you are in {:?}",
            ours.node_name, ours.namespace, theirs.namespace
        );
        wr.write_frame(&refuse(msg)).await?;
        return Err(TransportError::Namespace { ours: ours.namespace.clone(), theirs: theirs.namespace });
    }
    wr.write_frame(&frame(&Message::Welcome(ours.clone()))).await?;
    Ok(spawn(rd, wr, theirs, peer_key, ep, guard))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::frame::encode_header;
    use tokio::io::AsyncWriteExt;

    fn hello(name: &str) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            namespace: "n".into(),
            node_id: "00".into(),
            node_name: name.into(),
            peer_addr: "127.0.0.1:1".into(),
        }
    }

    /// A connection over an in-memory pipe whose far end the test writes raw records into.
    fn piped(ep: &Endpoint) -> (Conn, tokio::io::DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(4 << 20);
        let (r, w) = tokio::io::split(ours);
        let (rd, wr) = noise::Session::plaintext().split(r, w);
        (spawn(rd, wr, hello("peer"), [0; 32], ep, ()), theirs)
    }

    /// One unencrypted record (what `Session::plaintext` reads).
    fn record(plain: &[u8]) -> Vec<u8> {
        let mut r = (plain.len() as u16).to_be_bytes().to_vec();
        r.extend_from_slice(plain);
        r
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_payload_closes_its_connection_only_and_gives_back_the_budget() {
        let keys =
            Arc::new(crate::secret::NodeKeys::ephemeral(crate::secret::ClusterSecret::generate().unwrap()).unwrap());
        let (tx, mut incoming) = mpsc::channel(8);
        let grace = Duration::from_millis(300);
        let ep = Endpoint { payload_grace: grace, ..Endpoint::new(hello("us"), Security::new(keys), tx) };
        let (stalled, mut far) = piped(&ep);
        let (healthy, mut other) = piped(&ep);
        // a header announcing 1 MiB, 1 KiB of it, then nothing
        let big = Frame { kind: Kind::Ping as u16, request: 7, payload: vec![0; 1 << 20] };
        let mut first = encode_header(&big).unwrap().to_vec();
        first.extend_from_slice(&[0; 1024]);
        far.write_all(&record(&first)).await.unwrap();
        let t = std::time::Instant::now();
        // meanwhile the other connection's frames arrive as usual
        let ping = Frame { kind: Kind::Ping as u16, request: 1, payload: Message::Ping { padding: 0 }.encode() };
        let mut one = encode_header(&ping).unwrap().to_vec();
        one.extend_from_slice(&ping.payload);
        other.write_all(&record(&one)).await.unwrap();
        let got = incoming.recv().await.unwrap();
        assert_eq!(got.frame.request, 1);
        assert!(t.elapsed() < grace);
        drop(got);
        let closed = tokio::time::timeout(Duration::from_secs(10), stalled.closed()).await;
        assert!(closed.is_ok(), "the stalled connection is still open");
        let took = t.elapsed();
        let deadline = payload_deadline(grace, 1 << 20);
        assert!(took >= deadline && took < deadline + Duration::from_secs(1), "{took:?}");
        assert!(!healthy.is_closed(), "only the stalled connection closes");
        // the stalled frame's share of the byte budget is back
        assert_eq!(ep.budget.available_permits(), QUEUE_BUDGET);
    }
}
