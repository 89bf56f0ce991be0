//! `exo ps`: the running node's loaded models, like `ollama ps`, with where their layers run.

use super::client::Node;

pub async fn ps(addr: &str) -> anyhow::Result<()> {
    let base = super::remote::running_node(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("no exo node is running at {addr} (start one with `exo serve`)"))?;
    let v = Node::new(&base)?.cluster().await?;
    outln!("{:<28} {:>10} {:>8} {:<40} {:<18} {}", "NAME", "SIZE", "CONTEXT", "STAGES", "UNTIL", "DRAFT");
    for i in &v.instances {
        let until = match i.expires_in_seconds {
            None => "Forever".to_string(),
            Some(s) => format!("{} from now", human(s)),
        };
        // speculative decoding: the proposer and the share of its proposals taken
        let sp = &i.speculation;
        let draft = match sp.acceptance {
            _ if sp.draft.is_empty() || sp.draft == "none" => "-".to_string(),
            Some(a) => format!("{} ({:.0}% accepted)", sp.draft, a * 100.0),
            None => sp.draft.clone(),
        };
        outln!(
            "{:<28} {:>10} {:>8} {:<40} {:<18} {}",
            i.model,
            crate::placement::units::fmt_bytes(i.size),
            i.context_length.to_string(),
            i.stages_text(","),
            until,
            draft
        );
    }
    // stages this node runs for other nodes' instances
    let here = v.here().map(|n| n.name.as_str());
    for h in v.hosted_stages.iter().filter(|h| Some(h.coordinator.as_str()) != here) {
        outln!(
            "{:<28} {:>10} {:>8} {:<40} {:<18}",
            h.model,
            "-",
            "-",
            format!("{}:{} for {}", h.begin, h.end, h.coordinator),
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
