//! `exo run` and `exo cluster` through a running node's HTTP API (EXO_API_ADDR).

use super::chat::{Backend, Params, TurnStats};
use super::client::{self, Node};
use super::run_args::RunArgs;
use super::UsageError;
use crate::api::cluster_view::{NodeStage, PlaceRequest};
use crate::chat::ChatMessage;
use serde_json::{json, Value};
use std::time::Duration;

/// The API base URL of a node running at `addr`, if one answers.
pub async fn running_node(addr: &str) -> Option<String> {
    let base = format!("http://{addr}");
    let http = super::http().timeout(Duration::from_millis(500)).build().ok()?;
    let r = http.get(&base).send().await.ok()?;
    (r.status().is_success() && r.text().await.ok()?.contains("exo is running")).then_some(base)
}

/// The node's refusal, with its message.
pub(super) async fn error_of(r: reqwest::Response) -> anyhow::Error {
    client::refused(r).await.into()
}

pub async fn cluster(addr: &str) -> anyhow::Result<()> {
    let base = running_node(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("no exo node is running at {addr} (start one with `exo serve`)"))?;
    let v = Node::new(&base)?.cluster().await?;
    outln!("{:<16} {:<22} {:<8} {:>12} {:>12} {:>10}", "NODE", "ADDRESS", "BACKEND", "MEMORY", "OFFERED", "DECODE");
    let gib = |b: Option<u64>| b.map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or("-".into());
    for n in &v.nodes {
        let p = n.profile.as_ref();
        let name = format!("{}{}", n.name, if n.is_self { " *" } else { "" });
        let gbps = p.and_then(|p| p.decode_gbps).map(|g| format!("{g:.1} GB/s")).unwrap_or("measuring".into());
        outln!(
            "{:<16} {:<22} {:<8} {:>12} {:>12} {:>10}",
            name,
            n.address.as_deref().unwrap_or("-"),
            p.map_or("-", |p| p.backend.as_str()),
            gib(p.map(|p| p.memory_total)),
            gib(p.map(|p| p.memory_offered)),
            gbps
        );
    }
    if !v.links.is_empty() {
        outln!();
        for l in &v.links {
            let rtt = l.rtt_ms.map(|r| format!("{r:.2} ms")).unwrap_or("-".into());
            let bw = l
                .bandwidth
                .map(|b| format!("{}/s", crate::placement::units::fmt_bytes(b as u64)))
                .unwrap_or("-".into());
            outln!("link {} -> {}: round trip {rtt}, bandwidth {bw} (measured by {})", l.from, l.to, l.measured_by);
        }
    }
    for i in &v.instances {
        outln!("instance {}: {}", i.model, i.stages_text(", "));
    }
    Ok(())
}

/// A running node's Ollama API answers the turns.
pub(super) struct RemoteBackend {
    http: reqwest::Client,
    base: String,
    model: String,
    num_ctx: Option<u32>,
    raw: bool,
}

/// The transfers a node lists on `/cluster` (none when it does not answer).
fn rows(
    http: reqwest::Client,
    base: String,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<super::window_bars::Row>> + Send>> {
    Box::pin(async move {
        let Ok(v) = Node::with(http, &base).cluster().await else { return vec![] };
        let here = v.here().map_or("this node", |n| n.name.as_str());
        v.transfers.iter().map(|t| super::window_bars::Row::of(t, here)).collect()
    })
}

/// How a node knows MODEL: a name as given, a file path by its model name (nodes take names,
/// never paths).
pub(super) fn name_for_node(model: &str) -> String {
    let p = std::path::Path::new(model);
    match p.is_file() {
        true => crate::store::model_name(p).unwrap_or_else(|| model.to_string()),
        false => model.to_string(),
    }
}

/// The node has no model by that file's name: `exo run` answers in its own process instead.
#[derive(Debug, thiserror::Error)]
#[error("the node at {base} has no model named {name:?}")]
pub(super) struct NodeLacksFile {
    pub base: String,
    pub name: String,
}

impl RemoteBackend {
    /// Makes sure the node has the model (pulling it like a local run would) and places it
    /// first when `split` names nodes.
    pub async fn connect(a: &RunArgs, base: &str, split: Option<Vec<NodeStage>>) -> anyhow::Result<RemoteBackend> {
        let http = super::http().build()?;
        let name = name_for_node(&a.model);
        let r = http.post(format!("{base}/api/show")).json(&json!({ "model": name })).send().await?;
        let here = r.status() != reqwest::StatusCode::NOT_FOUND;
        if !here && name != a.model {
            return Err(NodeLacksFile { base: base.to_string(), name }.into());
        }
        if here && !r.status().is_success() {
            return Err(error_of(r).await);
        }
        // a named split is placed first; a model the node lacks is loaded first too: on a
        // cluster each stage node then fetches only its window (a bar per node), and the whole
        // file is pulled only when the node cannot place it that way
        let load = || {
            let (http, base) = (http.clone(), base.to_string());
            let body = match &split {
                Some(p) => {
                    let req = PlaceRequest { model: name.clone(), placement: p.clone(), num_ctx: a.ctx_size };
                    serde_json::to_value(req).unwrap_or_default()
                }
                None => json!({ "model": name, "stream": false, "options": { "num_ctx": a.ctx_size } }),
            };
            let url = format!("{base}/{}", if split.is_some() { "instances" } else { "api/generate" });
            let rows = move || rows(http.clone(), base.clone());
            let http = super::http().build();
            super::window_bars::while_loading(rows, async move {
                Ok::<_, anyhow::Error>(http?.post(url).json(&body).send().await?)
            })
        };
        if !here || split.is_some() {
            let mut r = load().await?;
            if r.status() == reqwest::StatusCode::NOT_FOUND && !here {
                let p = http
                    .post(format!("{base}/api/pull"))
                    .json(&json!({ "model": name, "stream": false }))
                    .send()
                    .await?;
                if !p.status().is_success() {
                    return Err(error_of(p).await);
                }
                if split.is_some() {
                    r = load().await?;
                }
            } else if !r.status().is_success() {
                return Err(error_of(r).await);
            }
            if split.is_some() && !r.status().is_success() {
                return Err(error_of(r).await);
            }
        }
        Ok(RemoteBackend { http, base: base.to_string(), model: name, num_ctx: a.ctx_size, raw: a.raw })
    }
}

fn options(p: &Params, num_ctx: Option<u32>) -> Value {
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            o.insert(k.into(), v);
        }
    };
    put("temperature", json!(p.temperature));
    put("top_k", json!(p.top_k));
    put("top_p", json!(p.top_p));
    put("min_p", json!(p.min_p));
    put("repeat_penalty", json!(p.repeat_penalty));
    put("seed", json!(p.seed));
    put("num_predict", json!(p.max_tokens));
    put("num_ctx", json!(num_ctx));
    Value::Object(o)
}

