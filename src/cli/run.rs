//! `exo run MODEL [PROMPT]` on this machine: one stage, or in-process stages with `--split`.

use super::UsageError;
use crate::engine::{ChatMessage, ContextParams, LayerRange, SamplingParams, Token, TokenDecoder};
use crate::gguf::{ModelFiles, ModelShape};
use crate::pipeline::{generate, Chain, GenerateRequest, GenerationStats};
use crate::placement;
use crate::store::{LocalModel, Store};
use anyhow::Context;
use clap::Args;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A .gguf path, or the name of a GGUF in the models dirs.
    pub model: String,
    /// Answer this and exit; without it, read stdin (when piped) or chat interactively.
    pub prompt: Vec<String>,
    /// Force a placement: layer ranges run as in-process stages, e.g. 0:4,4:8.
    #[arg(long, env = "EXO_SPLIT")]
    pub split: Option<String>,
    #[arg(long)]
    pub temperature: Option<f32>,
    #[arg(long)]
    pub top_k: Option<i32>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repeat_penalty: Option<f32>,
    /// Seed for sampling (default: random).
    #[arg(long)]
    pub seed: Option<u32>,
    /// Stop after this many tokens (default: until the model ends or the context is full).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(long)]
    pub ctx_size: Option<u32>,
    #[arg(long, env = "EXO_THREADS")]
    pub threads: Option<i32>,
    /// Read weights with read() instead of mmap.
    #[arg(long)]
    pub no_mmap: bool,
    /// Keep generating past end-of-generation tokens (for benchmarks).
    #[arg(long, hide = true)]
    pub ignore_eos: bool,
    /// Do not apply the chat template to PROMPT.
    #[arg(long)]
    pub raw: bool,
    /// Print load time, placement and prompt/eval rates.
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // through a running node: always for a split that names nodes, otherwise when one answers
    let api_addr = std::env::var("EXO_API_ADDR").unwrap_or_else(|_| "127.0.0.1:52415".into());
    let named = a.split.as_deref().is_some_and(|s| s.contains('='));
    if named || a.split.is_none() {
        if let Some(base) = rt.block_on(super::remote::running_node(&api_addr)) {
            let placement = a.split.as_deref().map(super::remote::named_split_arg).transpose()?;
            return rt.block_on(super::remote::run(&a, &base, placement));
        }
        if named {
            return Err(UsageError(format!(
                "--split with node names needs a running node to place the model across the cluster; none answers at {api_addr} (start `exo serve`)"
            ))
            .into());
        }
        // no node here: start one for this session, so the model can use the cluster too
        // (flags that only an in-process run honours keep the in-process path)
        if !a.ignore_eos && !a.raw && !a.no_mmap {
            match rt.block_on(embedded_node(&a)) {
                Ok((base, stop)) => {
                    let r = rt.block_on(super::remote::run(&a, &base, None));
                    let _ = stop.send(());
                    return r;
                }
                Err(e) => tracing::warn!("cannot start an embedded node ({e}); running in this process"),
            }
        }
    }
    let (model, shape, ranges) = local_model(&rt, &a.model, a.split.as_deref())?;
    let path = model.first().to_path_buf();
    let sampling = sampling(&a);
    sampling.validate().map_err(|e| UsageError(e.to_string()))?;
    let train_ctx = if shape.context_length > 0 { shape.context_length } else { 4096 };
    let n_ctx = a.ctx_size.unwrap_or(train_ctx.min(4096));
    let mut context = ContextParams { n_ctx, n_seq_max: 1, ..ContextParams::default() };
    if let Some(t) = a.threads {
        context.n_threads = t;
    }

    let t_load = Instant::now();
    let chain = Chain::load(&path, ranges.as_deref(), context, !a.no_mmap)
        .with_context(|| format!("loading {}", path.display()))?;
    let load = t_load.elapsed();
    if a.verbose {
        let stages: Vec<String> = chain.stages().iter().map(|s| format!("local {}", s.info().range)).collect();
        eprintln!("placement: {}", stages.join(", "));
        eprintln!("load duration: {}", fmt_dur(load));
    }
    let prompt = read_prompt(&a)?;
    let mut session = Session { chain, args: a, sampling, cached: Vec::new(), load };
    match prompt {
        Some(p) => rt.block_on(session.answer(vec![ChatMessage { role: "user".into(), content: p }])).map(|_| ()),
        None => rt.block_on(session.interactive()),
    }
}

