//! `exo run` and `exo cluster` through a running node's HTTP API (EXO_API_ADDR).

use super::chat::{Backend, Params, TurnStats};
use super::run_args::RunArgs;
use super::UsageError;
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

pub(super) async fn error_of(r: reqwest::Response) -> anyhow::Error {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let msg =
        serde_json::from_str::<Value>(&text).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(text);
    anyhow::anyhow!("the node answered {status}: {msg}")
}

pub async fn cluster(addr: &str) -> anyhow::Result<()> {
    let base = running_node(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("no exo node is running at {addr} (start one with `exo serve`)"))?;
    let v: Value = super::http().build()?.get(format!("{base}/cluster")).send().await?.json().await?;
    outln!("{:<16} {:<22} {:<8} {:>12} {:>12} {:>10}", "NODE", "ADDRESS", "BACKEND", "MEMORY", "OFFERED", "DECODE");
    let gib =
        |b: &Value| b.as_u64().map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or("-".into());
    for n in v["nodes"].as_array().cloned().unwrap_or_default() {
        let p = &n["profile"];
        let name = format!("{}{}", n["name"].as_str().unwrap_or("?"), if n["self"] == true { " *" } else { "" });
        let gbps = p["decode_gbps"].as_f64().map(|g| format!("{g:.1} GB/s")).unwrap_or("measuring".into());
        outln!(
            "{:<16} {:<22} {:<8} {:>12} {:>12} {:>10}",
            name,
            n["address"].as_str().unwrap_or("-"),
            p["backend"].as_str().unwrap_or("-"),
            gib(&p["memory_total"]),
            gib(&p["memory_offered"]),
            gbps
        );
    }
    let links = v["links"].as_array().cloned().unwrap_or_default();
    if !links.is_empty() {
        outln!();
        for l in links {
            let rtt = l["rtt_ms"].as_f64().map(|r| format!("{r:.2} ms")).unwrap_or("-".into());
            let bw = l["bandwidth_bytes_per_second"]
                .as_f64()
                .map(|b| format!("{}/s", crate::placement::units::fmt_bytes(b as u64)))
                .unwrap_or("-".into());
            outln!(
                "link {} -> {}: round trip {rtt}, bandwidth {bw} (measured by {})",
                l["from"].as_str().unwrap_or("?"),
                l["to"].as_str().unwrap_or("?"),
                l["measured_by"].as_str().unwrap_or("?")
            );
        }
    }
    for i in v["instances"].as_array().cloned().unwrap_or_default() {
        outln!("instance {}: {}", i["model"].as_str().unwrap_or("?"), stages_text(&i, ", "));
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
        let Ok(r) = http.get(format!("{base}/cluster")).send().await else { return vec![] };
        let v: Value = r.json().await.unwrap_or_default();
        let here = v["nodes"].as_array().and_then(|n| n.iter().find(|x| x["self"] == true)).map(|x| &x["name"]);
        let here = here.and_then(Value::as_str).unwrap_or("this node").to_string();
        let t = v["transfers"].as_array().cloned().unwrap_or_default();
        t.iter().filter_map(|t| super::window_bars::Row::of_json(t, &here)).collect()
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
    pub async fn connect(a: &RunArgs, base: &str, split: Option<Value>) -> anyhow::Result<RemoteBackend> {
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
                Some(p) => json!({ "model": name, "placement": p, "num_ctx": a.ctx_size }),
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
                    });
                }
            }
        }
        anyhow::bail!("the node ended the answer early")
    }

    async fn placement(&self) -> Option<String> {
        let cl: Value = self.http.get(format!("{}/cluster", self.base)).send().await.ok()?.json().await.ok()?;
        let inst = cl["instances"].as_array()?.iter().find(|i| {
            let m = i["model"].as_str().unwrap_or_default();
            m == self.model || Some(m) == self.model.strip_suffix(":latest")
        })?;
        let stages: Vec<String> = inst["stages"]
            .as_array()?
            .iter()
            .map(|s| format!("{} {}:{}", s["node"].as_str().unwrap_or("?"), s["begin"], s["end"]))
            .collect();
        Some(stages.join(", "))
    }
}

/// `--split` with node names, as the placement `/instances` takes.
/// `--split a=0:4,b=4:8` as the placement a node's API takes. The layer count is unknown here:
/// the node checks the ranges against the model.
pub fn named_split_arg(split: &str) -> Result<Value, UsageError> {
    let end = split.split(',').filter_map(|e| e.rsplit_once(':')?.1.trim().parse::<u32>().ok()).max().unwrap_or(0);
    let stages = crate::placement::parse_split(split, end).map_err(|e| UsageError(format!("invalid --split: {e}")))?;
    named_split(&stages)
}

pub fn named_split(stages: &[crate::placement::ForcedStage]) -> Result<Value, UsageError> {
    stages
        .iter()
        .map(|s| match &s.node {
            Some(n) => Ok(json!({ "node": n, "begin": s.range.begin, "end": s.range.end })),
            None => Err(UsageError("mix of named and unnamed ranges in --split".into())),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

/// An instance's stages as `node=begin:end` joined by `sep` (from `/cluster`).
pub(super) fn stages_text(instance: &Value, sep: &str) -> String {
    let stages = instance["stages"].as_array().map(Vec::as_slice).unwrap_or_default();
    stages
        .iter()
        .map(|s| format!("{}={}:{}", s["node"].as_str().unwrap_or("?"), s["begin"], s["end"]))
        .collect::<Vec<_>>()
        .join(sep)
}
