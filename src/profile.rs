//! What this node offers: memory (sysinfo), backend and devices (ggml's list), threads, and a
//! *measured* decode speed: a short decode on a generated model larger than the CPU caches,
//! reported as GB of weights processed per second. The only user of sysinfo.

use crate::engine::{self, ContextParams, EngineError, ModelWindow, StageHandle, StageSpec};
use crate::synth;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Why the decode-speed probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot create the probe cache {path}: {source}")]
    CacheDir { path: PathBuf, source: std::io::Error },
    #[error("no probe preset {name:?}")]
    NoPreset { name: &'static str },
    #[error("cannot write the probe model {path}: {source}")]
    Model { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot start the probe's runtime: {0}")]
    Runtime(std::io::Error),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub memory_total: u64,
    pub memory_available: u64,
    /// What this node offers to the cluster (`--memory-limit`, else what is available).
    pub memory_offered: u64,
    /// cpu, cuda, metal or vulkan.
    pub backend: String,
    pub devices: Vec<String>,
    pub threads: usize,
    /// Measured; None until the probe has run.
    pub decode_gbps: Option<f64>,
}

/// Memory, backend and devices now.
pub fn snapshot(memory_limit: Option<u64>, decode_gbps: Option<f64>) -> Profile {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let devices = engine::devices();
    let backend = if devices.iter().any(|d| d.starts_with("CUDA")) {
        "cuda"
    } else if devices.iter().any(|d| d.starts_with("Metal") || d.starts_with("MTL")) {
        "metal"
    } else if devices.iter().any(|d| d.starts_with("Vulkan")) {
        "vulkan"
    } else {
        "cpu"
    };
    let available = sys.available_memory();
    Profile {
        memory_total: sys.total_memory(),
        memory_available: available,
        memory_offered: memory_limit.map_or(available, |l| l.min(available)),
        backend: backend.into(),
        devices,
        threads: sysinfo::System::physical_core_count().unwrap_or(1),
        decode_gbps,
    }
}

/// A decode-speed measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    pub gbps: f64,
    /// Written to the cache: measured on a quiet machine with consistent rounds. A provisional
    /// figure is used for now and measured again later.
    pub cached: bool,
}

/// Timed rounds of the probe; the best one counts (a burst of other work slows some rounds,
/// never speeds one up).
const ROUNDS: usize = 5;
const STEPS_PER_ROUND: i32 = 8;
/// A cached figure older than this is measured again.
const STALE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);
/// Other processes using more than this many cores during the probe make it provisional.
const BUSY_CORES: f64 = 0.5;
/// Below this no machine that runs exo decodes; such a figure is a disturbed measurement.
const IMPLAUSIBLE_GBPS: f64 = 0.2;

/// GB/s of weights one decode step gets through, measured on a generated 8-layer model with
/// TinyLlama's layer shape (Q8_0, ~370 MB: past the CPU caches): the best of several rounds.
/// The model file and a trustworthy result are cached in `cache_dir` (by exo version and thread
/// count); a stale, implausible or disturbed figure is measured again.
pub fn measure_decode_gbps(cache_dir: &Path, threads: i32) -> Result<Probe, ProbeError> {
    let key = format!("v{}-{threads}t", env!("CARGO_PKG_VERSION"));
    let result = cache_dir.join(format!("decode-probe-{key}.txt"));
    if let Some(g) = read_cached(&result) {
        return Ok(Probe { gbps: g, cached: true });
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|source| ProbeError::CacheDir { path: cache_dir.to_path_buf(), source })?;
    const PRESET: &str = "tinyllama-1b";
    let spec = synth::ModelSpec { n_layer: 8, ..synth::preset(PRESET).ok_or(ProbeError::NoPreset { name: PRESET })? };
    let path = cache_dir.join("decode-probe.gguf");
    if !path.exists() {
        synth::make_model(&spec, &path).map_err(|source| ProbeError::Model { path: path.clone(), source })?;
    }
    let stage = StageHandle::load(StageSpec {
        window: ModelWindow::full(&path),
        context: ContextParams {
            n_ctx: 256,
            n_batch: 32,
            n_ubatch: 32,
            n_threads: threads,
            n_seq_max: 1,
            exact: false,
        },
    })?;
    let bytes: u64 = stage.info().shape.layer_bytes.iter().sum();
    let others = OtherLoad::start();
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(ProbeError::Runtime)?;
    let rounds = rt.block_on(async {
        use crate::engine::{Batch, BatchInput};
        let step = |pos: i32| Batch {
            input: BatchInput::Tokens(vec![1]),
            pos: vec![pos],
            seq: vec![0],
            output: vec![true],
            spec: Default::default(),
        };
        stage.decode(step(0), false, false).await?; // pages in the weights
        let mut secs = Vec::with_capacity(ROUNDS);
        let mut pos = 1;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..STEPS_PER_ROUND {
                stage.decode(step(pos), false, false).await?;
                pos += 1;
            }
            secs.push(t.elapsed().as_secs_f64() / STEPS_PER_ROUND as f64);
        }
        Ok::<Vec<f64>, EngineError>(secs)
    })?;
    let busy = others.cores();
    let gbps: Vec<f64> = rounds.iter().map(|s| bytes as f64 / s / 1e9).collect();
    let best = gbps.iter().cloned().fold(0.0, f64::max);
    let trustworthy = trustworthy(&gbps, busy);
    if trustworthy {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let _ = std::fs::write(&result, format!("{best} {now}\n"));
    } else {
        tracing::info!(best, busy_cores = busy, "decode probe disturbed: using it for now, measuring again later");
    }
    Ok(Probe { gbps: best, cached: trustworthy })
}

