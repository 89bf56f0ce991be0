//! The only place with `unsafe` and FFI: llama.cpp (patched with `ggml-patches/`) behind safe
//! types. A loaded stage (a layer window of a GGUF plus its context) lives on its own OS thread and
//! is reached through a cloneable [`StageHandle`] over bounded channels.

mod batch;
mod context;
mod cpu_budget;
mod detok;
mod ffi;
mod grammar;
mod log;
mod memory;
mod model;
mod observed;
mod pooling;
mod quantize;
mod sampler;
mod speculation;
mod stage;
mod template;
mod thread_time;

pub use context::ContextParams;
pub use detok::TokenDecoder;
pub use grammar::{json_schema_to_grammar, GrammarFault, GRAMMAR_STEP_BUDGET, MAX_GRAMMAR};
pub use memory::trim as trim_memory;
pub use model::{Device, LayerRange, ModelWindow, TilingError};
pub use observed::{observe_decode, observed_decode_gbps};
pub use pooling::{normalize, Pooling};
pub use quantize::{quantize, QuantType};
pub use sampler::{SamplingParams, MAX_LOGIT_BIAS};
pub use speculation::{Speculation, MAX_TRIMS, NO_DRAFT, UNSAMPLED};
pub use stage::{Batch, BatchInput, DecodeOutput, StageCounters, StageHandle, StageInfo, StageSpec, TemplateMessage};

use llama_cpp_sys_2 as sys;
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::OnceLock;

pub type Token = i32;

/// The `GGML_PATCHES_STAMP` this crate was compiled with (from `.cargo/config.toml`).
pub const GGML_PATCHES_STAMP: &str = env!("GGML_PATCHES_STAMP");

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("llama.cpp was built from ggml-patches stamp {built:?} but this build expects {expected:?}; run `cargo clean -p llama-cpp-sys-2` and rebuild")]
    PatchMismatch { built: String, expected: String },
    #[error("cannot initialise the llama.cpp backend: {reason}")]
    Backend { reason: String },
    #[error("model file {path} does not exist")]
    NotFound { path: PathBuf },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("invalid layer window [{begin}, {end}) for a model with {n_layer} layers")]
    InvalidRange { begin: u32, end: u32, n_layer: u32 },
    #[error("unsupported model {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("cannot load {path} layers [{begin}, {end}): {reason}")]
    Load { path: PathBuf, begin: u32, end: u32, reason: String },
    #[error("cannot create a context for layers [{begin}, {end}): {reason}")]
    Context { begin: u32, end: u32, reason: String },
    #[error("this stage runs layers [{begin}, {end}): it takes hidden states from the previous stage, not token ids")]
    TokensOnLaterStage { begin: u32, end: u32 },
    #[error("the first stage takes token ids, not hidden states")]
    HiddenOnFirstStage,
    #[error("invalid batch: {reason}")]
    InvalidBatch { reason: String },
    #[error("decode failed on layers [{begin}, {end}) (llama_decode returned {code}): {reason}")]
    Decode { begin: u32, end: u32, code: i32, reason: String },
    #[error("the context is full: {needed} positions needed, {n_ctx} available")]
    ContextFull { needed: u32, n_ctx: u32 },
    #[error("cannot tokenize: {reason}")]
    Tokenize { reason: String },
    #[error("chat template: {reason}")]
    Template { reason: String },
    #[error("grammar: {reason}")]
    Grammar { reason: String },
    /// One sequence's grammar ended it; in a batch, its row carries [`GrammarFault::token`].
    #[error(transparent)]
    GrammarFault(#[from] GrammarFault),
    #[error("invalid sampling parameters: {reason}")]
    Sampling { reason: String },
    #[error("no ggml device named {name:?} (this build has: {})", available.join(", "))]
    UnknownDevice { name: String, available: Vec<String> },
    #[error("the stage thread has stopped")]
    StageGone,
}

/// Initialises the llama.cpp backend once per process, routes its log into `tracing`, and checks
/// that the linked llama.cpp was built from the current `ggml-patches/`.
pub fn init() -> Result<(), EngineError> {
    // llama_backend_init returns nothing: once done, there is nothing that could have failed
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: installs a process-wide callback with no user data; the callback is a plain fn.
        unsafe { sys::llama_log_set(Some(log::callback), std::ptr::null_mut()) };
        // SAFETY: llama_backend_init has no preconditions and is called once (guarded by INIT).
        unsafe { sys::llama_backend_init() };
    });
    check_patches()
}

/// Errors if the linked llama.cpp was built from other patches than this crate's `ggml-patches/`.
pub fn check_patches() -> Result<(), EngineError> {
    // SAFETY: ggml_patches_id returns a pointer to a static NUL-terminated string.
    let built = unsafe { CStr::from_ptr(ffi::ggml_patches_id()) }.to_string_lossy().into_owned();
    if built == GGML_PATCHES_STAMP {
        Ok(())
    } else {
        Err(EngineError::PatchMismatch { built, expected: GGML_PATCHES_STAMP.to_string() })
    }
}

/// Whether a GPU (discrete or integrated) is among the ggml devices: stages then compute there
/// and leave the CPU budget alone.
pub fn has_gpu() -> bool {
    !gpu_names().is_empty()
}

/// Names of the GPUs (discrete or integrated) among the ggml devices, the ones llama.cpp uses by
/// default.
pub fn gpu_names() -> Vec<String> {
    let _ = init();
    // SAFETY: as in `devices`.
    unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| sys::ggml_backend_dev_get(i))
            .filter(|&d| {
                let t = sys::ggml_backend_dev_type(d);
                t == sys::GGML_BACKEND_DEVICE_TYPE_GPU || t == sys::GGML_BACKEND_DEVICE_TYPE_IGPU
            })
            .map(device_name)
            .collect()
    }
}

/// Name of a device taken from ggml's registry (only ever called with those).
fn device_name(d: sys::ggml_backend_dev_t) -> String {
    // SAFETY: registered devices have static NUL-terminated names.
    unsafe { CStr::from_ptr(sys::ggml_backend_dev_name(d)) }.to_string_lossy().into_owned()
}

/// The ggml device called `name` (case-insensitive), if this build and machine have it.
fn device_by_name(name: &str) -> Option<sys::ggml_backend_dev_t> {
    let _ = init();
    // SAFETY: as in `devices`.
    unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| sys::ggml_backend_dev_get(i))
            .find(|&d| device_name(d).eq_ignore_ascii_case(name))
    }
}

/// Names of the compiled-in ggml devices (e.g. "CPU", "CUDA0"), for profiles and `--verbose`.
pub fn devices() -> Vec<String> {
    let _ = init();
    // SAFETY: the device registry is initialised by llama_backend_init; indices are in range and
    // the returned names are static strings owned by ggml.
    unsafe { (0..sys::ggml_backend_dev_count()).map(|i| device_name(sys::ggml_backend_dev_get(i))).collect() }
}