/// Starts a node inside this process (API on a free loopback port, peers by mDNS and EXO_PEERS)
/// and waits briefly for peers; returns its API base URL and a handle that stops it.
async fn embedded_node(a: &RunArgs) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    use crate::api::Limits;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let api_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut limits = Limits { parallel: 1, queue: 1, ..Limits::default() };
    if let Some(c) = a.ctx_size {
        limits.default_ctx = c;
    }
    if let Some(t) = a.threads {
        limits.threads = t;
    }
    let peers: Vec<String> =
        env("EXO_PEERS").map(|p| p.split(',').map(|s| s.trim().to_string()).collect()).unwrap_or_default();
    let discovery = !env("EXO_NO_DISCOVERY").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "yes" | "on"));
    let cluster = crate::cluster::NodeConfig {
        namespace: env("EXO_NAMESPACE").unwrap_or_else(|| "default".into()),
        node_name: env("EXO_NODE_NAME").unwrap_or_else(|| format!("{}-run", super::serve::host_name())),
        peer_bind: "0.0.0.0:0".parse()?,
        peers: peers.clone(),
        memory_limit: None,
        decode_gbps: env("EXO_DECODE_GBPS").and_then(|v| v.parse().ok()),
        cache_dir: crate::config::cache_dir(),
        threads: limits.threads,
        discovery,
        advertise: None,
        security: crate::transport::Security::new(std::sync::Arc::new(crate::secret::for_this_machine(None)?.keys)),
    };
    let cfg = crate::node::NodeConfig {
        api_addr,
        limits,
        store: Store::from_env(),
        access: Default::default(),
        cluster: Some(cluster),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if let Err(e) = crate::node::serve(cfg, async {
            let _ = stopped.await;
        })
        .await
        {
            tracing::warn!("embedded node: {e}");
        }
    });
    let addr = api_addr.to_string();
    let t = Instant::now();
    let base = loop {
        if let Some(b) = super::remote::running_node(&addr).await {
            break b;
        }
        if t.elapsed() > Duration::from_secs(5) {
            anyhow::bail!("the embedded node did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // give discovery a moment to find peers, so placement can use them
    if discovery || !peers.is_empty() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    Ok((base, stop))
}

/// PROMPT, else a prompt piped on stdin; None means an interactive chat.
pub(super) fn read_prompt(a: &RunArgs) -> std::io::Result<Option<String>> {
    if !a.prompt.is_empty() {
        return Ok(Some(a.prompt.join(" ")));
    }
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    Ok(Some(s))
}

/// The model on this machine (pulled if needed), its shape, and the in-process stage ranges of
/// an unnamed `--split` (named ranges need a cluster: a usage error here).
pub(super) fn local_model(
    rt: &tokio::runtime::Runtime,
    name: &str,
    split: Option<&str>,
) -> anyhow::Result<(LocalModel, ModelShape, Option<Vec<LayerRange>>)> {
    let store = Store::from_env();
    let model = rt.block_on(super::models::ensure_local(&store, name))?;
    let shape = ModelShape::from_files(&ModelFiles::open(model.first())?)?;
    let ranges = match split {
        None => None,
        Some(s) => {
            let stages =
                placement::parse_split(s, shape.n_layer).map_err(|e| UsageError(format!("invalid --split: {e}")))?;
            if stages.iter().any(|s| s.node.is_some()) {
                return Err(UsageError(
                    "--split with node names needs a cluster; on one machine give ranges only (0:4,4:8)".into(),
                )
                .into());
            }
            Some(stages.into_iter().map(|s| s.range).collect())
        }
    };
    Ok((model, shape, ranges))
}

/// One line typed at the `>>> ` prompt of an interactive chat; `None` at end of input (Ctrl-D).
pub(super) fn chat_line() -> std::io::Result<Option<String>> {
    print!(">>> ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        outln!();
        return Ok(None);
    }
    Ok(Some(line))
}

fn sampling(a: &RunArgs) -> SamplingParams {
    let d = SamplingParams::default();
    SamplingParams {
        temperature: a.temperature.unwrap_or(d.temperature),
        top_k: a.top_k.unwrap_or(d.top_k),
        top_p: a.top_p.unwrap_or(d.top_p),
        min_p: a.min_p.unwrap_or(d.min_p),
        repeat_penalty: a.repeat_penalty.unwrap_or(d.repeat_penalty),
        seed: a.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        }),
        ..d
    }
}

struct Session {
    chain: Chain,
    args: RunArgs,
    sampling: SamplingParams,
    /// Tokens of sequence 0 now in the KV cache, reused across chat turns.
    cached: Vec<Token>,
    load: Duration,
}

