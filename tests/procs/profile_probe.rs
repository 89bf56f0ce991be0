//! The decode-speed probe is not poisoned by a run under load: a figure measured while other
//! work keeps the cores busy is used but not cached, so the next start measures again.

#[test]
fn a_probe_under_load_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    // other processes keep every core busy while the probe runs (the probe counts its own
    // process's CPU time as its own, so the load must come from elsewhere, as it does on a
    // real machine)
    let n = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut spinners: Vec<_> = (0..n)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let p = exo::profile::measure_decode_gbps(dir.path(), 1);
    for s in &mut spinners {
        let _ = s.kill();
        let _ = s.wait();
    }
    let p = p.unwrap();
    assert!(p.gbps > 0.0);
    assert!(!p.cached, "a probe measured under load was kept: {p:?}");
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("decode-probe-v"))
        .collect();
    assert!(cached.is_empty(), "a disturbed figure was written to the cache");
}
