//! The binary payloads: batches of hidden states (a small header, positions, sequence ids,
//! output flags, then f32 rows, so that a 4-byte float costs 4 bytes on the wire) and
//! embeddings. Every count is checked against the bytes present before it sizes anything.

use super::StageFault;
use super::TransportError;
use crate::engine::Speculation;

/// One decode step for a stage: tokens (first stage) or hidden states (later stages).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMsg {
    pub instance: u64,
    /// Stage index this batch is for.
    pub stage: u32,
    /// Sample at the output rows when it reaches the last stage.
    pub sample: bool,
    pub pos: Vec<i32>,
    pub seq: Vec<i32>,
    pub output: Vec<bool>,
    pub tokens: Vec<i32>,
    /// `pos.len() * n_embd` floats, or empty for a token batch.
    pub hidden: Vec<f32>,
    /// Drafts the last stage verifies and positions every stage drops first.
    pub spec: Speculation,
    /// Where the last stage sends the sampled tokens (the coordinator's peer address).
    pub reply_to: String,
}

impl BatchMsg {
    pub fn encode(&self) -> Vec<u8> {
        let n = self.pos.len();
        let reply = self.reply_to.as_bytes();
        let mut b = Vec::with_capacity(32 + n * 9 + self.tokens.len() * 4 + self.hidden.len() * 4 + reply.len());
        b.extend_from_slice(&self.instance.to_le_bytes());
        b.extend_from_slice(&self.stage.to_le_bytes());
        b.push(self.sample as u8);
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&(self.tokens.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.hidden.len() as u32).to_le_bytes());
        b.extend_from_slice(&(reply.len() as u32).to_le_bytes());
        b.extend_from_slice(reply);
        self.pos.iter().for_each(|p| b.extend_from_slice(&p.to_le_bytes()));
        self.seq.iter().for_each(|s| b.extend_from_slice(&s.to_le_bytes()));
        self.output.iter().for_each(|o| b.push(*o as u8));
        self.tokens.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        self.hidden.iter().for_each(|h| b.extend_from_slice(&h.to_le_bytes()));
        // speculation last: counts, then drafted tokens and (seq, p0) trims
        b.extend_from_slice(&(self.spec.draft.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.spec.trim.len() as u32).to_le_bytes());
        self.spec.draft.iter().for_each(|t| b.extend_from_slice(&t.to_le_bytes()));
        for (s, p) in &self.spec.trim {
            b.extend_from_slice(&s.to_le_bytes());
            b.extend_from_slice(&p.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Result<BatchMsg, TransportError> {
        let bad = |d: &str| TransportError::Malformed { what: "batch", detail: d.to_string() };
        let mut r = Reader { b, at: 0 };
        let instance = r.u64().ok_or_else(|| bad("short header"))?;
        let stage = r.u32().ok_or_else(|| bad("short header"))?;
        let sample = r.u8().ok_or_else(|| bad("short header"))? != 0;
        let n = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nt = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nh = r.u32().ok_or_else(|| bad("short header"))? as usize;
        let nr = r.u32().ok_or_else(|| bad("short header"))? as usize;
        // every count is bounded by the bytes actually present before anything is allocated
        let need = nr
            .checked_add(n.checked_mul(9).ok_or_else(|| bad("count overflow"))?)
            .and_then(|x| x.checked_add(nt.checked_mul(4)?))
            .and_then(|x| x.checked_add(nh.checked_mul(4)?))
            .and_then(|x| x.checked_add(8))
            .ok_or_else(|| bad("count overflow"))?;
        if need > b.len() - r.at {
            return Err(bad(&format!("declares {need} bytes of data but carries {}", b.len() - r.at)));
        }
        // the speculation counts sit right after the rows: read them before allocating anything
        let tail = &b[r.at + need - 8..];
        let nd = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as usize;
        let nx = u32::from_le_bytes(tail[4..8].try_into().expect("4 bytes")) as usize;
        let need = nd
            .checked_mul(4)
            .and_then(|d| d.checked_add(nx.checked_mul(8)?))
            .and_then(|x| x.checked_add(need))
            .ok_or_else(|| bad("count overflow"))?;
        if need != b.len() - r.at {
            return Err(bad(&format!("declares {need} bytes of data but carries {}", b.len() - r.at)));
        }
        let reply_to = String::from_utf8(r.take(nr).to_vec()).map_err(|_| bad("reply address is not UTF-8"))?;
        let pos = (0..n).map(|_| r.i32().expect("length checked")).collect();
        let seq = (0..n).map(|_| r.i32().expect("length checked")).collect();
        let output = (0..n).map(|_| r.u8().expect("length checked") != 0).collect();
        let tokens = (0..nt).map(|_| r.i32().expect("length checked")).collect();
        let hidden = (0..nh).map(|_| f32::from_le_bytes(r.take(4).try_into().expect("4 bytes"))).collect();
        r.take(8);
        let draft = (0..nd).map(|_| r.i32().expect("length checked")).collect();
        let trim = (0..nx).map(|_| (r.i32().expect("length checked"), r.i32().expect("length checked"))).collect();
        let spec = Speculation { draft, trim };
        Ok(BatchMsg { instance, stage, sample, pos, seq, output, tokens, hidden, spec, reply_to })
    }
}

// ---- embeddings -------------------------------------------------------------------------------

/// Widest embedding a peer may send (far above any model's width).
pub const MAX_EMBEDDING: usize = 1 << 20;
/// Longest error a peer may send in place of an embedding.
const MAX_FAULT: usize = 64 << 10;

/// The last stage's answer to an embedding batch: the sum of the embeddings of its output rows,
/// or the fault. Binary: a tag byte (0: floats, 1: the fault as JSON), a u32 count, then that
/// many f32 (little-endian) or bytes.
pub(super) fn encode_embedding(r: &Result<Vec<f32>, StageFault>) -> Vec<u8> {
    let (tag, body) = match r {
        Ok(v) => (0, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        Err(f) => (1, serde_json::to_vec(f).expect("plain data serializes")),
    };
    let n = r.as_ref().map_or(body.len(), |v| v.len());
    let mut b = Vec::with_capacity(5 + body.len());
    b.push(tag);
    b.extend_from_slice(&(n as u32).to_le_bytes());
    b.extend_from_slice(&body);
    b
}

pub(super) fn decode_embedding(b: &[u8]) -> Result<Result<Vec<f32>, StageFault>, TransportError> {
    let bad = |d: &str| TransportError::Malformed { what: "embedding", detail: d.to_string() };
    let mut r = Reader { b, at: 0 };
    let tag = r.u8().ok_or_else(|| bad("short header"))?;
    let n = r.u32().ok_or_else(|| bad("short header"))? as usize;
    let rest = b.len() - r.at;
    match tag {
        0 => {
            // checked against the bytes present before anything is allocated
            if n > MAX_EMBEDDING || n * 4 != rest {
                return Err(bad(&format!("declares {n} floats but carries {rest} bytes")));
            }
            Ok(Ok((0..n).map(|_| f32::from_le_bytes(r.get().expect("length checked"))).collect()))
        }
        1 if n == rest && n <= MAX_FAULT => {
            Ok(Err(serde_json::from_slice(r.take(n)).map_err(|e| bad(&format!("fault: {e}")))?))
        }
        1 => Err(bad(&format!("declares {n} bytes of fault but carries {rest}"))),
        t => Err(bad(&format!("unknown tag {t}"))),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        s
    }
    fn get<const N: usize>(&mut self) -> Option<[u8; N]> {
        (self.b.len() - self.at >= N).then(|| self.take(N).try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Option<u8> {
        self.get::<1>().map(|x| x[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.get().map(u32::from_le_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.get().map(i32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.get().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_roundtrip_and_corruption() {
        let m = BatchMsg {
            instance: 9,
            stage: 2,
            sample: true,
            pos: vec![0, 1],
            seq: vec![3, 3],
            output: vec![false, true],
            tokens: vec![],
            hidden: vec![0.5, -1.25, 3.0, 4.0],
            spec: Speculation { draft: vec![4, -1], trim: vec![(3, 9)] },
            reply_to: "127.0.0.1:1".into(),
        };
        let b = m.encode();
        assert_eq!(BatchMsg::decode(&b).unwrap(), m);
        let plain = BatchMsg { spec: Speculation::default(), ..m.clone() };
        assert_eq!(BatchMsg::decode(&plain.encode()).unwrap(), plain);
        // a draft count the bytes do not carry
        let mut lying = b.clone();
        let at = b.len() - 2 * 4 - 8 - 8; // two drafts, one trim, the two counts
        lying[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BatchMsg::decode(&lying).is_err());
        assert!(BatchMsg::decode(&b[..b.len() - 1]).is_err());
        assert!(BatchMsg::decode(&b[..10]).is_err());
        let mut huge = b.clone();
        huge[13..17].copy_from_slice(&u32::MAX.to_le_bytes()); // n
        assert!(BatchMsg::decode(&huge).is_err());
    }
}
