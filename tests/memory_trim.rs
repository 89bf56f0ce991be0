//! Memory is given back to the system once stages unload (glibc's `malloc_trim` after each stage
//! thread ends): load the real model as a stage with a context, decode, unload, three times; the
//! resident set must come back near where it started, not stay near its high-water mark.

mod common;

use exo::engine::{ContextParams, ModelWindow, StageHandle, StageSpec};
use std::time::Duration;

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[test]
fn rss_returns_near_its_start_after_stages_unload() {
    let Some(path) = common::real::model() else { return };
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let context = ContextParams { n_ctx: 1024, n_batch: 64, n_ubatch: 64, n_threads: 1, n_seq_max: 1, exact: false };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let load = || {
        let window = ModelWindow { use_mmap: false, ..ModelWindow::full(&path) };
        StageHandle::load(StageSpec { window, context }).unwrap()
    };
    // the first load also initializes the backend once: measure from after it
    drop(load());
    std::thread::sleep(Duration::from_millis(300));
    let start = rss();
    let mut peak = start;
    for _ in 0..3 {
        let s = load();
        let toks = rt.block_on(s.tokenize("Hello there, how are you today?", true, true)).unwrap();
        assert!(!toks.is_empty());
        peak = peak.max(rss());
        drop(s);
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = rss();
    println!("rss: {} MB at start, {} MB with a stage, {} MB after 3 unloads", start >> 20, peak >> 20, end >> 20);
    assert!(peak > start + (50 << 20), "a loaded stage holds its weights (use_mmap off)");
    assert!(end < start + (peak - start) / 4, "rss stayed near its high-water mark: {} MB", end >> 20);
}
