//! What this node offers: memory (sysinfo), backend and devices (ggml's list), threads, and a
//! *measured* decode speed: a short decode on a generated model larger than the CPU caches,
//! reported as GB of weights processed per second. The only user of sysinfo.

use crate::engine::{self, ContextParams, ModelWindow, StageHandle, StageSpec};
use crate::synth;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Instant;

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

/// GB/s of weights one decode step gets through, measured on a generated 8-layer model with
/// TinyLlama's layer shape (Q8_0, ~370 MB: past the CPU caches). The model file and the result
/// are cached in `cache_dir` (by exo version).
pub fn measure_decode_gbps(cache_dir: &Path, threads: i32) -> Result<f64, String> {
    let key = format!("v{}-{threads}t", env!("CARGO_PKG_VERSION"));
    let result = cache_dir.join(format!("decode-probe-{key}.txt"));
    if let Some(v) = std::fs::read_to_string(&result).ok().and_then(|s| s.trim().parse::<f64>().ok()) {
        return Ok(v);
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| e.to_string())?;
    let spec = synth::ModelSpec { n_layer: 8, ..synth::preset("tinyllama-1b").ok_or("no probe preset")? };
    let path = cache_dir.join("decode-probe.gguf");
    if !path.exists() {
        synth::make_model(&spec, &path).map_err(|e| e.to_string())?;
    }
    let stage = StageHandle::load(StageSpec {
        window: ModelWindow::full(&path),
        context: ContextParams { n_ctx: 256, n_batch: 32, n_ubatch: 32, n_threads: threads, n_seq_max: 1 },
    })
    .map_err(|e| e.to_string())?;
    let bytes: u64 = stage.info().shape.layer_bytes.iter().sum();
    let rt = tokio::runtime::Builder::new_current_thread().build().map_err(|e| e.to_string())?;
    let secs = rt.block_on(async {
        use crate::engine::{Batch, BatchInput};
        let step =
            |pos: i32| Batch { input: BatchInput::Tokens(vec![1]), pos: vec![pos], seq: vec![0], output: vec![true] };
        stage.decode(step(0), false, false).await.map_err(|e| e.to_string())?; // pages in the weights
        let t = Instant::now();
        for p in 1..9 {
            stage.decode(step(p), false, false).await.map_err(|e| e.to_string())?;
        }
        Ok::<f64, String>(t.elapsed().as_secs_f64() / 8.0)
    })?;
    let gbps = bytes as f64 / secs / 1e9;
    let _ = std::fs::write(&result, format!("{gbps}\n"));
    Ok(gbps)
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
