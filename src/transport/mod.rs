//! The peer protocol: framed binary messages over TCP (TCP_NODELAY), a Noise handshake keyed by
//! the cluster secret, then every frame encrypted ([`noise`]); a hello that checks protocol
//! version and namespace; hidden states as raw little-endian f32 rows.

mod batch;
mod conn;
mod fault;
mod frame;
mod message;
pub mod noise;
mod payload;
mod refusal;

pub use batch::{BatchMsg, MAX_EMBEDDING};
pub use conn::{accept, connect, Conn, Endpoint, Incoming, HANDSHAKE_TIMEOUT};
pub use fault::{FaultKind, StageFault};
pub use frame::{
    decode_header, encode_header, read_frame, read_frame_capped, write_frame, Frame, Header, HEADER_LEN, MAGIC,
    MAX_PAYLOAD, PROTOCOL_VERSION,
};
pub use message::{Kind, Message};
pub use noise::{Security, NOISE_PARAMS};
pub use payload::{
    Held, Hello, LinkFigure, LoadProgressMsg, LoadStage, OpReply, Pong, ProgressItem, SeqOp, StageOp, StageReport,
    WeightsAsk, WeightsMeta, MAX_HELD, MAX_LINKS, MAX_PROGRESS_ITEMS, MAX_WEIGHTS_READ,
};
pub use refusal::{LoadRefusal, PeerError, WeightsError};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an exo peer (bad frame magic)")]
    BadMagic,
    #[error("protocol version mismatch: this node speaks {ours}, the peer {theirs}")]
    Version { ours: u16, theirs: u16 },
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u64, max: u32 },
    #[error("peer refused the connection: {0}")]
    Refused(String),
    #[error("namespace mismatch: this node is in {ours:?}, the peer in {theirs:?}")]
    Namespace { ours: String, theirs: String },
    #[error("malformed {what} message: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("unexpected message kind {0}")]
    Unexpected(u16),
    #[error("the peer is in another cluster: key id {theirs} vs {ours} here (join it with the token `exo cluster token` prints on one of its nodes)")]
    OtherCluster { ours: crate::secret::KeyId, theirs: crate::secret::KeyId },
    #[error("handshake failed: {0}")]
    Handshake(String),
    #[error(
        "a record failed authentication (tampered, replayed, reordered or from another key); closing the connection"
    )]
    Crypto,
    #[error("the connection is closed")]
    Closed,
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The peer answered a request with a typed error.
    #[error(transparent)]
    Peer(PeerError),
}
