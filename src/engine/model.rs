//! A loaded model window: RAII over `llama_model`, plus the vocabulary operations.

use super::{ffi, log, EngineError, Token};
use crate::gguf::{ModelFiles, ModelShape};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};

/// Decoder layers `[begin, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRange {
    pub begin: u32,
    pub end: u32,
}

/// How stages fail to cover a model's layers exactly once, in order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TilingError {
    #[error("no stages")]
    Empty,
    #[error("stage {range} does not continue at layer {expected}")]
    Gap { range: LayerRange, expected: u32 },
    #[error("the stages end at layer {end} of {n_layer}")]
    Short { end: u32, n_layer: u32 },
}

impl LayerRange {
    /// Checks that `ranges` cover `[0, n_layer)` in order, each non-empty, without gap or
    /// overlap: what every pipeline of stages needs (the one place this is checked).
    pub fn tiling(ranges: impl IntoIterator<Item = LayerRange>, n_layer: u32) -> Result<(), TilingError> {
        let mut next = None;
        for range in ranges {
            let expected = next.unwrap_or(0);
            if range.begin != expected || range.end <= range.begin {
                return Err(TilingError::Gap { range, expected });
            }
            next = Some(range.end);
        }
        match next {
            None => Err(TilingError::Empty),
            Some(end) if end != n_layer => Err(TilingError::Short { end, n_layer }),
            Some(_) => Ok(()),
        }
    }
}

impl std::fmt::Display for LayerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.begin, self.end)
    }
}

/// Where a stage's weights, KV cache and compute live.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Device {
    /// llama.cpp's choice: the GPUs it finds (taking `gpu_layers` of the layers), else the CPU.
    #[default]
    Auto,
    /// The CPU only, even when a GPU is there: no layer, no KV and no operation is offloaded.
    Cpu,
    /// One ggml device by its name ("Vulkan0", "CUDA0", "Metal"; see [`super::devices`]).
    Named(String),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("CPU"),
            Device::Named(n) => f.write_str(n),
        }
    }
}

/// What to load: a GGUF (or the first file of a split set), optionally only a layer window.
#[derive(Clone, Debug)]
pub struct ModelWindow {
    pub path: PathBuf,
    /// `None`: the whole model through llama.cpp's unpatched loader.
    pub range: Option<LayerRange>,
    pub use_mmap: bool,
    /// Where this stage computes; each stage of a pipeline chooses its own.
    pub device: Device,
    /// Layers to offload to a GPU (-1: all); ignored on the CPU and by CPU-only builds.
    pub gpu_layers: i32,
    /// Only the vocabulary (tokenizer, chat template): a coordinator that holds no stage.
    pub vocab_only: bool,
}

impl ModelWindow {
    pub fn full(path: impl Into<PathBuf>) -> Self {
        ModelWindow {
            path: path.into(),
            range: None,
            use_mmap: true,
            device: Device::Auto,
            gpu_layers: -1,
            vocab_only: false,
        }
    }
    pub fn layers(path: impl Into<PathBuf>, begin: u32, end: u32) -> Self {
        ModelWindow { range: Some(LayerRange { begin, end }), ..Self::full(path) }
    }
}

pub(super) struct Model {
    pub ptr: *mut sys::llama_model,
    pub range: LayerRange,
    pub n_layer: u32,
    pub shape: ModelShape,
    /// The device the layers compute on ("CPU", "Vulkan0", ...; several names joined with ",").
    pub device: String,
}

// SAFETY: the model is owned by exactly one stage thread; llama_model has no thread affinity.
unsafe impl Send for Model {}

