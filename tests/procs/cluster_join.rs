//! Joining with a token across `exo serve` processes, each with its own config dir: `exo cluster
//! token` creates the secret (0600) and prints the token; `--join TOKEN` makes a node a member
//! (and saves the secret); a node of another cluster is refused on both sides, both logs naming
//! both key ids, and never appears in `/cluster`.

use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;
use common::nodes::{spawn_env, Node, Ports, ANY};

/// A node with its own config dir (its own cluster secret unless it joins with a token).
fn serve(name: &'static str, models: &Path, config: &Path, ports: Ports, peers: &[&str], extra: &[&str]) -> Node {
    spawn_env(name, models, ports, peers, extra, &[("EXO_CONFIG_DIR", config.to_str().unwrap())])
}

fn token(config: &Path) -> String {
    let out = common::exo_command()
        .args(["cluster", "token"])
        .env("EXO_CONFIG_DIR", config)
        .env_remove("EXO_CLUSTER_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn cluster(http: &reqwest::Client, n: &Node) -> Option<Value> {
    http.get(format!("{}/cluster", n.api)).send().await.ok()?.json().await.ok()
}

fn names(v: &Value) -> Vec<String> {
    v["nodes"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_joins_and_another_cluster_is_refused_both_ways() {
    use std::os::unix::fs::PermissionsExt;
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    let (ca, cb, cx) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tok = token(ca.path());
    assert!(tok.starts_with("exo1-") && tok.len() == 77, "{tok}");
    assert_eq!(token(ca.path()), tok, "the same secret every time");
    let mode = std::fs::metadata(ca.path().join("cluster-secret")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // a and x dial each other (x restarts at its ports once a's are known), b dials a
    let x = serve("x", models.path(), cx.path(), ANY, &[], &[]);
    let a = serve("a", models.path(), ca.path(), ANY, &[&x.peer], &[]);
    let x_ports = x.ports;
    drop(x);
    let x = serve("x", models.path(), cx.path(), x_ports, &[&a.peer], &[]);
    let b = serve("b", models.path(), cb.path(), ANY, &[&a.peer], &["--join", &tok]);
    let http = reqwest::Client::new();
    let t = Instant::now();
    let va = loop {
        if let Some(v) = cluster(&http, &a).await {
            if names(&v).contains(&"b".to_string()) {
                break v;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "b did not join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // x has been refused for a while by now, both ways (a dials x too)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let va = cluster(&http, &a).await.unwrap_or(va);
    assert_eq!(names(&va), ["a", "b"], "{va}");
    let vx = cluster(&http, &x).await.unwrap();
    assert_eq!(names(&vx), ["x"], "{vx}");
    let (ida, idx) =
        (va["nodes"][0]["cluster_key_id"].as_str().unwrap(), vx["nodes"][0]["cluster_key_id"].as_str().unwrap());
    assert_ne!(ida, idx);
    for n in [&a, &x] {
        let log = std::fs::read_to_string(&n.log).unwrap();
        let line = log.lines().find(|l| l.contains("another cluster")).unwrap_or_else(|| panic!("{log}"));
        assert!(line.contains(ida) && line.contains(idx), "{line}");
    }
    // the joined node saved the secret: its own token is now the cluster's
    drop(b);
    assert_eq!(token(cb.path()), tok);
}
