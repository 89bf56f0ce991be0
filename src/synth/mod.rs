//! Synthetic test models: seeded random-weight GGUFs with a small real BPE tokenizer and a chat
//! template, written by the project itself (nothing is downloaded or committed). Tiny presets
//! drive the tests; a TinyLlama-shaped ~1 GB preset drives the benchmarks.

mod bpe;
mod rng;

pub use bpe::CHAT_TEMPLATE;

use crate::gguf::{
    GgufWriter, TensorSpec, Value, GGML_TYPE_F16, GGML_TYPE_F32, GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, GGML_TYPE_Q8_0,
};
use half::f16;
use rng::{hash_str, Rng};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama: dense SwiGLU FFN, no biases.
    Llama,
    /// Qwen2: like llama with q/k/v biases.
    Qwen2,
    /// Qwen3-MoE: q/k norms and a routed mixture of experts.
    Qwen3Moe,
}

impl Arch {
    pub fn gguf_name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3Moe => "qwen3moe",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    F32,
    F16,
    Q8_0,
    /// llama.cpp's Q4_K_M layout (Q4_K, with Q6_K for the output head and some attn_v/ffn_down);
    /// header-only models for planning, since this generator cannot fill K-quant blocks.
    Q4KM,
}

impl WeightType {
    fn ggml(self) -> u32 {
        match self {
            WeightType::F32 => GGML_TYPE_F32,
            WeightType::F16 => GGML_TYPE_F16,
            WeightType::Q8_0 => GGML_TYPE_Q8_0,
            WeightType::Q4KM => GGML_TYPE_Q4_K,
        }
    }
    fn file_type(self) -> u32 {
        match self {
            WeightType::F32 => 0,
            WeightType::F16 => 1,
            WeightType::Q8_0 => 7,
            WeightType::Q4KM => 15,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub arch: Arch,
    /// No `output.weight`: the token embedding is the output head.
    pub tied: bool,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_head: u32,
    pub n_head_kv: u32,
    pub n_ff: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    pub context_length: u32,
    /// BPE merges learned for the tokenizer (vocab = 256 bytes + merges + 4 specials).
    pub n_merges: usize,
    /// Pad the vocabulary to this size with reserved tokens (real-model shapes).
    pub n_vocab: Option<u32>,
    pub weight_type: WeightType,
    /// Standard deviation of the layers' weights: small values give a calm model whose logits
    /// change little under rounding (see `tiny-llama-calm`).
    pub layer_std: f32,
    pub seed: u64,
    /// `{arch}.pooling_type` for embeddings (llama.cpp's values; None: not written).
    pub pooling_type: Option<u32>,
    /// Standard deviation of `output.weight`: larger values give peaked next-token
    /// distributions (text that repeats itself, as real models' often does).
    pub output_std: f32,
}

/// Names accepted by [`preset`] (and `exo dev make-model --preset`).
pub const PRESETS: &[&str] = &[
    "tiny-llama",
    "tiny-llama-tied",
    "tiny-qwen2",
    "tiny-qwen3moe",
    "tiny-llama-calm",
    "tiny-llama-peaked",
    "tinyllama-1b",
];

/// Architectures the equivalence tests cover.
pub const TEST_PRESETS: &[&str] = &["tiny-llama", "tiny-llama-tied", "tiny-qwen2", "tiny-qwen3moe"];

pub fn preset(name: &str) -> Option<ModelSpec> {
    let tiny = |arch, tied| ModelSpec {
        name: name.to_string(),
        arch,
        tied,
        n_layer: 8,
        n_embd: 64,
        n_head: 4,
        n_head_kv: 2,
        n_ff: 128,
        n_expert: 0,
        n_expert_used: 0,
        context_length: 2048,
        n_merges: 300,
        n_vocab: None,
        weight_type: WeightType::F32,
        layer_std: 0.05,
        seed: 42,
        pooling_type: None,
        output_std: 0.05,
    };
    Some(match name {
        "tiny-llama" => tiny(Arch::Llama, false),
        "tiny-llama-tied" => tiny(Arch::Llama, true),
        "tiny-qwen2" => tiny(Arch::Qwen2, false),
        "tiny-qwen3moe" => ModelSpec { n_expert: 4, n_expert_used: 2, n_ff: 64, ..tiny(Arch::Qwen3Moe, false) },
        // Layers that perturb the residual stream only a little: its best logits are far apart,
        // so text-comparing tests stay meaningful even with `exact: false` kernels (whose
        // batched and single decoding differ at the rounding level).
        "tiny-llama-calm" => ModelSpec { layer_std: 0.01, ..tiny(Arch::Llama, false) },
        // Confident next-token distributions over a small vocabulary: sampled text falls into
        // loops, which speculative proposals then predict (the speculation tests).
        "tiny-llama-peaked" => ModelSpec { output_std: 1.0, ..tiny(Arch::Llama, false) },
        // TinyLlama-1.1B's shape (22 layers, 2048 wide, GQA 32/4, FFN 5632) with a small vocab.
        "tinyllama-1b" => ModelSpec {
            n_layer: 22,
            n_embd: 2048,
            n_head: 32,
            n_head_kv: 4,
            n_ff: 5632,
            weight_type: WeightType::Q8_0,
            ..tiny(Arch::Llama, false)
        },
        _ => return None,
    })
}

/// Writes the model described by `spec` to `path` (atomically). Same spec, same bytes.
pub fn make_model(spec: &ModelSpec, path: &Path) -> std::io::Result<()> {
    let (w, embd_std) = build(spec);
    w.write(path, |t, out| fill_tensor(spec, embd_std, t, out))
}

/// Writes only the header; the data region is a sparse hole of the right size. Enough for
/// planning with real model shapes (nothing here reads weights).
pub fn make_header_only(spec: &ModelSpec, path: &Path) -> std::io::Result<()> {
    build(spec).0.write_sparse(path)
}

/// Shapes of real models (header-only, for planning): Llama 3.1 8B, 70B and 405B.
pub fn real_shape(name: &str, weight_type: WeightType) -> Option<ModelSpec> {
    let base = ModelSpec {
        name: name.to_string(),
        arch: Arch::Llama,
        tied: false,
        n_layer: 0,
        n_embd: 0,
        n_head: 0,
        n_head_kv: 8,
        n_ff: 0,
        n_expert: 0,
        n_expert_used: 0,
        context_length: 131072,
        n_merges: 300,
        n_vocab: Some(128256),
        weight_type,
        layer_std: 0.05,
        seed: 0,
        pooling_type: None,
        output_std: 0.05,
    };
    Some(match name {
        "llama-3.1-8b" => ModelSpec { n_layer: 32, n_embd: 4096, n_head: 32, n_ff: 14336, ..base },
        "llama-3.1-70b" => ModelSpec { n_layer: 80, n_embd: 8192, n_head: 64, n_ff: 28672, ..base },
        "llama-3.1-405b" => ModelSpec { n_layer: 126, n_embd: 16384, n_head: 128, n_ff: 53248, ..base },
        _ => return None,
    })
}

/// Writes the model as a split set `DIR/STEM-0000i-of-0000n.gguf`; returns the paths in order.
/// The tensors' values are the same as in [`make_model`]'s single file.
pub fn make_split_model(spec: &ModelSpec, dir: &Path, stem: &str, n_files: usize) -> std::io::Result<Vec<PathBuf>> {
    let (w, embd_std) = build(spec);
    let parts = w.into_split(n_files);
    let n = parts.len();
    let mut paths = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let p = dir.join(format!("{stem}-{:05}-of-{n:05}.gguf", i + 1));
        part.write(&p, |t, out| fill_tensor(spec, embd_std, t, out))?;
        paths.push(p);
    }
    Ok(paths)
}

fn build(spec: &ModelSpec) -> (GgufWriter, f32) {
    let mut vocab = bpe::build(spec.n_merges);
    for i in vocab.tokens.len()..spec.n_vocab.unwrap_or(0) as usize {
        vocab.tokens.push(format!("<|reserved_{i}|>"));
        vocab.token_types.push(3);
    }
    let n_vocab = vocab.tokens.len() as u64;
    let a = spec.arch.gguf_name();
    let mut w = GgufWriter::new();
    let s = |x: &str| Value::Str(x.to_string());
    w.set("general.architecture", s(a));
    w.set("general.name", s(&spec.name));
    w.set("general.file_type", Value::U32(spec.weight_type.file_type()));
    w.set(&format!("{a}.context_length"), Value::U32(spec.context_length));
    if let Some(p) = spec.pooling_type {
        w.set(&format!("{a}.pooling_type"), Value::U32(p));
    }
    w.set(&format!("{a}.embedding_length"), Value::U32(spec.n_embd));
    w.set(&format!("{a}.block_count"), Value::U32(spec.n_layer));
    w.set(&format!("{a}.feed_forward_length"), Value::U32(spec.n_ff));
    w.set(&format!("{a}.attention.head_count"), Value::U32(spec.n_head));
    w.set(&format!("{a}.attention.head_count_kv"), Value::U32(spec.n_head_kv));
    w.set(&format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
    w.set(&format!("{a}.rope.freq_base"), Value::F32(10000.0));
    w.set(&format!("{a}.vocab_size"), Value::U32(n_vocab as u32));
    if spec.n_expert > 0 {
        w.set(&format!("{a}.expert_count"), Value::U32(spec.n_expert));
        w.set(&format!("{a}.expert_used_count"), Value::U32(spec.n_expert_used));
        w.set(&format!("{a}.expert_feed_forward_length"), Value::U32(spec.n_ff));
    }
    w.set("tokenizer.ggml.model", s("gpt2"));
    w.set("tokenizer.ggml.pre", s("default"));
    w.set("tokenizer.ggml.tokens", Value::Array(vocab.tokens.iter().map(|t| s(t)).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array(vocab.token_types.iter().map(|&t| Value::I32(t)).collect()));
    w.set("tokenizer.ggml.merges", Value::Array(vocab.merges.iter().map(|m| s(m)).collect()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(vocab.bos));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(vocab.eos));
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(true));
    w.set("tokenizer.ggml.add_eos_token", Value::Bool(false));
    w.set("tokenizer.chat_template", s(CHAT_TEMPLATE));

    let (e, hd) = (spec.n_embd as u64, (spec.n_embd / spec.n_head) as u64);
    let (q, kv, ff) = (spec.n_head as u64 * hd, spec.n_head_kv as u64 * hd, spec.n_ff as u64);
    let wt = spec.weight_type.ggml();
    let q4km = spec.weight_type == WeightType::Q4KM;
    // llama.cpp's Q4_K_M rule: more bits for the first and last eighth and every third layer between
    let more_bits = |il: u32| {
        let n = spec.n_layer;
        il < n / 8 || il >= 7 * n / 8 || (il - n / 8) % 3 == 2
    };
    let sensitive = |il: u32| if q4km && more_bits(il) { GGML_TYPE_Q6_K } else { wt };
    let mut t = |name: String, dims: Vec<u64>, type_id: u32| w.add_tensor(TensorSpec { name, dims, type_id });
    t("token_embd.weight".into(), vec![e, n_vocab], wt);
    t("output_norm.weight".into(), vec![e], GGML_TYPE_F32);
    if !spec.tied {
        t("output.weight".into(), vec![e, n_vocab], if q4km { GGML_TYPE_Q6_K } else { wt });
    }
    for il in 0..spec.n_layer {
        let n = |x: &str| format!("blk.{il}.{x}");
        t(n("attn_norm.weight"), vec![e], GGML_TYPE_F32);
        t(n("attn_q.weight"), vec![e, q], wt);
        t(n("attn_k.weight"), vec![e, kv], wt);
        t(n("attn_v.weight"), vec![e, kv], sensitive(il));
        t(n("attn_output.weight"), vec![q, e], wt);
        if spec.arch == Arch::Qwen2 {
            t(n("attn_q.bias"), vec![q], GGML_TYPE_F32);
            t(n("attn_k.bias"), vec![kv], GGML_TYPE_F32);
            t(n("attn_v.bias"), vec![kv], GGML_TYPE_F32);
        }
        if spec.arch == Arch::Qwen3Moe {
            t(n("attn_q_norm.weight"), vec![hd], GGML_TYPE_F32);
            t(n("attn_k_norm.weight"), vec![hd], GGML_TYPE_F32);
        }
        t(n("ffn_norm.weight"), vec![e], GGML_TYPE_F32);
        if spec.n_expert > 0 {
            let x = spec.n_expert as u64;
            t(n("ffn_gate_inp.weight"), vec![e, x], GGML_TYPE_F32);
            t(n("ffn_gate_exps.weight"), vec![e, ff, x], wt);
            t(n("ffn_up_exps.weight"), vec![e, ff, x], wt);
            t(n("ffn_down_exps.weight"), vec![ff, e, x], sensitive(il));
        } else {
            t(n("ffn_gate.weight"), vec![e, ff], wt);
            t(n("ffn_up.weight"), vec![e, ff], wt);
            t(n("ffn_down.weight"), vec![ff, e], sensitive(il));
        }
    }
    // A tied head dots the residual with the embedding it started from; a small embedding keeps
    // that self-match from dominating, so random models still produce varied text.
    let embd_std = if spec.tied { 0.02 } else { 0.1 };
    (w, embd_std)
}

/// Random values for one tensor: norms around 1, everything else small around 0.
fn fill_tensor(spec: &ModelSpec, embd_std: f32, t: &TensorSpec, out: &mut dyn Write) -> std::io::Result<()> {
    let mut rng = Rng::new(spec.seed ^ hash_str(&t.name));
    let is_norm = t.name.contains("norm");
    let std = if t.name.starts_with("token_embd") {
        embd_std
    } else if t.name.starts_with("blk.") {
        spec.layer_std
    } else if t.name.starts_with("output.weight") {
        spec.output_std
    } else {
        0.05
    };
    let mut sample = || {
        if is_norm {
            1.0 + rng.normal(0.05)
        } else {
            rng.normal(std)
        }
    };
    let n = t.n_elements() as usize;
    const CHUNK: usize = 1 << 16; // multiple of the Q8_0 block
    let mut buf = Vec::with_capacity(CHUNK * 4);
    let mut done = 0;
    while done < n {
        let k = CHUNK.min(n - done);
        buf.clear();
        match t.type_id {
            GGML_TYPE_F32 => (0..k).for_each(|_| buf.extend_from_slice(&sample().to_le_bytes())),
            GGML_TYPE_F16 => (0..k).for_each(|_| buf.extend_from_slice(&f16::from_f32(sample()).to_le_bytes())),
            GGML_TYPE_Q8_0 => {
                let mut block = [0f32; 32];
                for _ in 0..k / 32 {
                    block.iter_mut().for_each(|x| *x = sample());
                    quantize_q8_0(&block, &mut buf);
                }
            }
            other => return Err(std::io::Error::other(format!("cannot generate ggml type {other}"))),
        }
        out.write_all(&buf)?;
        done += k;
    }
    Ok(())
}

/// ggml's Q8_0 block: f16 scale then 32 signed bytes (round to nearest).
fn quantize_q8_0(x: &[f32; 32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{ModelFiles, ModelShape};

    #[test]
    fn presets_generate_and_parse() {
        let d = tempfile::tempdir().unwrap();
        for name in TEST_PRESETS {
            let spec = preset(name).unwrap();
            let p = d.path().join(format!("{name}.gguf"));
            make_model(&spec, &p).unwrap();
            let shape = ModelShape::from_files(&ModelFiles::open(&p).unwrap()).unwrap();
            assert_eq!(shape.n_layer, spec.n_layer);
            assert_eq!(shape.architecture, spec.arch.gguf_name());
            assert_eq!(shape.tied_embeddings, spec.tied);
            assert!(shape.layer_bytes.iter().all(|&b| b == shape.layer_bytes[0] && b > 0));
            assert_eq!(shape.chat_template.as_deref(), Some(CHAT_TEMPLATE));
        }
    }

    #[test]
    fn generation_is_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let spec = preset("tiny-qwen2").unwrap();
        let (a, b) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
        make_model(&spec, &a).unwrap();
        make_model(&spec, &b).unwrap();
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }

    #[test]
    fn q8_0_block_layout() {
        let mut x = [0f32; 32];
        x[3] = -1.0;
        x[5] = 0.5;
        let mut out = Vec::new();
        quantize_q8_0(&x, &mut out);
        assert_eq!(out.len(), 34);
        assert_eq!(out[2 + 3] as i8, -127);
        assert_eq!(out[2 + 5] as i8, 64);
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;
    use crate::gguf::{split_paths, ModelFiles, ModelShape};

    #[test]
    fn split_set_has_same_shape_as_single_file() {
        let d = tempfile::tempdir().unwrap();
        let spec = preset("tiny-llama").unwrap();
        let single = d.path().join("one.gguf");
        make_model(&spec, &single).unwrap();
        let paths = make_split_model(&spec, d.path(), "set", 3).unwrap();
        assert_eq!(paths.len(), 3);
        assert_eq!(split_paths(&paths[0]).unwrap(), paths);
        let files = ModelFiles::open(&paths[0]).unwrap();
        assert_eq!(files.files.len(), 3);
        assert!(files.files.iter().all(|f| !f.tensors.is_empty()));
        let a = ModelShape::from_files(&ModelFiles::open(&single).unwrap()).unwrap();
        let b = ModelShape::from_files(&files).unwrap();
        assert_eq!(a.layer_bytes, b.layer_bytes);
        assert_eq!(a.total_weight_bytes, b.total_weight_bytes);
        assert_eq!(b.n_files, 3);
        // a missing member of the set is an error, not a partial model
        std::fs::remove_file(&paths[2]).unwrap();
        assert!(ModelFiles::open(&paths[0]).is_err());
    }
}
