//! `exo plan MODEL --cluster FILE`: a placement preview (docs/placement.md) for a described
//! cluster; without `--cluster`, for the live cluster of the running node (EXO_API_ADDR), whose
//! `GET /placements/preview` prices its own placement next to exo's split and one node, with the
//! bytes each stage must receive, from where, and how long that takes.

use super::client::Node;
use super::UsageError;
use crate::gguf::{ModelFiles, ModelShape};
use crate::placement::{self, units::fmt_bytes, Cluster, ModelCost, Options, PlacementError, Plan};
use crate::runtime::preview::{Preview, Stage};
use crate::store::{self, Resolved, Store};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// A .gguf path, or the name of a GGUF in the models dirs.
    pub model: String,
    /// Plan for a hypothetical cluster described in this TOML file.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// Context length the KV cache is sized for (default: 4096 with --cluster; the node's
    /// default context for the live cluster).
    #[arg(long)]
    pub ctx: Option<u32>,
    /// Prompt length for the time-to-first-token prediction.
    #[arg(long, default_value_t = 512)]
    pub prompt_len: u32,
    /// Check and price this placement instead of choosing one: NODE=0:40,NODE=40:80, or ranges
    /// assigned to nodes in file order.
    #[arg(long)]
    pub split: Option<String>,
    /// Nodes that must take part (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub require: Vec<String>,
    #[arg(long)]
    pub max_stages: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let Some(cluster_path) = &a.cluster else {
        return live(&a);
    };
    let text = std::fs::read_to_string(cluster_path).with_context(|| format!("reading {}", cluster_path.display()))?;
    let cluster =
        placement::parse_cluster(&text).map_err(|e| UsageError(format!("{}: {e}", cluster_path.display())))?;
    let model = match Store::from_env().resolve(&a.model)? {
        Resolved::Local(m) => {
            let shape = ModelShape::from_files(&ModelFiles::open(m.first())?)?;
            ModelCost::from_shape(&m.name, &shape)
        }
        Resolved::Remote(r) => {
            let (cname, quant) = r.name.split_once(':').map_or((r.name.as_str(), None), |(c, q)| (c, Some(q)));
            store::catalog::find(cname).and_then(|c| c.model_cost(quant)).ok_or_else(|| {
                anyhow::anyhow!("{} is not on this machine and its catalog card lacks the shape or size to plan with; `exo pull` it first", r.name)
            })?
        }
    };
    let opts = Options {
        ctx: a.ctx.unwrap_or(4096),
        prompt_len: a.prompt_len,
        required: a.require.clone(),
        max_stages: a.max_stages,
        ..Options::default()
    };
    let result = match &a.split {
        None => placement::place(&model, &cluster, &opts),
        Some(s) => {
            let forced = forced_stages(s, &model, &cluster)?;
            placement::evaluate(&model, &cluster, &opts, &forced)
        }
    };
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&json(&model, &result))?);
    } else {
        match &result {
            Ok(plan) => print_table(&model, &opts, plan),
            Err(_) => outln!(
                "{} ({} layers, {} of weights) does not fit.",
                model.name,
                model.n_layer,
                fmt_bytes(model.total_weight_bytes())
            ),
        }
    }
    result.map(|_| ()).map_err(anyhow::Error::from)
}

fn forced_stages(s: &str, m: &ModelCost, c: &Cluster) -> anyhow::Result<Vec<(String, u32, u32)>> {
    let stages = placement::parse_split(s, m.n_layer).map_err(|e| UsageError(format!("invalid --split: {e}")))?;
    if stages[0].node.is_none() && stages.len() > c.nodes.len() {
        return Err(UsageError(format!(
            "--split has {} ranges but the cluster has {} nodes",
            stages.len(),
            c.nodes.len()
        ))
        .into());
    }
    Ok(stages
        .iter()
        .enumerate()
        .map(|(i, st)| (st.node.clone().unwrap_or_else(|| c.nodes[i].name.clone()), st.range.begin, st.range.end))
        .collect())
}

fn json(m: &ModelCost, r: &Result<Plan, PlacementError>) -> serde_json::Value {
    match r {
        Ok(p) => serde_json::json!({
            "model": m.name,
            "fits": true,
            "stages": p.stages.iter().map(|s| serde_json::json!({
                "node": s.node, "begin": s.begin, "end": s.end,
                "weight_bytes": s.weight_bytes, "kv_bytes": s.kv_bytes, "memory_bytes": s.memory_bytes,
            })).collect::<Vec<_>>(),
            "predicted_decode_tokens_per_second": p.tokens_per_second,
            "predicted_ttft_seconds": p.ttft,
            "error": null,
        }),
        Err(e) => serde_json::json!({
            "model": m.name,
            "fits": false,
            "stages": [],
            "predicted_decode_tokens_per_second": null,
            "predicted_ttft_seconds": null,
            "error": e.to_string(),
        }),
    }
}

