//! Where things live by default, from flags and environment variables (docs/configuration.md).

use std::path::PathBuf;

/// `EXO_MODELS_DIRS` (colon list, writable) or the platform default.
/// Where a node's HTTP API listens unless told otherwise (Ollama's port is 11434, exo's 52415).
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:52415";

/// The API address commands talk to: EXO_API_ADDR, or [`DEFAULT_API_ADDR`].
pub fn api_addr() -> String {
    std::env::var("EXO_API_ADDR").ok().filter(|a| !a.is_empty()).unwrap_or_else(|| DEFAULT_API_ADDR.into())
}

pub fn models_dirs() -> Vec<PathBuf> {
    match std::env::var_os("EXO_MODELS_DIRS") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v).collect(),
        _ => vec![default_models_dir()],
    }
}

/// `EXO_MODELS_READ_ONLY_DIRS` (colon list), never written.
pub fn read_only_models_dirs() -> Vec<PathBuf> {
    std::env::var_os("EXO_MODELS_READ_ONLY_DIRS").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default()
}

/// `EXO_LINK_TARGETS` (colon list): dirs besides the models dirs that a symlinked GGUF in a
/// models dir may point into.
pub fn link_targets() -> Vec<PathBuf> {
    std::env::var_os("EXO_LINK_TARGETS").map(|v| std::env::split_paths(&v).collect()).unwrap_or_default()
}

pub fn default_models_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    if cfg!(target_os = "macos") {
        home.join(".exo/models")
    } else {
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local/share"))
            .join("exo/models")
    }
}

/// Where exo caches what it measures (`$XDG_CACHE_HOME/exo`, default `~/.cache/exo`).
pub fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache")).join("exo")
}

/// Where exo keeps its cluster secret and this node's key: `EXO_CONFIG_DIR`, else `~/.exo` on
/// macOS, else `$XDG_CONFIG_HOME/exo` (default `~/.config/exo`).
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EXO_CONFIG_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    if cfg!(target_os = "macos") {
        home.join(".exo")
    } else {
        std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".config")).join("exo")
    }
}

/// A join token from `EXO_CLUSTER_TOKEN` (what `--join` also reads).
pub fn cluster_token() -> Option<String> {
    std::env::var("EXO_CLUSTER_TOKEN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}
