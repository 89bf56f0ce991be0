//! The decode-speed probe is not poisoned by a run under load: a figure measured while other
//! work keeps the cores busy is used but not cached, so the next start measures again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[test]
fn a_probe_under_load_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // other work on every core while the probe runs
    let spinners: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    let p = exo::profile::measure_decode_gbps(dir.path(), 1).unwrap();
    stop.store(true, Ordering::Relaxed);
    spinners.into_iter().for_each(|t| t.join().unwrap());
    assert!(p.gbps > 0.0);
    assert!(!p.cached, "a probe measured under load was kept: {p:?}");
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("decode-probe-v"))
        .collect();
    assert!(cached.is_empty(), "a disturbed figure was written to the cache");
}