/// A probe is kept when the machine was quiet, the figure plausible and the rounds agree.
fn trustworthy(gbps: &[f64], other_cores: f64) -> bool {
    let best = gbps.iter().cloned().fold(0.0, f64::max);
    let mut sorted = gbps.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    other_cores <= BUSY_CORES && best >= IMPLAUSIBLE_GBPS && median >= 0.7 * best
}

fn read_cached(p: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(p).ok()?;
    let mut it = text.split_whitespace();
    let g: f64 = it.next()?.parse().ok()?;
    let at: u64 = it.next()?.parse().ok()?;
    let age = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs().saturating_sub(at);
    (g.is_finite() && g >= IMPLAUSIBLE_GBPS && age < STALE.as_secs()).then_some(g)
}

/// CPU time other processes use while the probe runs.
struct OtherLoad {
    sys: sysinfo::System,
    t: Instant,
    own: Option<f64>,
}

impl OtherLoad {
    fn start() -> OtherLoad {
        let mut sys = sysinfo::System::new();
        sys.refresh_cpu_usage();
        OtherLoad { sys, t: Instant::now(), own: own_cpu_secs() }
    }

    /// Cores busy with other work since `start`, on average.
    fn cores(mut self) -> f64 {
        self.sys.refresh_cpu_usage();
        let wall = self.t.elapsed().as_secs_f64().max(1e-3);
        let n = self.sys.cpus().len().max(1) as f64;
        let all = self.sys.global_cpu_usage() as f64 / 100.0 * n;
        let own = match (self.own, own_cpu_secs()) {
            (Some(a), Some(b)) => (b - a) / wall,
            _ => 0.0,
        };
        (all - own).max(0.0)
    }
}

/// CPU seconds this process has used (user + system), where the platform tells.
fn own_cpu_secs() -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // fields after the parenthesised command name; utime and stime are the 12th and 13th
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The node's decode speed: the probe, raised by what its stages have recently achieved (a
/// probe disturbed by other work reads low; real decodes show what the machine does).
pub fn refined_decode_gbps(probe: Option<f64>) -> Option<f64> {
    let observed = crate::engine::observed_decode_gbps();
    match (probe, observed) {
        (Some(p), Some(o)) => Some(p.max(o)),
        (p, o) => p.or(o),
    }
}

#[cfg(test)]
mod probe_tests {
    use super::*;

    #[test]
    fn disturbed_or_implausible_probes_are_not_kept() {
        assert!(trustworthy(&[10.0, 10.5, 9.8, 10.2, 10.1], 0.1));
        assert!(!trustworthy(&[10.0, 10.5, 9.8, 10.2, 10.1], 1.5), "busy machine");
        assert!(!trustworthy(&[0.57, 16.0, 0.6, 0.58, 0.61], 0.0), "rounds disagree");
        assert!(!trustworthy(&[0.05, 0.05, 0.05, 0.05, 0.05], 0.0), "implausible");
    }

    #[test]
    fn cached_figures_go_stale() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("probe.txt");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        std::fs::write(&p, format!("12.5 {now}\n")).unwrap();
        assert_eq!(read_cached(&p), Some(12.5));
        std::fs::write(&p, format!("12.5 {}\n", now - 8 * 86_400)).unwrap();
        assert_eq!(read_cached(&p), None);
        std::fs::write(&p, "0.57\n").unwrap(); // the old format, without a time: measured again
        assert_eq!(read_cached(&p), None);
    }

    #[test]
    fn real_decodes_raise_a_low_probe() {
        crate::engine::observe_decode(2_000_000_000, 0.1); // 20 GB/s
        assert_eq!(refined_decode_gbps(Some(0.57)), Some(20.0));
        assert_eq!(refined_decode_gbps(Some(50.0)), Some(50.0));
        crate::engine::observe_decode(1000, 1.0); // too small to count
        assert_eq!(refined_decode_gbps(None), Some(20.0));
    }
}

/// The most resident memory this process has held (bytes): the high-water mark of mapped model
/// pages, KV cache and buffers together. `None` where the platform does not tell.
pub fn peak_rss_bytes() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        parse_vm_hwm(&status)
    }
    #[cfg(not(target_os = "linux"))]
    {
        use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
        // sysinfo reports current, not peak, memory elsewhere: the best it offers
        let pid = sysinfo::get_current_pid().ok()?;
        let mut sys = System::new();
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[pid]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        sys.process(pid).map(|p| p.memory())
    }
}

#[cfg(any(target_os = "linux", test))]
fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod peak_tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark() {
        let status = "Name:\texo\nVmPeak:\t  200 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(1234 * 1024));
        assert_eq!(parse_vm_hwm("Name:\texo\n"), None);
        #[cfg(target_os = "linux")]
        assert!(peak_rss_bytes().unwrap() > 1 << 20);
    }
}
