//! `exo pull`, `exo list`, `exo rm`, and model resolution for `exo run`/`exo plan`.

use super::progress::Bars;
use crate::placement::units::fmt_bytes;
use crate::store::{self, LocalModel, Resolved, Store};
use clap::Args;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct PullArgs {
    /// A catalog name (llama-3.1-8b, llama-3.1-70b:q8_0) or hf.co/ORG/REPO[:QUANT].
    pub model: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Also list catalog models that are not on this machine.
    #[arg(long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub model: String,
}

/// The model on this machine, downloading it first if needed (with progress bars).
pub async fn ensure_local(store: &Store, name: &str) -> anyhow::Result<LocalModel> {
    match store.resolve(name)? {
        Resolved::Local(m) => Ok(m),
        Resolved::Remote(_) => Ok(store.pull(name, Arc::new(Bars::new())).await?),
    }
}

pub fn pull(a: PullArgs) -> anyhow::Result<()> {
    let store = Store::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let m = rt.block_on(store.pull(&a.model, Arc::new(Bars::new())))?;
    outln!("{} ({}) is at {}", m.name, fmt_bytes(m.size), m.first().display());
    Ok(())
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    let store = Store::from_env();
    let local = store.local_models();
    outln!("{:<44} {:>10} {:<9} {:<14} PATH", "NAME", "SIZE", "QUANT", "WHERE");
    for m in &local {
        outln!(
            "{:<44} {:>10} {:<9} {:<14} {}",
            m.name,
            fmt_bytes(m.size),
            m.quant.as_deref().unwrap_or("-"),
            m.location.label(),
            m.first().display()
        );
    }
    // windows of models fetched for stages: never taken for the whole model
    for p in store.partials() {
        let c = &p.sidecar;
        let layers: Vec<String> = c.windows.iter().map(|(b, e)| format!("{b}..{e}")).collect();
        let layers = if layers.is_empty() { "none complete".to_string() } else { layers.join(",") };
        outln!(
            "{:<44} {:>10} {:<9} {:<14} {}",
            c.model,
            fmt_bytes(p.allocated()),
            "-",
            "partial",
            format!("layers {layers} of {} at {}", c.n_layer, p.path.display())
        );
    }
    if a.all {
        for c in store::catalog::cards() {
            for (q, qf) in &c.quant {
                let name = if *q == c.default_quant { c.name.clone() } else { format!("{}:{q}", c.name) };
                if local.iter().any(|m| m.name == name) {
                    continue;
                }
                let size = qf.size_gb.get().map(|g| fmt_bytes((g * 1e9) as u64)).unwrap_or_else(|| "unknown".into());
                outln!(
                    "{:<44} {:>10} {:<9} {:<14} {}",
                    name,
                    size,
                    q,
                    "catalog",
                    c.repo.get().map(String::as_str).unwrap_or("-")
                );
            }
        }
    }
    Ok(())
}

pub fn rm(a: RmArgs) -> anyhow::Result<()> {
    let m = Store::from_env().remove(&a.model)?;
    outln!("deleted {} ({})", m.name, fmt_bytes(m.size));
    Ok(())
}
