//! Reads a GGUF file's header, metadata and tensor table without touching the weights.

use super::types::{ggml_type_size, Value};
use super::GgufError;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
// Caps that keep a corrupt header from making us allocate absurd amounts.
const MAX_STRING: u64 = 64 << 20;
const MAX_ARRAY: u64 = 64 << 20;
const MAX_DIMS: u32 = 4;
const MAX_ENTRIES: u64 = 1 << 24;

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Size in bytes, from dims and type.
    pub bytes: u64,
}

/// A parsed GGUF header: metadata and tensor table of one file.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub file_size: u64,
}

impl GgufFile {
    /// Parses the header of `path` and checks that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let file_size = file.metadata().map_err(io)?.len();
        GgufFile::parse(BufReader::new(file), path, file_size)
    }

    /// Parses a header from `r`, a file of `file_size` bytes named `path` (for messages).
    pub fn parse(r: impl Read, path: &Path, file_size: u64) -> Result<GgufFile, GgufError> {
        let mut r = Reader { inner: r, path: path.to_path_buf(), pos: 0, len: file_size };
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)?;
        if &magic != GGUF_MAGIC {
            return Err(GgufError::NotGguf { path: path.to_path_buf() });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.corrupt(format!("unsupported GGUF version {version}")));
        }
        let n_tensors = r.u64()?;
        let n_kv = r.u64()?;
        if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
            return Err(r.corrupt(format!("implausible counts: {n_tensors} tensors, {n_kv} metadata keys")));
        }
        // capacities bounded by what the file can hold (a key-value pair takes at least 13
        // bytes, a tensor entry 28), not by the counts it claims
        let mut metadata = Vec::with_capacity(n_kv.min(r.remaining() / 13) as usize);
        for _ in 0..n_kv {
            let key = r.string()?;
            let t = r.u32()?;
            let v = r.value(t)?;
            metadata.push((key, v));
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(r.corrupt(format!("general.alignment {alignment} is not a power of two")));
        }
        let mut tensors = Vec::with_capacity(n_tensors.min(r.remaining() / 28) as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!("tensor {name}: {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let type_id = r.u32()?;
            let offset = r.u64()?;
            let (blck, tsize) = ggml_type_size(type_id)
                .ok_or_else(|| r.corrupt(format!("tensor {name}: unknown ggml type {type_id}")))?;
            let n: u64 = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
            if dims[0] % blck != 0 || n == u64::MAX {
                return Err(r.corrupt(format!("tensor {name}: shape {dims:?} does not fit type {type_id}")));
            }
            // a huge shape must not wrap around to a small size that passes the bounds check
            let bytes = (n / blck)
                .checked_mul(tsize)
                .ok_or_else(|| r.corrupt(format!("tensor {name}: shape {dims:?} is too large")))?;
            tensors.push(TensorInfo { name, dims, type_id, offset, bytes });
        }
        let data_offset = r
            .pos
            .div_ceil(alignment)
            .checked_mul(alignment)
            .ok_or_else(|| r.corrupt(format!("general.alignment {alignment} is too large")))?;
        for t in &tensors {
            let end = data_offset.saturating_add(t.offset).saturating_add(t.bytes);
            if end > file_size {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    detail: format!("tensor {} ends at byte {end} but the file has {file_size}", t.name),
                });
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, data_offset, file_size })
    }

    /// Parses a header from the first `buf.len()` bytes of a file of `file_size` bytes:
    /// `Ok(None)` when the header runs past what `buf` holds (read more and try again).
    pub fn parse_prefix(buf: &[u8], path: &Path, file_size: u64) -> Result<Option<GgufFile>, GgufError> {
        struct Prefix<'a> {
            rest: &'a [u8],
            ran_out: bool,
        }
        impl Read for Prefix<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.rest.read(out)?;
                self.ran_out |= n == 0 && !out.is_empty();
                Ok(n)
            }
        }
        let mut r = Prefix { rest: buf, ran_out: false };
        match GgufFile::parse(&mut r, path, file_size) {
            Err(_) if r.ran_out && (buf.len() as u64) < file_size => Ok(None),
            other => other.map(Some),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

struct Reader<R> {
    inner: R,
    path: PathBuf,
    pos: u64,
    /// Size of the whole file: nothing longer than what is left can be in it.
    len: u64,
}

impl<R: Read> Reader<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Something of `n` bytes (at least) must fit in what is left of the file.
    fn fits(&self, n: u64, what: &str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.clone(),
                detail: format!(
                    "a {what} of {n} bytes at byte {} runs past the end ({} left in the file)",
                    self.pos,
                    self.remaining()
                ),
            });
        }
        Ok(())
    }

    fn corrupt(&self, detail: String) -> GgufError {
        GgufError::Corrupt { path: self.path.clone(), offset: self.pos, detail }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), GgufError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(GgufError::Truncated {
                path: self.path.clone(),
                detail: format!("the header ends early (at byte {})", self.pos),
            }),
            Err(source) => Err(GgufError::Io { path: self.path.clone(), source }),
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        self.read_exact(&mut b)?;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn string(&mut self) -> Result<String, GgufError> {
        let n = self.u64()?;
        if n > MAX_STRING {
            return Err(self.corrupt(format!("string of {n} bytes")));
        }
        self.fits(n, "string")?;
        let mut b = vec![0u8; n as usize];
        self.read_exact(&mut b)?;
        String::from_utf8(b).map_err(|_| self.corrupt("string is not UTF-8".into()))
    }

    fn value(&mut self, t: u32) -> Result<Value, GgufError> {
        Ok(match t {
            0 => Value::U8(u8::from_le_bytes(self.bytes()?)),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => Value::Bool(u8::from_le_bytes(self.bytes()?) != 0),
            8 => Value::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()?;
                if n > MAX_ARRAY || et == 9 {
                    return Err(self.corrupt(format!("array of {n} elements of type {et}")));
                }
                // every element takes at least a byte
                self.fits(n, "array")?;
                let mut v = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    v.push(self.value(et)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            _ => return Err(self.corrupt(format!("unknown metadata type {t}"))),
        })
    }
}

