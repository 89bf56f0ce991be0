//! The peer protocol's messages: one typed [`Message`] per frame kind, requests and their typed
//! answers, with one codec ([`Message::encode`], [`Message::decode`]). Structured payloads are
//! JSON; batches and embeddings are binary ([`super::batch`]). A hostile peer's payload sizes
//! nothing beyond its frame (itself capped) and the caps checked here.

use super::batch::{decode_embedding, encode_embedding};
use super::payload::{Hello, LoadProgressMsg, LoadStage, OpReply, Pong, StageOp, WeightsAsk, WeightsMeta};
use super::StageFault;
use super::{BatchMsg, PeerError, TransportError};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Refused = 3,
    Ping = 4,
    Pong = 5,
    LoadStage = 6,
    Loaded = 7,
    Forward = 8,
    Tokens = 9,
    SeqOp = 10,
    SeqDone = 11,
    Unload = 12,
    Error = 13,
    Bye = 14,
    /// A Noise handshake message (the only bare frames; the first carries the preamble).
    Handshake = 15,
    /// The answer to a handshake from another cluster: the responder's preamble.
    OtherCluster = 16,
    /// A [`BatchMsg`] of an embedding request: decoded like a `Forward`, but its last stage
    /// answers an `Embedding` instead of sampling.
    EmbedForward = 17,
    /// The last stage's answer to an `EmbedForward` (binary, see [`super::batch`]).
    Embedding = 18,
    /// A request for a model file's bytes ([`WeightsAsk`], JSON).
    WeightsAsk = 19,
    /// The JSON answer to an info or hash [`WeightsAsk`] ([`WeightsMeta`]).
    WeightsMeta = 20,
    /// The answer to a read [`WeightsAsk`]: the bytes, raw.
    WeightsData = 21,
    /// A stage node's progress fetching its window, to the coordinator that asked it to load
    /// ([`LoadProgressMsg`], JSON; no answer).
    LoadProgress = 22,
}

impl Kind {
    pub fn from_u16(v: u16) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Welcome,
            3 => Refused,
            4 => Ping,
            5 => Pong,
            6 => LoadStage,
            7 => Loaded,
            8 => Forward,
            9 => Tokens,
            10 => SeqOp,
            11 => SeqDone,
            12 => Unload,
            13 => Error,
            14 => Bye,
            15 => Handshake,
            16 => OtherCluster,
            17 => EmbedForward,
            18 => Embedding,
            19 => WeightsAsk,
            20 => WeightsMeta,
            21 => WeightsData,
            22 => LoadProgress,
            _ => return None,
        })
    }
}

/// Every message that travels after the Noise handshake (whose own frames, `Handshake` and
/// `OtherCluster`, belong to [`super::noise`]).
#[derive(Clone, Debug)]
pub enum Message {
    /// The connecting side introduces itself; answered with `Welcome` or `Refused`.
    Hello(Hello),
    Welcome(Hello),
    /// Why the connection is refused (shown to the user of the other side).
    Refused(String),
    /// A heartbeat; `padding` zero bytes make it a timed bulk transfer. Answered with `Pong`.
    Ping {
        padding: u32,
    },
    Pong(Box<Pong>),
    /// Answered with `Loaded` or `Error(PeerError::Load)`.
    LoadStage(Box<LoadStage>),
    Loaded {
        n_ctx: u32,
    },
    /// A batch for a stage; the last stage answers the coordinator with `Tokens`.
    Forward(BatchMsg),
    /// A batch of an embedding request; the last stage answers with `Embedding`.
    EmbedForward(BatchMsg),
    Tokens(Result<Vec<i32>, StageFault>),
    Embedding(Result<Vec<f32>, StageFault>),
    /// Answered with `SeqDone` or `Error`.
    SeqOp(StageOp),
    SeqDone(OpReply),
    Unload {
        instance: u64,
    },
    /// The typed failure of a request.
    Error(PeerError),
    /// The node is leaving the cluster.
    Bye,
    /// Answered with `WeightsMeta`, `WeightsData` or `Error(PeerError::Weights)`.
    WeightsAsk(WeightsAsk),
    WeightsMeta(WeightsMeta),
    /// Raw bytes of a model file.
    WeightsData(Vec<u8>),
    /// A stage node's window transfers, to the coordinator that asked it to load (no answer).
    LoadProgress(LoadProgressMsg),
}

#[derive(Serialize, Deserialize)]
struct Loaded {
    n_ctx: u32,
}

#[derive(Serialize, Deserialize)]
struct Unload {
    instance: u64,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("plain data serializes")
}

