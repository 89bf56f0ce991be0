//! exo-rs: run GGUF models too big for one machine across several, with llama.cpp doing the math.
//!
//! Modules own one thing each: `engine` (the only FFI), `gguf` (headers), `synth` (generated test
//! models), `placement` (pure layer assignment), `pipeline` (driving stages), `store` (finding
//! models), `config` (defaults from the environment) and `cli`.

pub mod api;
pub mod chat;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod gguf;
pub mod metrics;
pub mod node;
pub mod pipeline;
pub mod placement;
pub mod profile;
pub mod runtime;
pub mod secret;
pub mod store;
pub mod synth;
pub mod transport;
