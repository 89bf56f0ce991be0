//! Decode speeds this process's stages achieved on real work (single-token decodes on the CPU),
//! the best per recent window: `profile` refines the node's measured figure with them (the
//! engine records, so that it never reaches up into `profile`).

use std::time::Instant;

/// Decode speeds this process's stages achieved on real work (single-token decodes on the CPU),
/// the best per recent window: the node's figure is refined with them.
static OBSERVED: std::sync::Mutex<Option<(f64, Instant)>> = std::sync::Mutex::new(None);
/// How long an observation counts.
const OBSERVED_FOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Records that a stage streamed `bytes` of weights for one token in `secs`.
pub fn observe_decode(bytes: u64, secs: f64) {
    if secs <= 0.0 || bytes < (1 << 20) {
        return; // too small to say anything about memory bandwidth
    }
    let g = bytes as f64 / secs / 1e9;
    let mut o = OBSERVED.lock().unwrap();
    let keep = o.is_some_and(|(best, at)| at.elapsed() < OBSERVED_FOR && best >= g);
    if !keep {
        *o = Some((g, Instant::now()));
    }
}

/// The best decode speed (GB/s of weights streamed) observed within the window, if any.
pub fn observed_decode_gbps() -> Option<f64> {
    OBSERVED.lock().unwrap().filter(|(_, at)| at.elapsed() < OBSERVED_FOR).map(|(g, _)| g)
}
