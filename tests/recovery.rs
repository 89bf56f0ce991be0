//! Self-healing with three `exo serve` processes: a forced 3-stage placement streams 200 greedy
//! tokens while a stage node is killed (-9), stopped (SIGSTOP) or asked to leave (SIGTERM); the
//! stream pauses, the runtime re-places the model over the nodes left, replays the tokens so far
//! and completes with exactly the text of an uninterrupted run. A killed coordinator's stages
//! are unloaded by their nodes. A bounded chaos run ends with nothing leaked.

mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKENS: u64 = 200;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Node {
    name: &'static str,
    api: u16,
    peer: u16,
    peers: Vec<u16>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, dir: &Path) {
        let peers: Vec<String> = self.peers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{}.log", self.name))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_exo"))
            .args(["serve", "--api-addr", &format!("127.0.0.1:{}", self.api)])
            .args(["--peer-addr", &format!("127.0.0.1:{}", self.peer), "--node-name", self.name])
            .args(["--threads", "1", "--peers", &peers.join(",")])
            .env("EXO_DECODE_GBPS", "10")
            .env("EXO_NO_DISCOVERY", "1")
            .env("EXO_MODELS_DIRS", dir)
            .env("HOME", dir)
            .env("EXO_OFFLINE", "1")
            .env("EXO_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.api)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill();
    }
}

/// What a test does to the cluster in the middle of a stream.
type Disrupt = dyn FnMut(&mut Cluster);

struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    http: reqwest::Client,
    eos: u64,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        // the calm model: text replayed in one batch equals text decoded token by token
        let model = common::model("tiny-llama-calm");
        std::os::unix::fs::symlink(&model, dir.path().join("tiny-llama.gguf")).unwrap();
        let eos =
            exo::gguf::GgufFile::open(&model).unwrap().get("tokenizer.ggml.eos_token_id").unwrap().as_u64().unwrap();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            let peers = ports.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
            nodes.push(Node { name, api: free_port(), peer: ports[i], peers, child: None });
        }
        for n in &mut nodes {
            n.start(dir.path());
        }
        let c = Cluster { dir, nodes, http: reqwest::Client::new(), eos };
        c.wait_nodes(&["a", "b", "c"]).await;
        c
    }

    /// The nodes' logs, for a failure's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{}.log", n.name))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!("--- {} ---\n{}\n", n.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }

    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    async fn get(&self, url: &str) -> Option<Value> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// Waits until node a sees exactly `names` (with their profiles).
    async fn wait_nodes(&self, names: &[&str]) {
        let t = Instant::now();
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
                if seen == names {
                    return;
                }
            }
            if t.elapsed() > Duration::from_secs(30) {
                panic!("the nodes {names:?} did not show up\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn place(&self, placement: Value) {
        let r = self
            .http
            .post(format!("{}/instances", self.nodes[0].base()))
            .json(&json!({ "model": "tiny-llama", "placement": placement }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// Streams 200 greedy tokens from node a (end of generation banned); `at` runs once the
    /// `n`th piece has arrived. Returns the text and the longest pause between pieces.
    async fn stream(
        &mut self,
        prompt: &str,
        mut at: Option<(usize, &mut Disrupt)>,
    ) -> (String, Duration) {
        let body = json!({ "model": "tiny-llama", "prompt": prompt, "max_tokens": TOKENS, "temperature": 0,
            "stream": true, "logit_bias": { self.eos.to_string(): -100 } });
        let mut r =
            self.http.post(format!("{}/v1/completions", self.nodes[0].base())).json(&body).send().await.unwrap();
        assert!(r.status().is_success());
        let (mut text, mut buf, mut pieces) = (String::new(), String::new(), 0usize);
        let (mut last, mut longest) = (Instant::now(), Duration::ZERO);
        while let Some(chunk) =
            tokio::time::timeout(Duration::from_secs(60), r.chunk()).await.expect("the stream hung").unwrap()
        {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find("\n\n") {
                let event: String = buf.drain(..i + 2).collect();
                let data = event.trim().trim_start_matches("data: ");
                if data == "[DONE]" {
                    return (text, longest);
                }
                let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
                assert!(v["error"].is_null(), "the stream failed: {v}");
                if let Some(t) = v["choices"][0]["text"].as_str().filter(|t| !t.is_empty()) {
                    text.push_str(t);
                    pieces += 1;
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                    if let Some((n, f)) = at.as_mut() {
                        if pieces == *n {
                            f(self);
                            at = None;
                            last = Instant::now();
                        }
                    }
                }
            }
        }
        panic!("the stream ended without [DONE]: {text}")
    }

    /// Stages this node hosts, as /cluster lists them.
    async fn hosted(&self, node: usize) -> usize {
        let v = self.get(&format!("{}/cluster", self.nodes[node].base())).await.unwrap();
        v["hosted_stages"].as_array().map_or(0, |a| a.len())
    }
}

fn three() -> Value {
    json!([{ "node": "a", "begin": 0, "end": 3 }, { "node": "b", "begin": 3, "end": 6 }, { "node": "c", "begin": 6, "end": 8 }])
}

const PROMPT: &str = "The story of the three machines that shared one model began on a rainy morning, when";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_hung_and_leaving_stage_nodes_never_lose_the_stream() {
    let mut c = Cluster::start().await;
    c.place(three()).await;
    let (want, _) = c.stream(PROMPT, None).await;
    assert!(want.len() > 100, "{want}");
    let dir: PathBuf = c.dir.path().to_path_buf();

    // kill -9 the middle stage at about token 50: same text
    c.place(three()).await;
    let (got, pause) = c.stream(PROMPT, Some((50, &mut |c: &mut Cluster| c.node("b").kill()))).await;
    assert_eq!(got, want, "middle stage killed");
    eprintln!("middle stage killed: longest pause {pause:?}");
    c.node("b").start(&dir);
    c.wait_nodes(&["a", "b", "c"]).await;

    // the last stage
    c.place(three()).await;
    let (got, _) = c.stream(PROMPT, Some((50, &mut |c: &mut Cluster| c.node("c").kill()))).await;
    assert_eq!(got, want, "last stage killed");
    c.node("c").start(&dir);
    c.wait_nodes(&["a", "b", "c"]).await;

    // the first stage, on a node other than the coordinator
    c.place(json!([{ "node": "b", "begin": 0, "end": 5 }, { "node": "c", "begin": 5, "end": 8 }])).await;
    let (got, _) = c.stream(PROMPT, Some((50, &mut |c: &mut Cluster| c.node("b").kill()))).await;
    assert_eq!(got, want, "first stage killed");
    c.node("b").start(&dir);
    c.wait_nodes(&["a", "b", "c"]).await;

    // SIGSTOP: the node hangs; failover within 5 s
    c.place(three()).await;
    let (got, pause) = c.stream(PROMPT, Some((50, &mut |c: &mut Cluster| c.node("c").signal("STOP")))).await;
    assert_eq!(got, want, "stage node stopped");
    eprintln!("stage node stopped: longest pause {pause:?}");
    assert!(pause < Duration::from_secs(5), "failover took {pause:?}");
    c.node("c").signal("CONT");
    c.node("c").kill();
    c.node("c").start(&dir);
    c.wait_nodes(&["a", "b", "c"]).await;

    // SIGTERM: the node leaves in order; the pause is no longer than a reload
    c.place(three()).await;
    let (got, pause) = c.stream(PROMPT, Some((50, &mut |c: &mut Cluster| c.node("b").signal("TERM")))).await;
    assert_eq!(got, want, "stage node left");
    eprintln!("stage node left: longest pause {pause:?}");
    assert!(pause < Duration::from_secs(3), "the departure paused the stream for {pause:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_coordinators_stages_are_unloaded() {
    let mut c = Cluster::start().await;
    c.place(three()).await;
    assert_eq!((c.hosted(1).await, c.hosted(2).await), (1, 1));
    c.node("a").kill();
    let t = Instant::now();
    while c.hosted(1).await + c.hosted(2).await > 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "stages of a dead coordinator stayed loaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
