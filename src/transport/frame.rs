//! Frames on a peer connection: a fixed 20-byte header (magic, protocol version, message kind,
//! request id, payload length) then the payload. The length is checked against a cap before
//! anything is allocated, so a corrupt or hostile peer cannot make us allocate gigabytes.
//! Only the handshake travels as bare frames; after it, the same frames travel inside encrypted
//! records ([`super::noise`]) and are parsed with the same [`decode_header`].

use super::TransportError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const MAGIC: [u8; 4] = *b"EXO\x01";
/// 2: Noise handshake and encrypted records (1 was plaintext); 3: embeddings and weight
/// transfers (a node of version 2 would drop those messages silently); 4: speculative batches
/// (drafts and trims in every forwarded batch).
pub const PROTOCOL_VERSION: u16 = 4;
pub const HEADER_LEN: usize = 20;
/// Largest payload accepted: a 512-token batch of 16384-wide f32 hidden states is 32 MiB.
pub const MAX_PAYLOAD: u32 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u16,
    pub request: u64,
    pub payload: Vec<u8>,
}

/// The header of `f`; refuses a payload over the cap.
pub fn encode_header(f: &Frame) -> Result<[u8; HEADER_LEN], TransportError> {
    if f.payload.len() > MAX_PAYLOAD as usize {
        return Err(TransportError::TooLarge { len: f.payload.len() as u64, max: MAX_PAYLOAD });
    }
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&f.kind.to_le_bytes());
    h[8..16].copy_from_slice(&f.request.to_le_bytes());
    h[16..20].copy_from_slice(&(f.payload.len() as u32).to_le_bytes());
    Ok(h)
}

/// A checked header: kind, request id and payload length (at most [`MAX_PAYLOAD`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u16,
    pub request: u64,
    pub len: u32,
}

pub fn decode_header(h: &[u8; HEADER_LEN]) -> Result<Header, TransportError> {
    if h[..4] != MAGIC {
        return Err(TransportError::BadMagic);
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(TransportError::Version { ours: PROTOCOL_VERSION, theirs: version });
    }
    let kind = u16::from_le_bytes([h[6], h[7]]);
    let request = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
    if len > MAX_PAYLOAD {
        return Err(TransportError::TooLarge { len: len as u64, max: MAX_PAYLOAD });
    }
    Ok(Header { kind, request, len })
}

pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, f: &Frame) -> Result<(), TransportError> {
    let h = encode_header(f)?;
    w.write_all(&h).await?;
    w.write_all(&f.payload).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<Option<Frame>, TransportError> {
    read_frame_capped(r, MAX_PAYLOAD).await
}

/// [`read_frame`] with a lower cap (handshake frames from peers not yet authenticated).
pub async fn read_frame_capped<R: AsyncReadExt + Unpin>(r: &mut R, max: u32) -> Result<Option<Frame>, TransportError> {
    let mut h = [0u8; HEADER_LEN];
    match r.read_exact(&mut h[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut h[1..]).await?;
    let Header { kind, request, len } = decode_header(&h)?;
    if len > max {
        return Err(TransportError::TooLarge { len: len as u64, max });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, request, payload }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_refusals() {
        let f = Frame { kind: 7, request: 42, payload: b"hello".to_vec() };
        let mut buf = Vec::new();
        write_frame(&mut buf, &f).await.unwrap();
        assert_eq!(buf.len(), HEADER_LEN + 5);
        assert_eq!(read_frame(&mut &buf[..]).await.unwrap(), Some(f));
        assert_eq!(read_frame(&mut &[][..]).await.unwrap(), None);

        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(read_frame(&mut &bad[..]).await, Err(TransportError::BadMagic)));
        let mut v2 = buf.clone();
        v2[4] = 9;
        assert!(matches!(read_frame(&mut &v2[..]).await, Err(TransportError::Version { theirs: 9, .. })));
        // a huge length is refused from the header alone (the payload is never read)
        let mut huge = buf[..HEADER_LEN].to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read_frame(&mut &huge[..]).await, Err(TransportError::TooLarge { .. })));
        // truncated payload
        assert!(matches!(read_frame(&mut &buf[..HEADER_LEN + 2]).await, Err(TransportError::Io(_))));
    }
}
