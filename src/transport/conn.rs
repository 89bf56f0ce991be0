//! A peer connection: handshake, a writer task, a reader task that hands answers to whoever
//! asked (by request id) and everything else to the node as [`Incoming`].

use super::frame::{read_frame, write_frame, Frame, PROTOCOL_VERSION};
use super::message::{from_json, to_json, Kind};
use super::TransportError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// What each side says about itself when connecting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    pub namespace: String,
    pub node_id: String,
    pub node_name: String,
    /// Address peers reach this node's peer port at.
    pub peer_addr: String,
}

/// A frame the node must act on, with the connection it came in on (to answer).
pub struct Incoming {
    pub frame: Frame,
    pub conn: Conn,
}

/// Kinds that answer a request on the same connection.
fn is_answer(kind: u16) -> bool {
    [Kind::Pong, Kind::Loaded, Kind::SeqDone, Kind::Error].iter().any(|k| *k as u16 == kind)
}

#[derive(Clone)]
pub struct Conn {
    inner: Arc<Inner>,
}

struct Inner {
    peer: Hello,
    tx: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    next: AtomicU64,
    closed: AtomicBool,
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

    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Relaxed)
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

    /// Sends and waits for the answer with the same request id.
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
            Ok(Ok(f)) if f.kind == Kind::Error as u16 => {
                Err(TransportError::Refused(String::from_utf8_lossy(&f.payload).into_owned()))
            }
            Ok(Ok(f)) => Ok(f),
            Ok(Err(_)) => Err(TransportError::Closed),
            Err(_) => {
                self.inner.pending.lock().unwrap().remove(&id);
                Err(TransportError::Timeout(timeout))
            }
        }
    }
}

fn spawn(stream: TcpStream, peer: Hello, incoming: mpsc::Sender<Incoming>) -> Conn {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Frame>(256);
    let conn = Conn {
        inner: Arc::new(Inner {
            peer,
            tx,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            data_sent: AtomicU64::new(0),
        }),
    };
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if write_frame(&mut wr, &f).await.is_err() {
                break;
            }
        }
    });
    let c = conn.clone();
    tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(Some(f)) => {
                    if is_answer(f.kind) {
                        if let Some(w) = c.inner.pending.lock().unwrap().remove(&f.request) {
                            let _ = w.send(f);
                        }
                        continue;
                    }
                    if incoming.send(Incoming { frame: f, conn: c.clone() }).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // a malformed or oversized frame ends this connection, nothing else
                    tracing::warn!(peer = %c.inner.peer.node_name, "closing peer connection: {e}");
                    break;
                }
            }
        }
        c.inner.closed.store(true, Ordering::Relaxed);
        // waking every waiter with an error: dropping their senders does it
        c.inner.pending.lock().unwrap().clear();
    });
    conn
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to a peer and introduces ourselves; fails with the peer's reason if refused.
pub async fn connect(addr: &str, ours: &Hello, incoming: mpsc::Sender<Incoming>) -> Result<Conn, TransportError> {
    let mut s = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))??;
    s.set_nodelay(true)?;
    write_frame(&mut s, &Frame { kind: Kind::Hello as u16, request: 0, payload: to_json(ours) }).await?;
    let f = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))??
        .ok_or(TransportError::Closed)?;
    match Kind::from_u16(f.kind) {
        Some(Kind::Welcome) => {
            let theirs: Hello = from_json("welcome", &f.payload)?;
            if theirs.namespace != ours.namespace {
                return Err(TransportError::Namespace { ours: ours.namespace.clone(), theirs: theirs.namespace });
            }
            Ok(spawn(s, theirs, incoming))
        }
        Some(Kind::Refused) => Err(TransportError::Refused(String::from_utf8_lossy(&f.payload).into_owned())),
        _ => Err(TransportError::Unexpected(f.kind)),
    }
}

/// Answers a connecting peer: checks its protocol version and namespace, refusing with a reason
/// the other side will print.
pub async fn accept(mut s: TcpStream, ours: &Hello, incoming: mpsc::Sender<Incoming>) -> Result<Conn, TransportError> {
    s.set_nodelay(true)?;
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut s))
        .await
        .map_err(|_| TransportError::Timeout(HANDSHAKE_TIMEOUT))?;
    let f = match first {
        Ok(Some(f)) => f,
        Ok(None) => return Err(TransportError::Closed),
        Err(e @ TransportError::Version { .. }) => {
            let msg = format!("{e}; upgrade the older node");
            let _ =
                write_frame(&mut s, &Frame { kind: Kind::Refused as u16, request: 0, payload: msg.into_bytes() }).await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if f.kind != Kind::Hello as u16 {
        return Err(TransportError::Unexpected(f.kind));
    }
    let theirs: Hello = from_json("hello", &f.payload)?;
    let refuse = |reason: String| Frame { kind: Kind::Refused as u16, request: 0, payload: reason.into_bytes() };
    if theirs.version != PROTOCOL_VERSION {
        let e = TransportError::Version { ours: PROTOCOL_VERSION, theirs: theirs.version };
        write_frame(&mut s, &refuse(e.to_string())).await?;
        return Err(e);
    }
    if theirs.namespace != ours.namespace {
        let msg = format!(
            "namespace mismatch: node {} is in {:?}, you are in {:?}",
            ours.node_name, ours.namespace, theirs.namespace
        );
        write_frame(&mut s, &refuse(msg)).await?;
        return Err(TransportError::Namespace { ours: ours.namespace.clone(), theirs: theirs.namespace });
    }
    write_frame(&mut s, &Frame { kind: Kind::Welcome as u16, request: 0, payload: to_json(ours) }).await?;
    Ok(spawn(s, theirs, incoming))
}
