//! `exo serve` processes on loopback, joined with --peers, for the multi-process tests.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The ports an `exo serve` child binds. [`ANY`] lets the child choose (127.0.0.1:0) and reads the
/// ports back from the line it prints once bound, so no other test can take them in between; a
/// restarted node passes the ports it had, so its peers find it again.
pub type Ports = (u16, u16);
pub const ANY: Ports = (0, 0);

/// A node process; killed when dropped. Its log is `MODELS/NAME.log`.
pub struct Node {
    pub name: &'static str,
    pub api: String,
    pub peer: String,
    pub ports: Ports,
    pub child: Child,
    /// Its stderr.
    pub log: std::path::PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &'static str, models: &Path, peers: &[&str]) -> Node {
    spawn_with(name, models, peers, &[])
}

/// One thread per node, no mDNS, no startup measurement, offline, models from `models` only;
/// `peers` are other nodes' `peer` addresses.
pub fn spawn_with(name: &'static str, models: &Path, peers: &[&str], extra: &[&str]) -> Node {
    spawn_env(name, models, ANY, peers, extra, &[])
}

/// As [`spawn_with`], at `ports`, with more environment (e.g. one EXO_CONFIG_DIR for nodes whose
/// models dirs differ, so that they share the cluster secret).
pub fn spawn_env(
    name: &'static str,
    models: &Path,
    ports: Ports,
    peers: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Node {
    let log = models.join(format!("{name}.log"));
    let mut child = serve_command(name, models, ports, peers)
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let ports = if ports == ANY { bound(&log, &mut child) } else { ports };
    Node {
        name,
        api: format!("http://127.0.0.1:{}", ports.0),
        peer: format!("127.0.0.1:{}", ports.1),
        ports,
        child,
        log,
    }
}

/// `exo serve` as every test node runs it (the one launcher: [`spawn_env`] and
/// tests/common/procs.rs build on it): models from `models` only (also its HOME), one thread, no
/// mDNS, no startup measurement, offline, info logs, no cluster token from the environment.
pub fn serve_command(name: &str, models: &Path, ports: Ports, peers: &[&str]) -> Command {
    let mut c = super::exo_command();
    c.args(serve_args(name, ports, peers))
        .envs(NODE_ENV.iter().copied())
        .env("EXO_MODELS_DIRS", models)
        .env("HOME", models)
        .env_remove("EXO_CLUSTER_TOKEN");
    c
}

const NODE_ENV: [(&str, &str); 4] =
    [("EXO_DECODE_GBPS", "10"), ("EXO_NO_DISCOVERY", "1"), ("EXO_OFFLINE", "1"), ("EXO_LOG", "info")];

/// `exo serve` on loopback at `ports` (0: the child chooses), one thread, dialing `peers`.
fn serve_args(name: &str, (api, peer): Ports, peers: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["serve", "--api-addr", &format!("127.0.0.1:{api}")]
        .into_iter()
        .chain(["--peer-addr", &format!("127.0.0.1:{peer}"), "--node-name", name, "--threads", "1"])
        .map(str::to_string)
        .collect();
    if !peers.is_empty() {
        a.extend(["--peers".to_string(), peers.join(",")]);
    }
    a
}

/// The (api, peer) ports a starting `exo serve` prints in its banner ("serving on http://ADDR
/// (peer port ADDR, ..."), read from its log; fails with the log if it exits or takes 60 s.
pub fn bound(log: &Path, child: &mut Child) -> Ports {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(p) = text.lines().find_map(parse_banner) {
            return p;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("exo serve exited ({status}) before binding:\n{text}");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "exo serve did not bind in 60 s:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn parse_banner(line: &str) -> Option<Ports> {
    let rest = line.split_once("serving on http://")?.1;
    let (api, rest) = rest.split_once(" (peer port ")?;
    let peer = rest.split([',', ')']).next()?;
    let port = |a: &str| a.parse::<std::net::SocketAddr>().ok().map(|a| a.port());
    Some((port(api)?, port(peer)?))
}

/// `n` nodes named from `names`, each dialing the ones started before it (so every pair is
/// connected); returns once the first sees them all.
pub async fn cluster(names: &[&'static str], models: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for n in names {
        let peers: Vec<&str> = nodes.iter().map(|n| n.peer.as_str()).collect();
        let node = spawn(n, models, &peers);
        nodes.push(node);
    }
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