impl Model {
    /// `exact`: no repacked weight copies (ggml's extra buffer types): their matmuls use one
    /// kernel for a single row and another for several, so a token's result would depend on its
    /// batch (see [`super::ContextParams::exact`]).
    pub fn load(w: &ModelWindow, exact: bool) -> Result<Model, EngineError> {
        super::init()?;
        if !w.path.exists() {
            return Err(EngineError::NotFound { path: w.path.clone() });
        }
        // Read the header ourselves first: a truncated or corrupt file is refused with a precise
        // reason before llama.cpp sees it, and the range is checked against n_layer.
        let files = ModelFiles::open(&w.path)?;
        let shape = ModelShape::from_files(&files)?;
        let n_layer = shape.n_layer;
        let range = w.range.unwrap_or(LayerRange { begin: 0, end: n_layer });
        if range.begin >= range.end || range.end > n_layer {
            return Err(EngineError::InvalidRange { begin: range.begin, end: range.end, n_layer });
        }
        // NULL-terminated device list for llama.cpp; must outlive the load call below.
        let (mut devs, device) = device_list(&w.device, w.gpu_layers)?;
        // SAFETY: plain struct of defaults.
        let mut p = unsafe { sys::llama_model_default_params() };
        p.n_gpu_layers = w.gpu_layers;
        if let Some(d) = devs.as_mut() {
            p.devices = d.as_mut_ptr();
        }
        p.vocab_only = w.vocab_only;
        p.use_extra_bufts = !exact;
        p.load_mode = if w.use_mmap { sys::LLAMA_LOAD_MODE_MMAP } else { sys::LLAMA_LOAD_MODE_NONE };
        let paths = files.paths();
        let cpaths: Vec<CString> = paths.iter().map(|p| cstring_path(p)).collect::<Result<_, _>>()?;
        let mut ptrs: Vec<*const c_char> = cpaths.iter().map(|c| c.as_ptr()).collect();
        log::clear_errors();
        // SAFETY: ptrs holds valid NUL-terminated paths that outlive the call; params by value.
        let ptr = unsafe {
            match w.range {
                None if ptrs.len() == 1 => sys::llama_model_load_from_file(ptrs[0], p),
                None => sys::llama_model_load_from_splits(ptrs.as_mut_ptr(), ptrs.len(), p),
                Some(r) if ptrs.len() == 1 => {
                    ffi::llama_shard_model_load_from_file(ptrs[0], p, r.begin as i32, r.end as i32)
                }
                Some(r) => {
                    ffi::llama_shard_model_load_from_splits(ptrs.as_ptr(), ptrs.len(), p, r.begin as i32, r.end as i32)
                }
            }
        };
        if ptr.is_null() {
            let reason = log::take_errors();
            return Err(classify(&w.path, range, reason));
        }
        let model = Model { ptr, range, n_layer, shape, device };
        let (mut b, mut e) = (0i32, 0i32);
        // SAFETY: live model; b and e are valid out-pointers.
        unsafe { ffi::llama_shard_model_get_range(model.ptr, &mut b, &mut e) };
        // (a vocabulary-only model has no layers at all)
        if !w.vocab_only && (b as u32, e as u32) != (range.begin, range.end) {
            return Err(EngineError::Load {
                path: w.path.clone(),
                begin: range.begin,
                end: range.end,
                reason: format!("llama.cpp loaded layers [{b}, {e}) instead"),
            });
        }
        Ok(model)
    }

    pub fn vocab(&self) -> *const sys::llama_vocab {
        // SAFETY: ptr is a live model; the vocab lives as long as the model.
        unsafe { sys::llama_model_get_vocab(self.ptr) }
    }