/// Skips to an absolute offset (used by tests that read tensor bytes).
pub fn read_at(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut b = vec![0u8; len];
    f.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF with one Q8_0 tensor of shape [32, m] and `data` bytes of data.
    fn one_tensor(m: u64, data: usize) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&0u64.to_le_bytes()); // metadata
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b't');
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&32u64.to_le_bytes());
        b.extend_from_slice(&m.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes()); // Q8_0: 34 bytes per 32 values
        b.extend_from_slice(&0u64.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    }

    // Found by the gguf fuzz target (fuzz/regressions/gguf/tensor_bytes_overflow): the byte size
    // m * 34 wrapped around in release builds. With m = ceil(2^64 / 34) it wraps to 16 bytes,
    // so a tensor of 1.7e19 values "fit" in a 16-byte data section.
    #[test]
    fn a_tensor_size_that_overflows_is_corrupt_not_tiny() {
        let m = 542_551_296_285_575_048;
        let b = one_tensor(m, 16);
        let e = GgufFile::parse(&b[..], Path::new("x.gguf"), b.len() as u64).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
        let ok = one_tensor(2, 68);
        assert_eq!(GgufFile::parse(&ok[..], Path::new("x.gguf"), ok.len() as u64).unwrap().tensors[0].bytes, 68);
    }

    #[test]
    fn counts_and_lengths_are_bounded_by_the_file_not_by_what_it_claims() {
        // 2^24 metadata keys claimed by a 24-byte file: no 900 MB allocation, just an error
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&(1u64 << 24).to_le_bytes());
        b.extend_from_slice(&(60u64 << 20).to_le_bytes()); // a 60 MiB key in a 32-byte file
        let e = GgufFile::parse(&b[..], Path::new("x.gguf"), b.len() as u64).unwrap_err();
        assert!(e.to_string().contains("left in the file"), "{e}");
    }

    #[test]
    fn a_prefix_asks_for_more_until_the_header_is_in_it() {
        let b = one_tensor(2, 68);
        let (p, size) = (Path::new("x.gguf"), b.len() as u64);
        for cut in [0, 3, 20, 40] {
            assert!(GgufFile::parse_prefix(&b[..cut], p, size).unwrap().is_none(), "{cut}");
        }
        let g = GgufFile::parse_prefix(&b[..size as usize - 68], p, size).unwrap().unwrap();
        assert_eq!(g.data_offset, size - 68);
        // a prefix that is not a GGUF is an error at once, not a request for more
        assert!(GgufFile::parse_prefix(b"GGUX....", p, size).is_err());
    }
}
