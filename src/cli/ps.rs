//! `exo ps`: the running node's loaded models, like `ollama ps`, with where their layers run.

use serde_json::Value;

pub async fn ps(addr: &str) -> anyhow::Result<()> {
    let base = super::remote::running_node(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("no exo node is running at {addr} (start one with `exo serve`)"))?;
    let r = super::http().build()?.get(format!("{base}/cluster")).send().await?;
    if !r.status().is_success() {
        return Err(super::remote::error_of(r).await);
    }
    let v: Value = r.json().await?;
    outln!("{:<28} {:>10} {:>8} {:<40} {:<18}", "NAME", "SIZE", "CONTEXT", "STAGES", "UNTIL");
    for i in v["instances"].as_array().cloned().unwrap_or_default() {
        let until = match i["expires_in_seconds"].as_u64() {
            None => "Forever".to_string(),
            Some(s) => format!("{} from now", human(s)),
        };
        outln!(
            "{:<28} {:>10} {:>8} {:<40} {:<18}",
            i["model"].as_str().unwrap_or("?"),
            crate::placement::units::fmt_bytes(i["size"].as_u64().unwrap_or(0)),
            i["context_length"].to_string(),
            super::remote::stages_text(&i, ","),
            until
        );
    }
    // stages this node runs for other nodes' instances
    for h in v["hosted_stages"].as_array().cloned().unwrap_or_default() {
        if h["coordinator"] == v["nodes"][0]["name"] {
            continue; // listed above as this node's own instance
        }
        outln!(
            "{:<28} {:>10} {:>8} {:<40} {:<18}",
            h["model"].as_str().unwrap_or("?"),
            "-",
            "-",
            format!("{}:{} for {}", h["begin"], h["end"], h["coordinator"].as_str().unwrap_or("?")),
            "with its coordinator"
        );
    }
    Ok(())
}

fn human(s: u64) -> String {
    match s {
        0..=1 => "1 second".into(),
        2..=89 => format!("{s} seconds"),
        90..=5399 => format!("{} minutes", (s + 30) / 60),
        _ => format!("{} hours", (s + 1800) / 3600),
    }
}