    pub fn n_embd(&self) -> usize {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_n_embd(self.ptr) as usize }
    }

    /// Width of the embeddings the last layer outputs (n_embd for most models).
    pub fn n_embd_out(&self) -> usize {
        // SAFETY: ptr is a live model.
        let n = unsafe { sys::llama_model_n_embd_out(self.ptr) };
        if n > 0 {
            return n as usize;
        }
        // a vocabulary-only model has no hyperparameters: read them from the header
        let arch = self.meta("general.architecture").unwrap_or_default();
        ["embedding_length_out", "embedding_length"]
            .iter()
            .find_map(|k| self.meta(&format!("{arch}.{k}"))?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// A GGUF metadata value as a string (numbers are formatted), if the key exists.
    pub fn meta(&self, key: &str) -> Option<String> {
        let key = std::ffi::CString::new(key).ok()?;
        let mut buf = vec![0u8; 256];
        // SAFETY: key is NUL-terminated; buf has buf.len() writable bytes; returns the length
        // written (without the NUL) or -1 when the key is missing.
        let n = unsafe {
            sys::llama_model_meta_val_str(self.ptr, key.as_ptr(), buf.as_mut_ptr() as *mut c_char, buf.len())
        };
        (n >= 0).then(|| {
            buf.truncate((n as usize).min(buf.len().saturating_sub(1)));
            String::from_utf8_lossy(&buf).into_owned()
        })
    }

    /// How the model's embeddings are pooled (GGUF `{arch}.pooling_type`).
    pub fn pooling(&self) -> super::Pooling {
        let arch = self.meta("general.architecture").unwrap_or_default();
        super::Pooling::from_gguf(self.meta(&format!("{arch}.pooling_type")).and_then(|v| v.trim().parse().ok()))
    }

    pub fn n_vocab(&self) -> usize {
        // SAFETY: vocab() is valid while the model lives.
        unsafe { sys::llama_vocab_n_tokens(self.vocab()) as usize }
    }

    pub fn n_pos_per_token(&self) -> usize {
        // SAFETY: ptr is a live model.
        unsafe { ffi::llama_shard_n_pos_per_token(self.ptr) as usize }
    }

    pub fn n_ctx_train(&self) -> u32 {
        // SAFETY: ptr is a live model.
        unsafe { sys::llama_model_n_ctx_train(self.ptr) as u32 }
    }

    /// End-of-generation tokens (EOS, EOT, ...).
    pub fn eog_tokens(&self) -> Vec<Token> {
        let v = self.vocab();
        // SAFETY: every id is in [0, n_vocab).
        (0..self.n_vocab() as Token).filter(|&t| unsafe { sys::llama_vocab_is_eog(v, t) }).collect()
    }

    pub fn eos(&self) -> Option<Token> {
        // SAFETY: vocab() is valid.
        let t = unsafe { sys::llama_vocab_eos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    pub fn bos(&self) -> Option<Token> {
        // SAFETY: vocab() is valid.
        let t = unsafe { sys::llama_vocab_bos(self.vocab()) };
        (t >= 0).then_some(t)
    }

    pub fn tokenize(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<Token>, EngineError> {
        let len = i32::try_from(text.len()).map_err(|_| EngineError::Tokenize { reason: "text too long".into() })?;
        let mut buf = vec![0 as Token; text.len() + 8];
        for _ in 0..2 {
            // SAFETY: text points at len bytes; buf has buf.len() writable tokens.
            let n = unsafe {
                sys::llama_tokenize(
                    self.vocab(),
                    text.as_ptr() as *const c_char,
                    len,
                    buf.as_mut_ptr(),
                    buf.len() as i32,
                    add_special,
                    parse_special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            if n == i32::MIN {
                break;
            }
            buf.resize((-n) as usize, 0); // too small: -n is the size needed
        }
        Err(EngineError::Tokenize { reason: "llama_tokenize failed".into() })
    }

    /// Bytes of one token (special tokens rendered when `special`). May be an incomplete UTF-8
    /// sequence: see [`super::TokenDecoder`].
    pub fn token_bytes(&self, token: Token, special: bool) -> Vec<u8> {
        let mut buf = vec![0u8; 64];
        loop {
            // SAFETY: buf has buf.len() writable bytes.
            let n = unsafe {
                sys::llama_token_to_piece(
                    self.vocab(),
                    token,
                    buf.as_mut_ptr() as *mut c_char,
                    buf.len() as i32,
                    0,
                    special,
                )
            };
            if n >= 0 {
                buf.truncate(n as usize);
                return buf;
            }
            buf.resize((-n) as usize, 0);
        }
    }

    /// The GGUF's default chat template, if any.
    pub fn chat_template(&self) -> Option<String> {
        // SAFETY: returns NULL or a string owned by the model.
        let p = unsafe { sys::llama_model_chat_template(self.ptr, std::ptr::null()) };
        // SAFETY: non-null pointers are NUL-terminated and live as long as the model.
        (!p.is_null()).then(|| unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: ptr came from a successful load and is freed once; contexts are dropped first
        // (the stage drops its context before its model).
        unsafe { sys::llama_model_free(self.ptr) }
    }
}

/// The `devices` list llama.cpp gets for `d` (`None`: its default, every GPU) and the name of
/// what the layers then compute on.
fn device_list(d: &Device, gpu_layers: i32) -> Result<(Option<Vec<sys::ggml_backend_dev_t>>, String), EngineError> {
    let null = std::ptr::null_mut();
    let cpu = || (Some(vec![null]), "CPU".to_string());
    match d {
        Device::Auto => {
            let gpus = super::gpu_names();
            let on = if gpu_layers != 0 && !gpus.is_empty() { gpus.join(",") } else { "CPU".into() };
            Ok((None, on))
        }
        // an empty list: no device besides the CPU, so the scheduler has no GPU backend at all
        Device::Cpu => Ok(cpu()),
        Device::Named(name) => {
            let dev = super::device_by_name(name)
                .ok_or_else(|| EngineError::UnknownDevice { name: name.clone(), available: super::devices() })?;
            // SAFETY: dev is a registered device.
            if unsafe { sys::ggml_backend_dev_type(dev) } == sys::GGML_BACKEND_DEVICE_TYPE_CPU || gpu_layers == 0 {
                return Ok(cpu());
            }
            Ok((Some(vec![dev, null]), super::device_name(dev)))
        }
    }
}

pub(super) fn cstring_path(p: &Path) -> Result<CString, EngineError> {
    let s = p.to_str().ok_or_else(|| EngineError::Load {
        path: p.to_path_buf(),
        begin: 0,
        end: 0,
        reason: "the path is not valid UTF-8".into(),
    })?;
    CString::new(s).map_err(|_| EngineError::Load {
        path: p.to_path_buf(),
        begin: 0,
        end: 0,
        reason: "the path contains a NUL byte".into(),
    })
}

fn classify(path: &Path, r: LayerRange, reason: String) -> EngineError {
    let unsupported = ["unknown model architecture", "not supported with a layer window", "layer window:"];
    if unsupported.iter().any(|s| reason.contains(s)) {
        EngineError::Unsupported { path: path.to_path_buf(), reason }
    } else {
        EngineError::Load { path: path.to_path_buf(), begin: r.begin, end: r.end, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::{LayerRange, TilingError};

    fn r(begin: u32, end: u32) -> LayerRange {
        LayerRange { begin, end }
    }

    #[test]
    fn stages_tile_the_layers_in_order_or_say_where_not() {
        assert_eq!(LayerRange::tiling([r(0, 3), r(3, 5), r(5, 8)], 8), Ok(()));
        assert_eq!(LayerRange::tiling([r(0, 8)], 8), Ok(()));
        assert_eq!(LayerRange::tiling([], 8), Err(TilingError::Empty));
        assert_eq!(LayerRange::tiling([r(1, 8)], 8), Err(TilingError::Gap { range: r(1, 8), expected: 0 }));
        assert_eq!(LayerRange::tiling([r(0, 3), r(4, 8)], 8), Err(TilingError::Gap { range: r(4, 8), expected: 3 }));
        assert_eq!(LayerRange::tiling([r(0, 4), r(3, 8)], 8), Err(TilingError::Gap { range: r(3, 8), expected: 4 }));
        assert_eq!(LayerRange::tiling([r(0, 0), r(0, 8)], 8), Err(TilingError::Gap { range: r(0, 0), expected: 0 }));
        assert_eq!(LayerRange::tiling([r(0, 5)], 8), Err(TilingError::Short { end: 5, n_layer: 8 }));
        assert_eq!(LayerRange::tiling([r(0, 9)], 8), Err(TilingError::Short { end: 9, n_layer: 8 }));
    }
}
