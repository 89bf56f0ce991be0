//! `exo run MODEL [PROMPT]`: through a running node when one answers, else with the runtime in
//! this process (joining the cluster when peers are given or discovered; in-process stages with
//! an unnamed `--split`). The chat itself is [`super::chat`].

use super::chat::{self, Backend, Params, TurnStats};
use super::peer_args::PeerArgs;
pub use super::run_args::RunArgs;
use super::window_bars::Row;
use super::UsageError;
use crate::chat::ChatMessage;
use crate::engine::{LayerRange, SamplingParams};
use crate::gguf::{ModelFiles, ModelShape};
use crate::placement;
use crate::runtime::{Event, Forced, GenRequest, Input, Limits, LoadOptions, ModelRef, Runtime};
use crate::store::{LocalModel, Resolved, Store};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: RunArgs) -> anyhow::Result<()> {
    // through a running node: always for a split that names nodes, otherwise when one answers
    // (flags only an in-process run honours keep it here)
    let api_addr = crate::config::api_addr();
    let named = a.split.as_deref().is_some_and(|s| s.contains('='));
    if (named || a.split.is_none()) && !a.ignore_eos && !a.no_mmap {
        if let Some(base) = super::remote::running_node(&api_addr).await {
            let placement = a.split.as_deref().map(super::remote::named_split_arg).transpose()?;
            match super::remote::RemoteBackend::connect(&a, &base, placement).await {
                Ok(mut b) => return chat::run(&mut b, &a).await,
                // a file the node does not have: answer here (a named split needs the node)
                Err(e) if e.is::<super::remote::NodeLacksFile>() && !named => {
                    eprintln!("note: {e}; running in this process")
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut limits = Limits {
        parallel: 1,
        queue: 1,
        exact: a.exact,
        draft: a.draft.0,
        draft_model: a.draft.1.clone(),
        ..Limits::default()
    };
    if let Some(t) = a.threads {
        limits.threads = t;
    }
    let (runtime, cluster, model, forced) = prepare(&a, limits, named).await?;
    let opts = LoadOptions { num_ctx: a.ctx_size, n_batch: None, forced, no_mmap: a.no_mmap };
    let t = Instant::now();
    // stage nodes without the model fetch their windows from here: a bar per node
    let rows = {
        let (c, here) = (cluster.clone(), runtime.here());
        move || {
            let v: Vec<_> = c.iter().flat_map(|c| c.store.transfers.list()).map(|t| Row::of(&t, &here)).collect();
            Box::pin(std::future::ready(v)) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>>
        }
    };
    let (instance, _) = super::window_bars::while_loading(rows, runtime.instance(&model, opts.clone())).await?;
    let load = t.elapsed();
    if a.verbose {
        eprintln!("placement: {}", placement_of(&runtime, &instance));
        eprintln!("load duration: {}", fmt_secs(load));
    }
    let mut b = LocalBackend { runtime, model, opts, load: Some(load), raw: a.raw, ignore_eos: a.ignore_eos };
    let r = chat::run(&mut b, &a).await;
    if let Some(c) = cluster {
        c.goodbye().await;
    }
    r
}

fn fmt_secs(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.3}s", d.as_secs_f64())
    } else {
        format!("{:.3}ms", d.as_secs_f64() * 1e3)
    }
}

fn placement_of(rt: &Runtime, i: &crate::runtime::Instance) -> String {
    let here = rt.here();
    i.pipe().stages(&here).iter().map(|(n, r)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")
}

/// The runtime for this process, its cluster (if any), and the model and placement it loads.
/// In-process stages need the file here (pulled whole when missing); otherwise a model this
/// machine lacks is located on the cluster: its header from a node holding it (or the hub), so
/// that this process, like every stage, fetches only its window. Alone, it is pulled whole.
async fn prepare(
    a: &RunArgs,
    limits: Limits,
    named: bool,
) -> anyhow::Result<(Arc<Runtime>, Option<Arc<crate::cluster::ClusterNode>>, ModelRef, Option<Forced>)> {
    let store = Store::from_env();
    let in_process = a.split.is_some() && !named;
    let here = {
        let (s, n) = (store.clone(), a.model.clone());
        matches!(tokio::task::spawn_blocking(move || s.resolve(&n)).await?, Ok(Resolved::Local(_)))
    };
    let lacks = !here && !in_process && ModelRef::name(&a.model).is_ok();
    let local = if lacks { None } else { Some(local_model(&a.model, a.split.as_deref()).await?) };
    let cluster = if in_process { None } else { embedded_cluster(&a.peer, &limits, named).await? };
    let runtime = Runtime::new(store, limits, cluster.clone());
    let on_cluster = cluster.as_ref().is_some_and(|c| !c.peers().is_empty());
    let (model, forced) = match local {
        // the file the user named, or the one the store found for the name
        Some((m, _, forced)) => (ModelRef::Path(m.first().to_path_buf()), forced),
        None if on_cluster => {
            let name = ModelRef::Name(a.model.clone());
            let (_, shape) = runtime.locate(&name).await.map_err(usage_or_runtime)?;
            (name, forced_split(a.split.as_deref(), shape.n_layer)?)
        }
        None => {
            let (m, _, forced) = local_model(&a.model, a.split.as_deref()).await?;
            (ModelRef::Path(m.first().to_path_buf()), forced)
        }
    };
    if let (Some(Forced::Nodes(stages)), Some(c)) = (&forced, &cluster) {
        wait_for_nodes(c, stages).await;
    }
    Ok((runtime, cluster, model, forced))
}

/// Joins the cluster for this session (peers from --peers/EXO_PEERS, discovery unless
/// --no-discovery/EXO_NO_DISCOVERY) without an HTTP server; None when there is nobody to find.
async fn embedded_cluster(
    p: &PeerArgs,
    limits: &Limits,
    named: bool,
) -> anyhow::Result<Option<Arc<crate::cluster::ClusterNode>>> {
    let (peers, discovery) = (p.peers(), !p.no_discovery);
    if !discovery && peers.is_empty() {
        if named {
            return Err(UsageError(
                "--split with node names needs a cluster: start `exo serve`, or give peers with EXO_PEERS".into(),
            )
            .into());
        }
        return Ok(None);
    }
    let cfg = crate::cluster::NodeConfig {
        namespace: p.namespace.clone(),
        node_name: p.node_name.clone().unwrap_or_else(|| format!("{}-run", super::serve::host_name())),
        peer_bind: "0.0.0.0:0".parse()?,
        peers,
        memory_limit: None,
        decode_gbps: p.decode_gbps,
        cache_dir: crate::config::cache_dir(),
        threads: limits.threads,
        discovery,
        advertise: None,
        security: crate::transport::Security::new(Arc::new(crate::secret::for_this_machine(None)?.keys)),
    };
    match crate::cluster::ClusterNode::start(cfg, Store::from_env()).await {
        Ok(n) => {
            // give discovery a moment to find peers, and the peers a moment to say (in their
            // first pong) what they offer and hold, so placement and sources can use them
            let t = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let heard = n.peers().iter().all(|p| p.profile.is_some());
                if (heard && t.elapsed() >= Duration::from_millis(1500)) || t.elapsed() >= Duration::from_secs(5) {
                    break;
                }
            }
            Ok(Some(n))
        }
        Err(e) if !named => {
            tracing::warn!("cannot join the cluster ({e}); running on this machine only");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits (briefly) until every node a named split uses is known.
async fn wait_for_nodes(c: &crate::cluster::ClusterNode, stages: &[(String, LayerRange)]) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if stages.iter().all(|(n, _)| c.address_of(n).is_some()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The runtime in this process answers the turns; the instance's prompt cache keeps the
/// conversation's KV from turn to turn.
struct LocalBackend {
    runtime: Arc<Runtime>,
    model: ModelRef,
    opts: LoadOptions,
    /// Load time, reported with the first answer.
    load: Option<Duration>,
    raw: bool,
    ignore_eos: bool,
}

impl Backend for LocalBackend {
    async fn answer(
        &mut self,
        messages: &[ChatMessage],
        p: &Params,
        out: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<TurnStats> {
        let d = SamplingParams::default();
        let sampling = SamplingParams {
            temperature: p.temperature.unwrap_or(d.temperature),
            top_k: p.top_k.unwrap_or(d.top_k),
            top_p: p.top_p.unwrap_or(d.top_p),
            min_p: p.min_p.unwrap_or(d.min_p),
            repeat_penalty: p.repeat_penalty.unwrap_or(d.repeat_penalty),
            seed: p.seed.unwrap_or_else(random_seed),
            ..d
        };
        let input = if self.raw {
            Input::Raw(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"))
        } else {
            Input::Messages(messages.to_vec())
        };
        let mut req = GenRequest::new(self.model.clone(), input, sampling);
        req.max_tokens = p.max_tokens;
        req.num_ctx = self.opts.num_ctx;
        req.ignore_eos = self.ignore_eos;
        let mut gen = self.runtime.generate(req).await.map_err(usage_or_runtime)?;
        let mut io_err = None;
        while let Some(ev) = gen.events.recv().await {
            match ev {
                Event::Thinking(_) => {}
                Event::Text(t) => {
                    if io_err.is_none() {
                        io_err = out(&t).err();
                    }
                }
                Event::Done { stats, .. } => {
                    if let Some(e) = io_err {
                        return Err(e.into());
                    }
                    return Ok(TurnStats {
                        load: self.load.take().unwrap_or(stats.load),
                        prompt_tokens: stats.prompt_tokens - stats.cached_tokens,
                        prompt_eval: stats.prompt_eval,
                        eval_count: stats.completion_tokens,
                        eval: stats.eval,
                        total: stats.total,
                        speculation: self.runtime.instances().first().map(|i| i.speculation()),
                    });
                }
                Event::Failed(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the generation ended without a result")
    }

    async fn placement(&self) -> Option<String> {
        None // printed once after loading
    }
}

/// Bad request values from the command line are usage errors (exit code 2).
fn usage_or_runtime(e: crate::runtime::RuntimeError) -> anyhow::Error {
    match e.kind() {
        crate::runtime::ErrorKind::Invalid => UsageError(e.to_string()).into(),
        _ => e.into(),
    }
}

fn random_seed() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// The model on this machine (pulled if needed), its shape, and the placement a `--split`
/// forces: unnamed ranges run as in-process stages, named ones on those nodes.
pub(super) async fn local_model(
    name: &str,
    split: Option<&str>,
) -> anyhow::Result<(LocalModel, ModelShape, Option<Forced>)> {
    let store = Store::from_env();
    let model = super::models::ensure_local(&store, name).await?;
    let first = model.first().to_path_buf();
    let shape = tokio::task::spawn_blocking(move || ModelShape::from_files(&ModelFiles::open(&first)?)).await??;
    let forced = forced_split(split, shape.n_layer)?;
    Ok((model, shape, forced))
}

/// The placement a `--split` forces on a model of `n_layer` layers: unnamed ranges run as
/// in-process stages, named ones on those nodes.
fn forced_split(split: Option<&str>, n_layer: u32) -> anyhow::Result<Option<Forced>> {
    let Some(s) = split else { return Ok(None) };
    let stages = placement::parse_split(s, n_layer).map_err(|e| UsageError(format!("invalid --split: {e}")))?;
    if stages.iter().all(|s| s.node.is_none()) {
        Ok(Some(Forced::Local(stages.into_iter().map(|s| s.range).collect())))
    } else if stages.iter().all(|s| s.node.is_some()) {
        Ok(Some(Forced::Nodes(stages.into_iter().map(|s| (s.node.unwrap_or_default(), s.range)).collect())))
    } else {
        Err(UsageError("mix of named and unnamed ranges in --split".into()).into())
    }
}
