//! The numbers placement needs, derived from a model's metadata and tensor table.

use super::split::ModelFiles;
use super::types::Value;
use super::GgufError;
use serde::Serialize;

/// More decoder blocks than any model has (the largest have a few hundred).
pub const MAX_LAYERS: u64 = 1 << 16;

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelShape {
    pub architecture: String,
    pub name: Option<String>,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    /// Per-head key and value widths.
    pub head_dim_k: u32,
    pub head_dim_v: u32,
    pub context_length: u32,
    pub vocab_size: u32,
    pub chat_template: Option<String>,
    /// Weight bytes of each decoder layer (tensors named `blk.N.*`).
    pub layer_bytes: Vec<u64>,
    /// `token_embd.weight` bytes (first stage).
    pub embedding_bytes: u64,
    /// Output head bytes (last stage): `output.weight`, or the token embedding when tied.
    pub output_bytes: u64,
    /// True when there is no `output.weight` and the embedding doubles as the output head.
    pub tied_embeddings: bool,
    /// Other tensors outside the layers (norms, rope factors): loaded by the last stage.
    pub other_bytes: u64,
    /// Sum of all tensor bytes.
    pub total_weight_bytes: u64,
    /// Number of weights (elements of all tensors).
    pub n_params: u64,
    /// Number of files (1, or the size of a split set).
    pub n_files: usize,
}

impl ModelShape {
    pub fn from_files(files: &ModelFiles) -> Result<ModelShape, GgufError> {
        let f = files.first();
        let missing = |key: &str| GgufError::MissingKey { path: f.path.clone(), key: key.to_string() };
        let arch = f
            .get("general.architecture")
            .and_then(Value::as_str)
            .ok_or_else(|| missing("general.architecture"))?
            .to_string();
        let key = |k: &str| format!("{arch}.{k}");
        // Some keys are per-layer arrays (hybrid models): take the largest entry.
        let num = |k: &str| -> Option<u64> {
            match f.get(&key(k))? {
                Value::Array(a) => a.iter().filter_map(Value::as_u64).max(),
                v => v.as_u64(),
            }
        };
        // the header's numbers size allocations and arithmetic: bounded before use (a block
        // count of 4e9 once made this allocate 32 GB; found by the gguf fuzz target)
        let bounded = |k: &str, v: u64, max: u64| -> Result<u32, GgufError> {
            if v > max {
                return Err(GgufError::Corrupt {
                    path: f.path.clone(),
                    offset: 0,
                    detail: format!("{} = {v} is implausible (at most {max})", key(k)),
                });
            }
            Ok(v as u32)
        };
        let n_layer =
            bounded("block_count", num("block_count").ok_or_else(|| missing(&key("block_count")))?, MAX_LAYERS)?;
        let n_embd = num("embedding_length").ok_or_else(|| missing(&key("embedding_length")))?;
        let n_embd = bounded("embedding_length", n_embd, u32::MAX as u64)?;
        let n_head = bounded("attention.head_count", num("attention.head_count").unwrap_or(0), u32::MAX as u64)?;
        let n_head_kv = match num("attention.head_count_kv") {
            Some(v) => bounded("attention.head_count_kv", v, u32::MAX as u64)?,
            None => n_head,
        };
        let head_default = n_embd.checked_div(n_head).unwrap_or(0);
        let head_dim_k = match num("attention.key_length") {
            Some(v) => bounded("attention.key_length", v, u32::MAX as u64)?,
            None => head_default,
        };
        let head_dim_v = match num("attention.value_length") {
            Some(v) => bounded("attention.value_length", v, u32::MAX as u64)?,
            None => head_default,
        };
        let context_length = bounded("context_length", num("context_length").unwrap_or(0), u32::MAX as u64)?;
        let vocab_size = num("vocab_size")
            .or_else(|| f.get("tokenizer.ggml.tokens").and_then(Value::as_array).map(|a| a.len() as u64))
            .unwrap_or(0);
        let vocab_size = bounded("vocab_size", vocab_size, u32::MAX as u64)?;
        let chat_template = f.get("tokenizer.chat_template").and_then(Value::as_str).map(str::to_string);
        let name = f.get("general.name").and_then(Value::as_str).map(str::to_string);

        let mut layer_bytes = vec![0u64; n_layer as usize];
        let (mut embedding_bytes, mut output_bytes, mut other_bytes, mut total) = (0, 0, 0, 0);
        let mut has_output = false;
        let mut n_params = 0u64;
        for t in files.tensors() {
            total = u64::saturating_add(total, t.bytes);
            n_params = n_params.saturating_add(t.dims.iter().product::<u64>());
            if let Some(il) = layer_index(&t.name) {
                if let Some(slot) = layer_bytes.get_mut(il) {
                    *slot = u64::saturating_add(*slot, t.bytes);
                } else {
                    other_bytes = u64::saturating_add(other_bytes, t.bytes); // e.g. MTP/nextn blocks beyond n_layer
                }
            } else if t.name == "token_embd.weight" {
                embedding_bytes = u64::saturating_add(embedding_bytes, t.bytes);
            } else if t.name == "output.weight" {
                output_bytes = u64::saturating_add(output_bytes, t.bytes);
                has_output = true;
            } else {
                other_bytes = u64::saturating_add(other_bytes, t.bytes);
            }
        }
        let tied = !has_output;
        if tied {
            output_bytes = embedding_bytes;
        }
        Ok(ModelShape {
            architecture: arch,
            name,
            n_layer,
            n_embd,
            n_head,
            n_head_kv,
            head_dim_k,
            head_dim_v,
            context_length,
            vocab_size,
            chat_template,
            layer_bytes,
            embedding_bytes,
            output_bytes,
            tied_embeddings: tied,
            other_bytes,
            total_weight_bytes: total,
            n_params,
            n_files: files.files.len(),
        })
    }

    /// KV cache bytes per token per layer with an f16 cache.
    pub fn kv_bytes_per_token_per_layer(&self) -> u64 {
        2 * (self.n_head_kv as u64) * (self.head_dim_k as u64 + self.head_dim_v as u64)
    }

    /// Weight bytes of layers `[begin, end)`.
    pub fn window_bytes(&self, begin: u32, end: u32) -> u64 {
        self.layer_bytes[begin as usize..end as usize].iter().sum()
    }
}

fn layer_index(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (n, _) = rest.split_once('.')?;
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn layer_index_parses_block_names() {
        assert_eq!(super::layer_index("blk.12.attn_q.weight"), Some(12));
        assert_eq!(super::layer_index("token_embd.weight"), None);
        assert_eq!(super::layer_index("blk.x.attn_q.weight"), None);
    }
}
