//! `exo bench MODEL`: llama-bench-style pp/tg tests on this machine (in-process stages with an
//! unnamed `--split`) or across the cluster through the running node (`POST /bench`).

use super::client::Node;
use super::UsageError;
use crate::api::cluster_view::BenchRequest;
use crate::engine::ContextParams;
use crate::pipeline::{run_bench, BenchConfig, BenchReport, Chain};
use anyhow::Context;
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A .gguf path, the name of a GGUF in the models dirs, or a catalog name (pulled if missing).
    pub model: String,
    /// Prompt lengths, one prompt-processing test each (comma-separated; "" for none).
    #[arg(long, env = "EXO_BENCH_PP", default_value = "128,512")]
    pub pp: String,
    /// Tokens to generate in the generation test (0: none).
    #[arg(long, env = "EXO_BENCH_TG", default_value_t = 128)]
    pub tg: u32,
    /// Timed runs per test (after one warm-up run); medians are reported.
    #[arg(long, env = "EXO_BENCH_REPEAT", default_value_t = 3)]
    pub repeat: u32,
    /// Force a placement: ranges run as in-process stages (0:11,11:22); node=range pairs place
    /// the model across the cluster through the running node (a=0:11,b=11:22).
    #[arg(long, env = "EXO_SPLIT")]
    pub split: Option<String>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Run in this process even when a node is running.
    #[arg(long)]
    pub local: bool,
    /// CPU threads per in-process stage (default: all available cores).
    #[arg(long, env = "EXO_THREADS")]
    pub threads: Option<i32>,
    /// Batch-invariant kernels (as `exo serve --exact`); without it llama.cpp's fastest kernels.
    /// In this process only (a node benchmarks with its own setting).
    #[arg(long, env = "EXO_EXACT", value_parser = clap::builder::BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub exact: bool,
    /// Tokens per decode call (n_batch = n_ubatch): the chunks a prompt is cut into, which the
    /// stages of a pipeline work on side by side. Applies in-process and with a named --split.
    #[arg(long, env = "EXO_BATCH_SIZE", default_value_t = 512)]
    pub batch_size: u32,
    /// tg tests with speculative decoding: `ngram` proposes up to 8 tokens per step from the text
    /// so far and reports the share taken and tokens per step; `none` (default): one token per
    /// step, as llama-bench.
    #[arg(long, default_value = "none", value_parser = ["none", "ngram"])]
    pub draft: String,
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let pp: Vec<u32> =
        a.pp.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().map_err(|_| UsageError(format!("--pp: {s:?} is not a token count"))))
            .collect::<Result<_, _>>()?;
    let draft_window = if a.draft == "ngram" { crate::runtime::speculate::MAX_WINDOW as u32 } else { 0 };
    let cfg = BenchConfig { pp, tg: a.tg, repeat: a.repeat, draft_window };
    cfg.validate().map_err(|e| UsageError(e.to_string()))?;
    if a.batch_size == 0 {
        return Err(UsageError("--batch-size must be positive".into()).into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let named = a.split.as_deref().is_some_and(|s| s.contains('='));
    let api_addr = crate::config::api_addr();
    let node = if a.local || (a.split.is_some() && !named) {
        None
    } else {
        rt.block_on(super::remote::running_node(&api_addr))
    };
    let report = match node {
        Some(base) => rt.block_on(remote(&a, &cfg, &base))?,
        None if named => {
            return Err(UsageError(format!(
                "--split with node names needs a running node to place the model across the cluster; none answers at {api_addr} (start `exo serve`)"
            ))
            .into())
        }
        None => local(&a, &cfg, &rt)?,
    };
    if let Some(path) = &a.json_out {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn local(a: &BenchArgs, cfg: &BenchConfig, rt: &tokio::runtime::Runtime) -> anyhow::Result<BenchReport> {
    let (model, _, forced) = rt.block_on(super::run::local_model(&a.model, a.split.as_deref()))?;
    let ranges = match forced {
        None => None,
        Some(crate::runtime::Forced::Local(r)) => Some(r),
        Some(crate::runtime::Forced::Nodes(_)) => {
            return Err(super::UsageError("--split with node names needs a running node (exo serve)".into()).into())
        }
    };
    let path = model.first().to_path_buf();
    let n_ctx = cfg.n_ctx_needed().next_multiple_of(256);
    let mut context = ContextParams {
        n_ctx,
        n_batch: a.batch_size,
        n_ubatch: a.batch_size,
        n_seq_max: 1,
        exact: a.exact,
        ..Default::default()
    };
    if let Some(t) = a.threads {
        context.n_threads = t;
    }
    let chain =
        Chain::load(&path, ranges.as_deref(), context, true).with_context(|| format!("loading {}", path.display()))?;
    let name = model.name.clone();
    let progress = progress_printer();
    Ok(rt.block_on(run_bench(&chain, &name, 0, cfg, progress))?)
}

async fn remote(a: &BenchArgs, cfg: &BenchConfig, base: &str) -> anyhow::Result<BenchReport> {
    let placement = a.split.as_deref().map(super::remote::named_split_arg).transpose()?;
    if a.threads.is_some() {
        eprintln!("note: --threads applies to in-process runs; the nodes use their own thread counts");
    }
    eprintln!("benchmarking {} through the node at {base} (this takes a while)", a.model);
    let req = BenchRequest {
        model: super::remote::name_for_node(&a.model),
        placement,
        batch_size: Some(a.batch_size),
        config: cfg.clone(),
    };
    Ok(Node::new(base)?.bench(&req).await?)
}

/// Progress lines on stderr when it is a terminal (the report itself goes to stdout).
fn progress_printer() -> impl FnMut(&str) {
    let tty = std::io::stderr().is_terminal();
    move |step: &str| {
        if tty {
            eprint!("\r\x1b[2K{step}");
            if step.is_empty() {
                eprintln!();
            }
        }
    }
}

fn print_report(r: &BenchReport) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
    let placement: Vec<String> =
        r.stages.iter().map(|s| format!("{}={} ({} threads)", s.node, s.range, s.n_threads)).collect();
    outln!(
        "model {}: {} layers, n_embd {}, batch {}, {} runs per test",
        r.model,
        r.n_layer,
        r.n_embd,
        r.n_batch,
        r.repeat
    );
    outln!("placement: {}", placement.join(", "));
    outln!();
    let stage_cols: Vec<String> = (0..r.stages.len()).map(|i| format!("stage {i} ms/tok")).collect();
    outln!("| test | tok/s | TTFT ms | {} | net bytes/tok |", stage_cols.join(" | "));
    outln!("|---|---:|---:|{}---:|", "---:|".repeat(stage_cols.len()));
    for t in &r.tests {
        let tokens = (t.n_prompt + t.n_gen).max(1) as f64;
        let rates: Vec<f64> = t.runs.iter().map(|x| x.tokens_per_s).collect();
        let stages: Vec<String> = t.stage_compute_ms.iter().map(|ms| format!("{:.3}", ms / tokens)).collect();
        outln!(
            "| {} | {:.2} ± {:.2} | {:.1} | {} | {:.0} |",
            t.name,
            t.tokens_per_s,
            stddev(&rates),
            t.ttft_ms,
            stages.join(" | "),
            t.transfer_bytes_per_token
        );
    }
    for (t, s) in r.tests.iter().filter_map(|t| t.speculation.as_ref().map(|s| (t, s))) {
        let share = s.acceptance.map_or("-".to_string(), |a| format!("{:.0}%", a * 100.0));
        outln!();
        outln!(
            "{}: ngram speculation, {} of {} proposed tokens taken, {:.2} tokens per decode step ({} verify steps)",
            t.name,
            share,
            s.proposed,
            s.tokens_per_step,
            s.windows
        );
    }
    outln!();
    outln!("| node | peak memory |");
    outln!("|---|---:|");
    for n in &r.nodes {
        let mem = n.peak_rss_bytes.map_or("unknown".to_string(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
        outln!("| {} | {} |", n.node, mem);
    }
}

fn stddev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}
