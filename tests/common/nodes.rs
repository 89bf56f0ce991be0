//! `exo serve` processes on loopback, joined with --peers, for the multi-process tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A node process; killed when dropped. Its log is `MODELS/NAME.log`.
pub struct Node {
    pub name: &'static str,
    pub api: String,
    pub peer: String,
    pub child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &'static str, models: &Path, api: u16, peer: u16, peers: &[u16]) -> Node {
    spawn_with(name, models, api, peer, peers, &[])
}

/// One thread per node, no mDNS, no startup measurement, offline, models from `models` only.
pub fn spawn_with(name: &'static str, models: &Path, api: u16, peer: u16, peers: &[u16], extra: &[&str]) -> Node {
    spawn_env(name, models, (api, peer), peers, extra, &[])
}

/// As [`spawn_with`], with more environment (e.g. one EXO_CONFIG_DIR for nodes whose models dirs
/// differ, so that they share the cluster secret).
pub fn spawn_env(
    name: &'static str,
    models: &Path,
    (api, peer): (u16, u16),
    peers: &[u16],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    let peers: Vec<String> = peers.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let child = Command::new(env!("CARGO_BIN_EXE_exo"))
        .args([
            "serve",
            "--api-addr",
            &format!("127.0.0.1:{api}"),
            "--peer-addr",
            &format!("127.0.0.1:{peer}"),
            "--node-name",
            name,
            "--threads",
            "1",
        ])
        .args(if peers.is_empty() { vec![] } else { vec!["--peers".to_string(), peers.join(",")] })
        .args(extra)
        .env("EXO_DECODE_GBPS", "10")
        .env("EXO_NO_DISCOVERY", "1")
        .env("EXO_MODELS_DIRS", models)
        .env("HOME", models)
        .env("EXO_OFFLINE", "1")
        .env("EXO_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(models.join(format!("{name}.log"))).unwrap())
        .spawn()
        .unwrap();
    Node { name, api: format!("http://127.0.0.1:{api}"), peer: format!("127.0.0.1:{peer}"), child }
}

/// `n` nodes named from `names`, each peered with all the others; returns once the first sees
/// them all.
pub async fn cluster(names: &[&'static str], models: &Path) -> Vec<Node> {
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let nodes: Vec<Node> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let others: Vec<u16> = ports.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, p)| p.1).collect();
            spawn(n, models, ports[i].0, ports[i].1, &others)
        })
        .collect();
    let http = reqwest::Client::new();
    let want = names.len();
    wait_for(&http, &format!("{}/cluster", nodes[0].api), |v| v["nodes"].as_array().is_some_and(|n| n.len() == want))
        .await;
    nodes
}

/// Polls `url` until `pred` holds (20 s at most).
pub async fn wait_for(http: &reqwest::Client, url: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        if let Ok(r) = http.get(url).send().await {
            if let Ok(v) = r.json::<Value>().await {
                if pred(&v) {
                    return v;
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting on {url}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
