//! A cluster of `exo serve` processes on loopback that tests stop, kill and start again
//! (tests/procs/recovery.rs, tests/procs/chaos.rs). Every node serves one model: the calm generated one as
//! "tiny-llama", or the real SmolLM2 as "smollm2-135m" ([`Procs::start_serving`]). The nodes
//! compute with batch-invariant kernels (the default), so a recovered stream, replayed in one
//! batch, can be compared with an uninterrupted one byte for byte.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nodes::{bound, serve_command, Ports, ANY};

pub struct Proc {
    pub name: &'static str,
    /// (0, 0) until first started; then the ports it chose, kept across restarts.
    pub ports: Ports,
    peers: Vec<String>,
    extra: Vec<String>,
    /// Environment over the defaults (EXO_DECODE_GBPS=10, ...).
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Proc {
    pub fn start(&mut self, dir: &Path) {
        let log_path = dir.join(format!("{}.log", self.name));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let peers: Vec<&str> = self.peers.iter().map(String::as_str).collect();
        let mut child = serve_command(self.name, dir, self.ports, &peers)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        if self.ports == ANY {
            self.ports = bound(&log_path, &mut child);
        }
        self.child = Some(child);
    }

    pub fn peer(&self) -> String {
        format!("127.0.0.1:{}", self.ports.1)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    /// kill -9, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits (up to `limit`) for a process sent SIGTERM to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let t = Instant::now();
        while let Some(c) = self.child.as_mut() {
            if c.try_wait().unwrap().is_some() {
                self.child = None;
                return true;
            }
            if t.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB");
        kb.trim().parse::<u64>().unwrap() * 1024
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Procs {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Proc>,
    pub http: reqwest::Client,
    /// The model's end-of-generation token (banned, so that every stream runs to its length).
    pub eos: u64,
    /// The name the nodes serve the model under.
    pub model: &'static str,
}

impl Procs {
    /// Starts the nodes (name, extra `exo serve` arguments), each peered with all the others,
    /// and waits until the first sees them all. The first is the one the tests talk to.
    pub async fn start(specs: &[(&'static str, &[&str])]) -> Procs {
        Self::launch(&super::model("tiny-llama-calm"), "tiny-llama", false, specs).await
    }

    /// The same with the GGUF `model` served as `name`, every node with `--exact`
    /// (batch-invariant kernels: a replay gives the bits the decode gave).
    pub async fn start_serving(model: &Path, name: &'static str, specs: &[(&'static str, &[&str])]) -> Procs {
        Self::launch(model, name, true, specs).await
    }

    async fn launch(model: &Path, name: &'static str, exact: bool, specs: &[(&'static str, &[&str])]) -> Procs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::hard_link(model, dir.path().join(format!("{name}.gguf")))
            .or_else(|_| std::fs::copy(model, dir.path().join(format!("{name}.gguf"))).map(|_| ()))
            .unwrap();
        let eos =
            exo::gguf::GgufFile::open(model).unwrap().get("tokenizer.ggml.eos_token_id").unwrap().as_u64().unwrap();
        // each node dials the ones started before it: every pair is connected
        let mut nodes: Vec<Proc> = Vec::new();
        for (name, extra) in specs {
            let peers = nodes.iter().map(Proc::peer).collect();
            let extra = extra.iter().map(|s| s.to_string()).collect();
            let env = if exact { vec![("EXO_EXACT".to_string(), "true".to_string())] } else { vec![] };
            let mut n = Proc { name, ports: ANY, peers, extra, env, child: None };
            n.start(dir.path());
            nodes.push(n);
        }
        let c = Procs { dir, nodes, http: reqwest::Client::new(), eos, model: name };
        let names: Vec<&str> = specs.iter().map(|s| s.0).collect();
        c.wait_nodes(&names).await;
        c
    }

    /// The nodes' logs (the last lines of each), for a failure's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!("--- {} ---\n{}\n", n.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }

    /// Starts another node that dials all the others (they learn of it from its connection).
    pub fn join(&mut self, name: &'static str, extra: &[&str], env: &[(&str, &str)]) {
        let peers = self.nodes.iter().map(Proc::peer).collect();
        let mut n = Proc {
            name,
            ports: ANY,
            peers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
        };
        n.start(self.dir.path());
        self.nodes.push(n);
    }

    pub fn node(&mut self, name: &str) -> &mut Proc {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    pub fn restart(&mut self, name: &str) {
        let dir = self.dir.path().to_path_buf();
        let n = self.node(name);
        n.kill();
        n.start(&dir);
    }

    pub async fn get(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// The id under which the first node lists node `name` now.
    pub async fn node_id(&self, name: &str) -> Option<String> {
        let v = self.get(&format!("{}/cluster", self.nodes[0].base())).await?;
        let n = v["nodes"].as_array()?.iter().find(|n| n["name"] == name)?;
        n["node_id"].as_str().map(str::to_string)
    }

    /// Waits until the first node lists `name` under an id other than `old` (a restarted node,
    /// not the entry of its previous process that has not timed out yet), with its profile.
    pub async fn wait_rejoined(&self, name: &str, old: Option<&str>) {
        let t = Instant::now();
        loop {
            if let Some(v) = self.get(&format!("{}/cluster", self.nodes[0].base())).await {
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                let fresh = |n: &&Value| n["name"] == name && n["profile"].is_object() && n["node_id"].as_str() != old;
                if nodes.iter().any(|n| fresh(&n)) {
                    return;
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                panic!("{name} did not rejoin\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the first node sees exactly `names` (with their profiles).
    pub async fn wait_nodes(&self, names: &[&str]) {
        let t = Instant::now();
        let mut want: Vec<&str> = names.to_vec();
        want.sort();
        loop {
            if let Some(v) = self.get(&format!("{}/cluster", self.nodes[0].base())).await {
                let mut seen: Vec<String> = v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|n| n["self"] == true || n["profile"].is_object())
                    .map(|n| n["name"].as_str().unwrap().to_string())
                    .collect();
                seen.sort();
                if seen == want {
                    return;
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                panic!("the nodes {names:?} did not show up\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Loads the model with this placement (through the first node).
    pub async fn place(&self, placement: Value) {
        self.place_via(0, placement).await
    }

    /// Loads the model with this placement through node `i` (its coordinator).
    pub async fn place_via(&self, i: usize, placement: Value) {
        let r = self
            .http
            .post(format!("{}/instances", self.nodes[i].base()))
            .json(&json!({ "model": self.model, "placement": placement }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// Stages node `i` hosts, as its /cluster lists them.
    pub async fn hosted(&self, i: usize) -> usize {
        let v = self.get(&format!("{}/cluster", self.nodes[i].base())).await.unwrap();
        v["hosted_stages"].as_array().map_or(0, |a| a.len())
    }

    /// A streaming greedy completion through the first node.
    pub fn client(&self) -> Client {
        self.client_at(0)
    }

    /// The same through node `i`.
    pub fn client_at(&self, i: usize) -> Client {
        Client {
            http: self.http.clone(),
            base: self.nodes[i].base(),
            eos: self.eos,
            model: self.model,
            sampling: json!({ "temperature": 0 }),
        }
    }
}

/// What a test's client needs to stream from the first node, apart from the cluster.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    eos: u64,
    model: &'static str,
    /// Sampling fields of every request (greedy by default).
    sampling: Value,
}

/// A completed stream: its text and the longest pause between two pieces.
pub struct Streamed {
    pub text: String,
    pub longest_pause: Duration,
}

impl Client {
    /// The same client sampling with `fields` (e.g. `{"temperature": 0.8, "seed": 7}`).
    pub fn sampling(mut self, fields: Value) -> Client {
        self.sampling = fields;
        self
    }

    /// Streams `tokens` greedy tokens (end of generation banned) with the OpenAI completions
    /// route; `on_piece(n)` runs as the nth piece arrives. An error event, a stream that ends
    /// without `[DONE]` or a 60 s silence is an `Err` with what was seen.
    pub async fn stream(&self, prompt: &str, tokens: u32, mut on_piece: impl FnMut(usize)) -> Result<Streamed, String> {
        let mut body = json!({ "model": self.model, "prompt": prompt, "max_tokens": tokens,
            "stream": true, "logit_bias": { self.eos.to_string(): -100 } });
        for (k, v) in self.sampling.as_object().into_iter().flatten() {
            body[k] = v.clone();
        }
        let mut r = self
            .http
            .post(format!("{}/v1/completions", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default()));
        }
        let (mut text, mut buf, mut pieces) = (String::new(), String::new(), 0usize);
        let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
        loop {
            let chunk = match tokio::time::timeout(Duration::from_secs(60), r.chunk()).await {
                Err(_) => return Err(format!("the stream hung after {text:?}")),
                Ok(Err(e)) => return Err(format!("the stream broke after {text:?}: {e}")),
                Ok(Ok(None)) => return Err(format!("the stream ended without [DONE]: {text:?}")),
                Ok(Ok(Some(c))) => c,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                let data = event.trim().trim_start_matches("data: ");
                if data == "[DONE]" {
                    return Ok(Streamed { text, longest_pause: longest });
                }
                let v: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
                if !v["error"].is_null() {
                    return Err(format!("the stream failed: {v}"));
                }
                if let Some(t) = v["choices"][0]["text"].as_str().filter(|t| !t.is_empty()) {
                    text.push_str(t);
                    pieces += 1;
                    longest = longest.max(last.elapsed());
                    on_piece(pieces);
                    last = Instant::now();
                }
            }
        }
    }
}