fn from_json<T: for<'de> Deserialize<'de>>(what: &'static str, b: &[u8]) -> Result<T, TransportError> {
    serde_json::from_slice(b).map_err(|e| TransportError::Malformed { what, detail: e.to_string() })
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::Refused(_) => Kind::Refused,
            Message::Ping { .. } => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::LoadStage(_) => Kind::LoadStage,
            Message::Loaded { .. } => Kind::Loaded,
            Message::Forward(_) => Kind::Forward,
            Message::EmbedForward(_) => Kind::EmbedForward,
            Message::Tokens(_) => Kind::Tokens,
            Message::Embedding(_) => Kind::Embedding,
            Message::SeqOp(_) => Kind::SeqOp,
            Message::SeqDone(_) => Kind::SeqDone,
            Message::Unload { .. } => Kind::Unload,
            Message::Error(_) => Kind::Error,
            Message::Bye => Kind::Bye,
            Message::WeightsAsk(_) => Kind::WeightsAsk,
            Message::WeightsMeta(_) => Kind::WeightsMeta,
            Message::WeightsData(_) => Kind::WeightsData,
            Message::LoadProgress(_) => Kind::LoadProgress,
        }
    }

    /// The payload of this message's frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Message::Hello(h) | Message::Welcome(h) => json(h),
            Message::Refused(s) => s.as_bytes().to_vec(),
            Message::Ping { padding } => vec![0; *padding as usize],
            Message::Pong(p) => json(p),
            Message::LoadStage(l) => json(l),
            Message::Loaded { n_ctx } => json(&Loaded { n_ctx: *n_ctx }),
            Message::Forward(b) | Message::EmbedForward(b) => b.encode(),
            Message::Tokens(r) => json(r),
            Message::Embedding(r) => encode_embedding(r),
            Message::SeqOp(o) => json(o),
            Message::SeqDone(r) => json(r),
            Message::Unload { instance } => json(&Unload { instance: *instance }),
            Message::Error(e) => json(e),
            Message::Bye => vec![],
            Message::WeightsAsk(a) => json(a),
            Message::WeightsMeta(m) => json(m),
            Message::WeightsData(b) => b.clone(),
            Message::LoadProgress(p) => json(p),
        }
    }

    /// The message a frame of `kind` carries (already capped at [`super::MAX_PAYLOAD`]).
    pub fn decode(kind: u16, b: &[u8]) -> Result<Message, TransportError> {
        let kind = Kind::from_u16(kind).ok_or(TransportError::Unexpected(kind))?;
        Ok(match kind {
            Kind::Hello => Message::Hello(from_json("hello", b)?),
            Kind::Welcome => Message::Welcome(from_json("welcome", b)?),
            Kind::Refused => Message::Refused(String::from_utf8_lossy(b).into_owned()),
            // the payload is padding: only its length counts
            Kind::Ping => Message::Ping { padding: b.len() as u32 },
            // what is past the caps is dropped here, before anything else sees it
            Kind::Pong => Message::Pong(Box::new(from_json::<Pong>("pong", b)?.bounded())),
            Kind::LoadStage => Message::LoadStage(from_json("load request", b)?),
            Kind::Loaded => Message::Loaded { n_ctx: from_json::<Loaded>("loaded", b)?.n_ctx },
            Kind::Forward => Message::Forward(BatchMsg::decode(b)?),
            Kind::EmbedForward => Message::EmbedForward(BatchMsg::decode(b)?),
            Kind::Tokens => Message::Tokens(from_json("tokens", b)?),
            Kind::Embedding => Message::Embedding(decode_embedding(b)?),
            Kind::SeqOp => Message::SeqOp(from_json("sequence operation", b)?),
            Kind::SeqDone => Message::SeqDone(from_json("operation answer", b)?),
            Kind::Unload => Message::Unload { instance: from_json::<Unload>("unload", b)?.instance },
            Kind::Error => Message::Error(from_json("error", b)?),
            Kind::Bye => Message::Bye,
            Kind::WeightsAsk => Message::WeightsAsk(from_json("weights request", b)?),
            Kind::WeightsMeta => Message::WeightsMeta(from_json("weights answer", b)?),
            Kind::WeightsData => Message::WeightsData(b.to_vec()),
            Kind::LoadProgress => Message::LoadProgress(from_json::<LoadProgressMsg>("load progress", b)?.bounded()),
            Kind::Handshake | Kind::OtherCluster => return Err(TransportError::Unexpected(kind as u16)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::FaultKind;
    use crate::transport::{LoadRefusal, SeqOp, WeightsError};

    fn fault() -> StageFault {
        let kind = FaultKind::Unreachable { from: 0, addr: "10.0.0.2:1".into(), detail: "refused".into() };
        StageFault { stage: 1, node: "10.0.0.2:1".into(), kind }
    }

    /// One message of every kind that travels after the handshake.
    fn every_kind() -> Vec<Message> {
        let hello = Hello {
            version: 3,
            namespace: "n".into(),
            node_id: "00ff".into(),
            node_name: "a".into(),
            peer_addr: "127.0.0.1:1".into(),
        };
        let batch = BatchMsg {
            instance: 9,
            stage: 1,
            sample: true,
            pos: vec![0, 1],
            seq: vec![0, 0],
            output: vec![false, true],
            tokens: vec![],
            hidden: vec![0.5, -1.0, f32::NAN, 2.0],
            spec: crate::engine::Speculation { draft: vec![7, -1], trim: vec![(0, 4)] },
            reply_to: "127.0.0.1:1".into(),
        };
        let refusal = LoadRefusal::Limit { node: "a".into(), field: "n_ctx".into(), value: 9, max: 1 };
        let pong = Pong { profile: crate::profile::snapshot(None, Some(10.0)), held: vec![], links: vec![] };
        vec![
            Message::Hello(hello.clone()),
            Message::Welcome(hello),
            Message::Refused("namespace mismatch".into()),
            Message::Ping { padding: 3 },
            Message::Pong(Box::new(pong)),
            Message::Loaded { n_ctx: 512 },
            Message::Forward(batch.clone()),
            Message::EmbedForward(batch),
            Message::Tokens(Ok(vec![5, 6])),
            Message::Tokens(Err(fault())),
            Message::Embedding(Ok(vec![0.25, -3.0])),
            Message::Embedding(Err(fault())),
            Message::SeqOp(StageOp { instance: 1, stage: 0, op: SeqOp::Remove { seq: 0, p0: 3, p1: -1 } }),
            Message::SeqDone(OpReply::Removed(false)),
            Message::SeqDone(OpReply::Done),
            Message::Unload { instance: 7 },
            Message::Error(PeerError::Load(refusal)),
            Message::Error(PeerError::Weights(WeightsError::Busy { max: 64 })),
            Message::Bye,
            Message::WeightsAsk(WeightsAsk::Read { model: "m".into(), start: 0, len: 4 }),
            Message::WeightsMeta(WeightsMeta::Info { size: 9, data_offset: 4 }),
            Message::WeightsData(b"GGUF".to_vec()),
            Message::LoadProgress(LoadProgressMsg { instance: 1, index: 0, transfers: vec![] }),
        ]
    }

    #[test]
    fn every_message_roundtrips_through_the_one_codec() {
        for m in every_kind() {
            let b = m.encode();
            let back = Message::decode(m.kind() as u16, &b).unwrap_or_else(|e| panic!("{m:?}: {e}"));
            assert_eq!(back.kind(), m.kind());
            assert_eq!(back.encode(), b, "{m:?}");
        }
        // errors stay typed across the wire
        let b = Message::Tokens(Err(fault())).encode();
        match Message::decode(Kind::Tokens as u16, &b).unwrap() {
            Message::Tokens(Err(f)) => assert_eq!(f, fault()),
            other => panic!("{other:?}"),
        }
        let refusal = LoadRefusal::NoModel { node: "b".into(), model: "m".into() };
        match Message::decode(Kind::Error as u16, &Message::Error(refusal.clone().into()).encode()).unwrap() {
            Message::Error(PeerError::Load(r)) => assert_eq!(r, refusal),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn hostile_payloads_are_refused_or_cut_to_the_caps() {
        // kinds that are not messages, garbage, truncations
        for k in [0, Kind::Handshake as u16, Kind::OtherCluster as u16, 999] {
            assert!(Message::decode(k, b"{}").is_err(), "{k}");
        }
        for m in every_kind() {
            let b = m.encode();
            if b.len() > 1 && !matches!(m, Message::Ping { .. } | Message::WeightsData(_) | Message::Refused(_)) {
                assert!(Message::decode(m.kind() as u16, &b[..b.len() - 1]).is_err(), "{m:?}");
            }
        }
        // an embedding fault longer than the cap is refused before it is parsed
        let mut huge = vec![1u8];
        huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(Message::decode(Kind::Embedding as u16, &huge).is_err());
        // a progress report with too many items, a pong with too many holdings: cut
        let item = crate::transport::ProgressItem {
            id: 1,
            model: "m".into(),
            source: "s".into(),
            done_bytes: 0,
            total_bytes: 1,
            state: "running".into(),
            error: None,
            seconds: 0.0,
        };
        let p = LoadProgressMsg { instance: 1, index: 0, transfers: vec![item; 100] };
        match Message::decode(Kind::LoadProgress as u16, &Message::LoadProgress(p).encode()).unwrap() {
            Message::LoadProgress(p) => assert_eq!(p.transfers.len(), crate::transport::MAX_PROGRESS_ITEMS),
            other => panic!("{other:?}"),
        }
    }
}
