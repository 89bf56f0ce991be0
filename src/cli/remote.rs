//! `exo run` and `exo cluster` through a running node's HTTP API (EXO_API_ADDR).

use super::run::RunArgs;
use super::UsageError;
use serde_json::{json, Value};
use std::io::Write;
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
            outln!(
                "link {} -> {}: round trip {rtt}",
                l["from"].as_str().unwrap_or("?"),
                l["to"].as_str().unwrap_or("?")
            );
        }
    }
    for i in v["instances"].as_array().cloned().unwrap_or_default() {
        let stages: Vec<String> = i["stages"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("{}={}:{}", s["node"].as_str().unwrap_or("?"), s["begin"], s["end"]))
            .collect();
        outln!("instance {}: {}", i["model"].as_str().unwrap_or("?"), stages.join(", "));
    }
    Ok(())
}

fn options(a: &RunArgs) -> Value {
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        if !v.is_null() {
            o.insert(k.into(), v);
        }
    };
    put("temperature", json!(a.temperature));
    put("top_k", json!(a.top_k));
    put("top_p", json!(a.top_p));
    put("min_p", json!(a.min_p));
    put("repeat_penalty", json!(a.repeat_penalty));
    put("seed", json!(a.seed));
    put("num_predict", json!(a.max_tokens));
    put("num_ctx", json!(a.ctx_size));
    Value::Object(o)
}

/// Runs the conversation through the node at `base`; `split` (node=begin:end,...) places the
/// model first.
pub async fn run(a: &RunArgs, base: &str, split: Option<Value>) -> anyhow::Result<()> {
    let http = super::http().build()?;
    // the node pulls what it lacks, as a local run would
    let r = http.post(format!("{base}/api/show")).json(&json!({ "model": a.model })).send().await?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        let r =
            http.post(format!("{base}/api/pull")).json(&json!({ "model": a.model, "stream": false })).send().await?;
        if !r.status().is_success() {
            return Err(error_of(r).await);
        }
    }
    if let Some(placement) = split {
        let r = http
            .post(format!("{base}/instances"))
            .json(&json!({ "model": a.model, "placement": placement, "num_ctx": a.ctx_size }))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(error_of(r).await);
        }
        if a.verbose {
            eprintln!("placement: {}", r.json::<Value>().await?["stages"]);
        }
    }
    let prompt = super::run::read_prompt(a)?;
    let mut history = Vec::new();
    let mut opts = options(a);
    if let Some(p) = prompt {
        history.push(json!({ "role": "user", "content": p }));
        chat(&http, base, a, &opts, &history).await?;
        return Ok(());
    }
    loop {
        let Some(line) = super::run::chat_line()? else { return Ok(()) };
        match line.trim() {
            "" => continue,
            "/bye" => return Ok(()),
            "/clear" => {
                history.clear();
                outln!("Cleared session context");
                continue;
            }
            l if l.starts_with("/set parameter ") => {
                match set_parameter(&mut opts, &l["/set parameter ".len()..]) {
                    Ok(m) => outln!("{m}"),
                    Err(e) => outln!("Error: {e}"),
                }
                continue;
            }
            "/?" | "/help" => {
                outln!(
                    "/set parameter NAME VALUE   temperature, top_k, top_p, min_p, repeat_penalty, seed, num_predict"
                );
                outln!("/clear                      forget the conversation");
                outln!("/bye                        exit (or Ctrl-D)");
                continue;
            }
            l if l.starts_with('/') => {
                outln!("Unknown command '{l}'. Type /? for help");
                continue;
            }
            l => history.push(json!({ "role": "user", "content": l })),
        }
        let reply = chat(&http, base, a, &opts, &history).await?;
        history.push(json!({ "role": "assistant", "content": reply }));
        outln!();
    }
}

fn set_parameter(opts: &mut Value, rest: &str) -> Result<String, String> {
    let (name, value) = rest.trim().split_once(' ').ok_or("usage: /set parameter NAME VALUE")?;
    let value = value.trim();
    let v: Value = match name {
        "temperature" | "top_p" | "min_p" | "repeat_penalty" => {
            json!(value.parse::<f64>().map_err(|_| format!("{value:?} is not a number"))?)
        }
        "top_k" | "seed" | "num_predict" => {
            json!(value.parse::<i64>().map_err(|_| format!("{value:?} is not an integer"))?)
        }
        _ => return Err(format!("unknown parameter {name:?}")),
    };
    opts[name] = v;
    Ok(format!("Set parameter '{name}' to '{value}'"))
}

async fn chat(
    http: &reqwest::Client,
    base: &str,
    a: &RunArgs,
    opts: &Value,
    messages: &[Value],
) -> anyhow::Result<String> {
    let body = json!({ "model": a.model, "messages": messages, "options": opts, "stream": true });
    let mut r = http.post(format!("{base}/api/chat")).json(&body).send().await?;
    if !r.status().is_success() {
        return Err(error_of(r).await);
    }
    let (mut buf, mut reply) = (String::new(), String::new());
    let mut out = std::io::stdout();
    while let Some(chunk) = r.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let v: Value = serde_json::from_str(line.trim()).unwrap_or_default();
            if let Some(e) = v["error"].as_str() {
                return Err(anyhow::anyhow!("{e}"));
            }
            if let Some(t) = v["message"]["content"].as_str() {
                reply.push_str(t);
                out.write_all(t.as_bytes())?;
                out.flush()?;
            }
            if v["done"] == true {
                outln!();
                if a.verbose {
                    if let Ok(cl) = http.get(format!("{base}/cluster")).send().await {
                        let cl: Value = cl.json().await.unwrap_or_default();
                        let stages: Vec<String> = cl["instances"]
                            .as_array()
                            .and_then(|v| v.first())
                            .and_then(|i| i["stages"].as_array().cloned())
                            .unwrap_or_default()
                            .iter()
                            .map(|s| format!("{} {}:{}", s["node"].as_str().unwrap_or("?"), s["begin"], s["end"]))
                            .collect();
                        eprintln!("placement: {}", stages.join(", "));
                    }
                    let ns = |k: &str| v[k].as_u64().unwrap_or(0) as f64 / 1e9;
                    let rate =
                        |n: &str, d: &str| if ns(d) > 0.0 { v[n].as_u64().unwrap_or(0) as f64 / ns(d) } else { 0.0 };
                    eprintln!("total duration:       {:.3}s", ns("total_duration"));
                    eprintln!("load duration:        {:.3}s", ns("load_duration"));
                    eprintln!("prompt eval count:    {} token(s)", v["prompt_eval_count"]);
                    eprintln!(
                        "prompt eval rate:     {:.2} tokens/s",
                        rate("prompt_eval_count", "prompt_eval_duration")
                    );
                    eprintln!("eval count:           {} token(s)", v["eval_count"]);
                    eprintln!("eval rate:            {:.2} tokens/s", rate("eval_count", "eval_duration"));
                }
            }
        }
    }
    Ok(reply)
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
