//! In-process tier: nodes, runtimes and routers inside the test process (generated models, and
//! the real ones when EXO_TEST_REAL_MODEL / EXO_TEST_SWA_MODEL are set). One binary: one link.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod api_access;
mod api_chat;
mod api_hardening;
mod api_load;
mod chat_templates;
mod cluster;
mod cluster_security;
mod embeddings;
mod engine_errors;
mod equivalence;
mod exact;
mod fuzz_regressions;
mod hostile_corpus;
mod module_graph;
mod placement;
mod real_cluster;
mod real_model;
mod runtime;
mod speculation;
mod store;
mod window_io;