impl Session {
    /// Formats the conversation, decodes what the cache lacks, streams the reply to stdout.
    async fn answer(&mut self, messages: Vec<ChatMessage>) -> anyhow::Result<String> {
        let first = self.chain.first().clone();
        let text = match (&first.info().chat_template, self.args.raw) {
            (Some(_), false) => first.apply_template(messages, true).await?,
            _ => messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"),
        };
        let tokens = first.tokenize(&text, true, true).await?;
        // reuse the longest cached prefix; at least one token must be decoded to get logits
        let mut keep = self.cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count().min(tokens.len() - 1);
        if !self.chain.seq_rm(0, keep as i32, -1).await? {
            self.chain.clear().await?;
            keep = 0;
        }
        let req = GenerateRequest {
            prompt: tokens[keep..].to_vec(),
            past: tokens[..keep].to_vec(),
            seq: 0,
            sampling: self.sampling.clone(),
            max_tokens: self.args.max_tokens,
            ignore_eos: self.args.ignore_eos,
        };
        let t0 = Instant::now();
        let mut out = std::io::stdout().lock();
        let mut decoder = TokenDecoder::new();
        let mut generated = Vec::new();
        let mut reply = String::new();
        let mut io_err = None;
        let stats = {
            // detokenizing needs the stage thread: collect ids here, print as they arrive
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let printer = async {
                while let Some(t) = rx.recv().await {
                    let bytes = first.token_bytes(vec![t], false).await?;
                    let s = decoder.push(&bytes[0]);
                    reply.push_str(&s);
                    if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
                        io_err = Some(e);
                    }
                }
                anyhow::Ok(())
            };
            let gen = async {
                let r = generate(&self.chain, req, |t| {
                    generated.push(t);
                    let _ = tx.send(t);
                    ControlFlow::Continue(())
                })
                .await;
                drop(tx);
                r
            };
            let (stats, printed) = tokio::join!(gen, printer);
            printed?;
            stats?
        };
        let tail = decoder.finish();
        reply.push_str(&tail);
        writeln!(out, "{tail}")?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        self.cached = tokens;
        self.cached.extend_from_slice(&generated);
        self.cached.truncate(stats.n_past);
        if self.args.verbose {
            print_stats(&stats, self.load, t0.elapsed());
        }
        Ok(reply)
    }

    async fn interactive(&mut self) -> anyhow::Result<()> {
        let mut history: Vec<ChatMessage> = Vec::new();
        loop {
            let Some(line) = chat_line()? else { return Ok(()) };
            let line = line.trim();
            match line {
                "" => continue,
                "/bye" => return Ok(()),
                "/clear" => {
                    history.clear();
                    self.chain.clear().await?;
                    self.cached.clear();
                    outln!("Cleared session context");
                    continue;
                }
                "/?" | "/help" => {
                    outln!("/set parameter NAME VALUE   temperature, top_k, top_p, min_p, repeat_penalty, seed, num_predict");
                    outln!("/clear                      forget the conversation");
                    outln!("/bye                        exit (or Ctrl-D)");
                    continue;
                }
                _ => {}
            }
            if let Some(rest) = line.strip_prefix("/set parameter ") {
                match self.set_parameter(rest) {
                    Ok(msg) => outln!("{msg}"),
                    Err(e) => outln!("Error: {e}"),
                }
                continue;
            }
            if line.starts_with('/') {
                outln!("Unknown command '{line}'. Type /? for help");
                continue;
            }
            history.push(ChatMessage { role: "user".into(), content: line.to_string() });
            let reply = self.answer(history.clone()).await?;
            history.push(ChatMessage { role: "assistant".into(), content: reply });
            outln!();
        }
    }

    fn set_parameter(&mut self, rest: &str) -> Result<String, String> {
        let (name, value) = rest.trim().split_once(' ').ok_or("usage: /set parameter NAME VALUE")?;
        let value = value.trim();
        let f = || value.parse::<f32>().map_err(|_| format!("{value:?} is not a number"));
        let i = || value.parse::<i64>().map_err(|_| format!("{value:?} is not an integer"));
        let mut s = self.sampling.clone();
        match name {
            "temperature" => s.temperature = f()?,
            "top_k" => s.top_k = i()? as i32,
            "top_p" => s.top_p = f()?,
            "min_p" => s.min_p = f()?,
            "repeat_penalty" => s.repeat_penalty = f()?,
            "seed" => s.seed = i()? as u32,
            "num_predict" => {
                let n = i()?;
                self.args.max_tokens = (n > 0).then_some(n as u32);
                return Ok(format!("Set parameter 'num_predict' to '{value}'"));
            }
            _ => return Err(format!("unknown parameter {name:?}")),
        }
        s.validate().map_err(|e| e.to_string())?;
        self.sampling = s;
        Ok(format!("Set parameter '{name}' to '{value}'"))
    }
}

fn print_stats(s: &GenerationStats, load: Duration, total: Duration) {
    let rate = |n: usize, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    eprintln!("total duration:       {}", fmt_dur(total + load));
    eprintln!("load duration:        {}", fmt_dur(load));
    eprintln!("prompt eval count:    {} token(s)", s.prompt_tokens);
    eprintln!("prompt eval duration: {}", fmt_dur(s.prompt_duration));
    eprintln!("prompt eval rate:     {:.2} tokens/s", rate(s.prompt_tokens, s.prompt_duration));
    eprintln!("eval count:           {} token(s)", s.generated_tokens);
    eprintln!("eval duration:        {}", fmt_dur(s.eval_duration));
    eprintln!("eval rate:            {:.2} tokens/s", rate(s.generated_tokens.saturating_sub(1), s.eval_duration));
}

fn fmt_dur(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{:.3}ms", d.as_secs_f64() * 1e3)
    }
}