impl Backend for RemoteBackend {
    async fn answer(
        &mut self,
        messages: &[ChatMessage],
        p: &Params,
        out: &mut dyn FnMut(&str) -> std::io::Result<()>,
    ) -> anyhow::Result<TurnStats> {
        let opts = options(p, self.num_ctx);
        let (path, body) = if self.raw {
            let prompt = messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n");
            (
                "api/generate",
                json!({ "model": self.model, "prompt": prompt, "raw": true, "options": opts, "stream": true }),
            )
        } else {
            ("api/chat", json!({ "model": self.model, "messages": messages, "options": opts, "stream": true }))
        };
        let mut r = self.http.post(format!("{}/{path}", self.base)).json(&body).send().await?;
        if !r.status().is_success() {
            return Err(error_of(r).await);
        }
        let mut buf = String::new();
        while let Some(chunk) = r.chunk().await? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                let v: Value = serde_json::from_str(line.trim()).unwrap_or_default();
                if let Some(e) = v["error"].as_str() {
                    return Err(anyhow::anyhow!("{e}"));
                }
                let piece = v["message"]["content"].as_str().or_else(|| v["response"].as_str());
                if let Some(t) = piece.filter(|t| !t.is_empty()) {
                    out(t)?;
                }
                if v["done"] == true {
                    let d = |k: &str| Duration::from_nanos(v[k].as_u64().unwrap_or(0));
                    let n = |k: &str| v[k].as_u64().unwrap_or(0) as usize;
                    return Ok(TurnStats {
                        load: d("load_duration"),
                        prompt_tokens: n("prompt_eval_count"),
                        prompt_eval: d("prompt_eval_duration"),
                        eval_count: n("eval_count"),
                        eval: d("eval_duration"),
                        total: d("total_duration"),
                        speculation: None,
                    });
                }
            }
        }
        anyhow::bail!("the node ended the answer early")
    }

    async fn placement(&self) -> Option<String> {
        let v = Node::with(self.http.clone(), &self.base).cluster().await.ok()?;
        let stages = &v.instance(&self.model)?.stages;
        Some(stages.iter().map(|s| format!("{} {}:{}", s.node, s.begin, s.end)).collect::<Vec<_>>().join(", "))
    }
}

/// `--split` with node names, as the placement `/instances` takes.
/// `--split a=0:4,b=4:8` as the placement a node's API takes. The layer count is unknown here:
/// the node checks the ranges against the model.
pub fn named_split_arg(split: &str) -> Result<Vec<NodeStage>, UsageError> {
    let end = split.split(',').filter_map(|e| e.rsplit_once(':')?.1.trim().parse::<u32>().ok()).max().unwrap_or(0);
    let stages = crate::placement::parse_split(split, end).map_err(|e| UsageError(format!("invalid --split: {e}")))?;
    named_split(&stages)
}

pub fn named_split(stages: &[crate::placement::ForcedStage]) -> Result<Vec<NodeStage>, UsageError> {
    stages
        .iter()
        .map(|s| match &s.node {
            Some(n) => Ok(NodeStage { node: n.clone(), begin: s.range.begin, end: s.range.end }),
            None => Err(UsageError("mix of named and unnamed ranges in --split".into())),
        })
        .collect()
}
