//! Memory is given back to the system once stages unload (glibc's `malloc_trim` after each stage
//! thread ends): load the real model as a stage with a context, decode, unload, three times; the
//! resident set must come back near where it started, and much nearer than with the trim turned
//! off (`EXO_MEMORY_TRIM=0`), measured in two child processes of this very test.

mod common;

use exo::engine::{Batch, BatchInput, ContextParams, ModelWindow, StageHandle, StageSpec};
use std::time::Duration;

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

/// Set in the child processes: run the cycles and print what they measured.
const CHILD: &str = "EXO_MEMORY_TRIM_CHILD";

#[test]
fn rss_returns_near_its_start_after_stages_unload() {
    let Some(path) = common::real::model() else { return };
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    if std::env::var_os(CHILD).is_some() {
        return cycles(&path);
    }
    let measure = |trim: &str| -> (u64, u64, u64) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "rss_returns_near_its_start_after_stages_unload", "--nocapture"])
            .env(CHILD, "1")
            .env("EXO_MEMORY_TRIM", trim)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
        let line = text.lines().find_map(|l| l.find("rss ").map(|i| &l[i + 4..])).unwrap_or_else(|| panic!("{text}"));
        let v: Vec<u64> = line.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2])
    };
    let (start, peak, end) = measure("1");
    let (start_off, _, end_off) = measure("0");
    let mb = |b: u64| b >> 20;
    println!(
        "rss: {} MB at start, {} MB with a stage, {} MB after 3 unloads; without the trim {} MB -> {} MB",
        mb(start),
        mb(peak),
        mb(end),
        mb(start_off),
        mb(end_off)
    );
    assert!(peak > start + (50 << 20), "a loaded stage holds its weights (use_mmap off)");
    let (kept, kept_off) = (end.saturating_sub(start), end_off.saturating_sub(start_off));
    assert!(end < start + (peak - start) / 4, "rss stayed near its high-water mark: {} MB", mb(end));
    // measured: 26 MB kept vs 50 MB without the trim
    assert!(
        kept * 4 < kept_off * 3,
        "the trim gives back memory: {} MB kept vs {} MB without it",
        mb(kept),
        mb(kept_off)
    );
}

/// Three load, decode, unload cycles of the real model; prints `rss START PEAK END` in bytes.
fn cycles(path: &std::path::Path) {
    let context = ContextParams { n_ctx: 1024, n_batch: 64, n_ubatch: 64, n_threads: 1, n_seq_max: 1, exact: false };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let load = || {
        let window = ModelWindow { use_mmap: false, ..ModelWindow::full(path) };
        StageHandle::load(StageSpec { window, context }).unwrap()
    };
    exo::engine::init().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = rss();
    let mut peak = start;
    for _ in 0..3 {
        let s = load();
        let toks = rt.block_on(s.tokenize("Hello there, how are you today? Tell me a story.", true, true)).unwrap();
        let n = toks.len();
        let batch = Batch {
            input: BatchInput::Tokens(toks),
            pos: (0..n as i32).collect(),
            seq: vec![0; n],
            output: (0..n).map(|i| i + 1 == n).collect(),
            spec: Default::default(),
        };
        rt.block_on(s.decode(batch, true, false)).unwrap();
        peak = peak.max(rss());
        drop(s);
        std::thread::sleep(Duration::from_millis(500));
    }
    // on a line of its own (the harness prints the test's name before it)
    println!("\nrss {start} {peak} {}", rss());
}