fn print_table(m: &ModelCost, o: &Options, p: &Plan) {
    outln!(
        "{}: {} layers, {} of weights; context {}, prompt {} tokens",
        m.name,
        m.n_layer,
        fmt_bytes(m.total_weight_bytes()),
        o.ctx,
        o.prompt_len
    );
    outln!();
    outln!(
        "{:<16} {:>9} {:>11} {:>10} {:>23} {:>11}",
        "NODE",
        "LAYERS",
        "WEIGHTS",
        "KV",
        "MEMORY USED/OFFERED",
        "TIME SHARE"
    );
    for s in &p.stages {
        outln!(
            "{:<16} {:>9} {:>11} {:>10} {:>23} {:>10.1}%",
            s.node,
            format!("{}:{}", s.begin, s.end),
            fmt_bytes(s.weight_bytes),
            fmt_bytes(s.kv_bytes),
            format!("{} / {}", fmt_bytes(s.memory_bytes), fmt_bytes(s.offered_bytes)),
            100.0 * s.time_per_token / p.time_per_token
        );
    }
    if p.stages.len() > 1 {
        outln!(
            "{:<16} {:>9} {:>11} {:>10} {:>23} {:>10.1}%",
            "(network)",
            "",
            "",
            "",
            "",
            100.0 * p.network_time_per_token / p.time_per_token
        );
    }
    outln!();
    outln!(
        "predicted decode: {:.2} tokens/s ({:.1} ms/token); time to first token for {} prompt tokens: {:.2} s",
        p.tokens_per_second,
        p.time_per_token * 1e3,
        o.prompt_len,
        p.ttft
    );
}

/// The running node's preview of MODEL (a name, or a file by its model name), printed.
fn live(a: &PlanArgs) -> anyhow::Result<()> {
    if a.split.is_some() || !a.require.is_empty() || a.max_stages.is_some() {
        return Err(UsageError(
            "--split, --require and --max-stages need --cluster FILE.toml; for the live cluster exo plan shows the candidates"
                .into(),
        )
        .into());
    }
    let addr = crate::config::api_addr();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let v: Preview = rt.block_on(async {
        let base = super::remote::running_node(&addr).await.ok_or_else(|| {
            anyhow::anyhow!(
                "no exo node is running at {addr}: start one with `exo serve`, or plan for a described cluster with --cluster FILE.toml"
            )
        })?;
        let name = super::remote::name_for_node(&a.model);
        Ok::<_, anyhow::Error>(Node::new(&base)?.preview(&name, a.ctx).await?)
    })?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_candidates(&v);
    }
    match v.candidates.first() {
        Some(c) if c.fits => Ok(()),
        Some(c) => Err(anyhow::anyhow!("{}", c.error.as_deref().unwrap_or("it does not fit"))),
        None => Err(anyhow::anyhow!("the node sent no candidates")),
    }
}

fn print_candidates(v: &Preview) {
    outln!(
        "{}: {} layers, {} of weights{}; context {} x {} sequences; nodes: {}",
        v.model,
        v.n_layer,
        fmt_bytes(v.weight_bytes),
        if v.local { "" } else { " (not on the node yet)" },
        v.context_per_sequence,
        v.sequences,
        v.nodes.join(", ")
    );
    for c in &v.candidates {
        outln!();
        let name = &c.strategy;
        if !c.fits {
            outln!("{name}: does not fit: {}", c.error.as_deref().unwrap_or("?"));
            continue;
        }
        outln!(
            "{name}: {:.2} tokens/s predicted, time to first token {:.2} s ({})",
            c.predicted_decode_tokens_per_second.unwrap_or(0.0),
            c.predicted_ttft_seconds.unwrap_or(0.0),
            c.description
        );
        outln!(
            "  {:<16} {:>9} {:>11} {:>10} {:>23} {:>11}  {}",
            "NODE",
            "LAYERS",
            "WEIGHTS",
            "KV",
            "MEMORY USED/OFFERED",
            "TIME SHARE",
            "TO MOVE"
        );
        for s in &c.stages {
            outln!(
                "  {:<16} {:>9} {:>11} {:>10} {:>23} {:>10.1}%  {}",
                s.node,
                format!("{}:{}", s.begin, s.end),
                fmt_bytes(s.weight_bytes),
                fmt_bytes(s.kv_bytes),
                format!("{} / {}", fmt_bytes(s.memory_bytes), fmt_bytes(s.offered_bytes)),
                100.0 * s.time_share,
                to_move(s)
            );
        }
        match c.move_bytes {
            Some(0) | None => outln!("  moves nothing: every stage's node holds its layers"),
            Some(b) => outln!(
                "  moves {} before loading, about {} (the stages fetch in parallel)",
                fmt_bytes(b),
                fmt_secs(c.move_seconds.unwrap_or(0.0))
            ),
        }
    }
}

/// A stage's transfer: "-" when its node holds its layers, else bytes, source and time.
fn to_move(s: &Stage) -> String {
    match s.move_bytes {
        0 => "-".into(),
        b => format!("{} from {} in {}", fmt_bytes(b), s.move_from.as_deref().unwrap_or("?"), fmt_secs(s.move_seconds)),
    }
}

/// Seconds for people: "0.42 s", "38 s", "12 min", "1.5 h".
fn fmt_secs(t: f64) -> String {
    if !t.is_finite() {
        "?".into()
    } else if t < 10.0 {
        format!("{t:.2} s")
    } else if t < 120.0 {
        format!("{t:.0} s")
    } else if t < 7200.0 {
        format!("{:.0} min", t / 60.0)
    } else {
        format!("{:.1} h", t / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_read_for_people() {
        assert_eq!(fmt_secs(0.4213), "0.42 s");
        assert_eq!(fmt_secs(38.2), "38 s");
        assert_eq!(fmt_secs(720.0), "12 min");
        assert_eq!(fmt_secs(5400.0 * 2.0), "3.0 h");
        let stage = |move_bytes, move_from: Option<&str>| Stage {
            node: "b".into(),
            begin: 0,
            end: 4,
            weight_bytes: 0,
            kv_bytes: 0,
            memory_bytes: 0,
            offered_bytes: 0,
            time_share: 1.0,
            move_bytes,
            move_from: move_from.map(str::to_string),
            move_seconds: 0.5,
        };
        assert_eq!(to_move(&stage(3 << 20, Some("a"))), "3.0 MiB from a in 0.50 s");
        assert_eq!(to_move(&stage(0, None)), "-");
    }
}
