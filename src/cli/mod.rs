//! The `exo` command line (README.md, CLI). The only place that prints to stdout/stderr directly.

/// `println!` that ends the program quietly when stdout is a closed pipe (`exo list | head`).
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod bench;
mod chat;
pub mod client;
mod dev;
mod models;
mod peer_args;
mod plan;
mod progress;
mod ps;
mod remote;
mod run;
mod run_args;
mod scenarios;
mod serve;
mod window_bars;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "exo",
    version,
    about = "Run GGUF models too big for one machine across several",
    arg_required_else_help = true
)]
pub struct Cli {
    /// More log output (-v debug, -vv trace); EXO_LOG takes a tracing filter instead.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose_log: u8,
    /// Without a command: `exo serve` (these are its flags).
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: serve::ServeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node: the HTTP API (Ollama, OpenAI, Anthropic) with models loaded on demand.
    Serve(serve::ServeArgs),
    /// Run a model: answer PROMPT, or chat interactively when there is none.
    Run(run::RunArgs),
    /// Download a model (resumable, verified).
    Pull(models::PullArgs),
    /// Models on this machine (--all adds the catalog).
    List(models::ListArgs),
    /// Delete a model from a writable models dir.
    Rm(models::RmArgs),
    /// The cluster as the local node sees it: nodes, measured speeds and links, instances;
    /// `exo cluster token` prints the token other nodes join with.
    Cluster {
        #[command(subcommand)]
        what: Option<ClusterCommand>,
        #[arg(long, env = "EXO_API_ADDR", default_value = crate::config::DEFAULT_API_ADDR)]
        api_addr: String,
    },
    /// Preview a placement: which node runs which layers, memory and predicted speed (for the
    /// running node's cluster, or a described one with --cluster).
    Plan(plan::PlanArgs),
    /// Models the running node has loaded: size, context, which node runs which layers, and
    /// until when they stay loaded.
    Ps {
        #[arg(long, env = "EXO_API_ADDR", default_value = crate::config::DEFAULT_API_ADDR)]
        api_addr: String,
    },
    /// Measure prompt and generation speed (like llama-bench), per stage and per node.
    Bench(bench::BenchArgs),
    /// Developer tools (test-model generation).
    #[command(hide = true, subcommand)]
    Dev(dev::DevCommand),
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Print this cluster's join token (creating the cluster secret if there is none yet):
    /// `exo serve --join TOKEN` or `EXO_CLUSTER_TOKEN=TOKEN` on the other nodes.
    Token,
}

/// Prints the join token; it is the secret itself, so only to stdout, with the key id on stderr.
fn cluster_token() -> anyhow::Result<()> {
    let loaded = crate::secret::for_this_machine(None)?;
    for n in &loaded.notes {
        eprintln!("{n}");
    }
    eprintln!("cluster key id {} (keep the token secret: it admits a node to the cluster)", loaded.keys.key_id());
    outln!("{}", loaded.keys.secret.token());
    Ok(())
}

/// An HTTP client for a running node, sending `EXO_API_KEY` when it is set.
pub(crate) fn http() -> reqwest::ClientBuilder {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(k) = std::env::var("EXO_API_KEY").ok().filter(|k| !k.is_empty()) {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {k}")) {
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    reqwest::Client::builder().default_headers(h)
}

/// A mistake in how exo was called: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_tracing(cli.verbose_log);
    let result = match cli.command {
        None => serve::run(cli.serve),
        Some(Command::Serve(a)) => serve::run(a),
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Plan(a)) => plan::run(a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::Cluster { what: Some(ClusterCommand::Token), .. }) => cluster_token(),
        Some(Command::Cluster { what: None, api_addr }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(remote::cluster(&api_addr))),
        Some(Command::Ps { api_addr }) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(ps::ps(&api_addr))),
        Some(Command::Pull(a)) => models::pull(a),
        Some(Command::List(a)) => models::list(a),
        Some(Command::Rm(a)) => models::rm(a),
        Some(Command::Dev(d)) => dev::run(d),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if e.downcast_ref::<UsageError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn init_tracing(verbosity: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("EXO_LOG") {
        Ok(f) if !f.is_empty() => EnvFilter::new(f),
        _ => EnvFilter::new(match verbosity {
            0 => "warn,llama.cpp=error",
            1 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// `--draft`: `auto` (None: the runtime's default for the numerics chosen), a proposer, or the
/// name of a draft model.
#[derive(Clone, Debug, PartialEq)]
pub struct DraftArg(pub Option<crate::runtime::speculate::Proposer>, pub Option<String>);

pub(crate) fn parse_draft(s: &str) -> Result<DraftArg, String> {
    use crate::runtime::speculate::Proposer;
    let s = s.trim();
    if s.eq_ignore_ascii_case("auto") {
        return Ok(DraftArg(None, None));
    }
    match s.parse::<Proposer>() {
        Ok(p) => Ok(DraftArg(Some(p), None)),
        Err(_) if s.is_empty() => Err("a proposer (none, ngram) or a model's name".into()),
        Err(_) => Ok(DraftArg(Some(Proposer::Model), Some(s.to_string()))),
    }
}
