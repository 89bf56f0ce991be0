//! Two nodes in network namespaces this test creates (veth pairs on a bridge) find each other by
//! mDNS alone and run a 2-stage pipeline with the single-node output. Needs root and iproute2;
//! skipped with a printed reason otherwise (under CI that is a failure). Everything it creates is
//! removed afterwards.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Net {
    ns: Vec<String>,
    bridge: String,
    children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn in_ns(ns: &str, cmd: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c
}

fn http(ns: &str, method: &str, url: &str, body: Option<&str>) -> Option<serde_json::Value> {
    let mut args = vec!["curl", "-s", "-m", "20", "-X", method, url];
    if let Some(b) = body {
        args.extend(["-H", "content-type: application/json", "-d", b]);
    }
    let out = in_ns(ns, &args).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn setup(tag: &str) -> Result<Net, String> {
    let mut net = Net { ns: vec![], bridge: format!("exb{tag}"), children: vec![] };
    ip(&["link", "add", &net.bridge, "type", "bridge"])?;
    ip(&["link", "set", &net.bridge, "up"])?;
    for i in 1..=2 {
        let ns = format!("exo-test-{tag}-{i}");
        ip(&["netns", "add", &ns])?;
        net.ns.push(ns.clone());
        let (host, peer) = (format!("exh{tag}{i}"), format!("exp{tag}{i}"));
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &ns])?;
        ip(&["link", "set", &host, "master", &net.bridge])?;
        ip(&["link", "set", &host, "up"])?;
        let addr = format!("10.201.0.{i}/24");
        for args in [
            vec!["addr", "add", addr.as_str(), "dev", peer.as_str()],
            vec!["link", "set", peer.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "224.0.0.0/4", "dev", peer.as_str()],
        ] {
            let mut a = vec!["netns", "exec", ns.as_str(), "ip"];
            a.extend(args);
            ip(&a)?;
        }
    }
    Ok(net)
}

#[test]
fn two_nodes_find_each_other_by_mdns_in_network_namespaces() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let have_curl = Command::new("curl").arg("--version").output().is_ok();
    if !root || !have_curl {
        common::skip(&format!("needs root and curl (root: {root}, curl: {have_curl})"));
        return;
    }
    let tag = format!("{}", std::process::id() % 10000);
    let mut net = match setup(&tag) {
        Ok(n) => n,
        Err(e) => {
            common::skip(&format!("cannot create network namespaces here: {e}"));
            return;
        }
    };
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    let namespace = format!("netns-test-{tag}");
    for i in 1..=2 {
        let ns = net.ns[i - 1].clone();
        let child = in_ns(&ns, &[env!("CARGO_BIN_EXE_exo"), "serve"])
            .args(["--api-addr", &format!("10.201.0.{i}:52415"), "--peer-addr", &format!("10.201.0.{i}:52416")])
            .args(["--node-name", &format!("n{i}"), "--namespace", &namespace, "--threads", "1"])
            .env("EXO_MODELS_DIRS", models.path())
            .env("HOME", models.path())
            .env("EXO_DECODE_GBPS", "10")
            .env("EXO_OFFLINE", "1")
            .env("EXO_LINK_TARGETS", std::env::join_paths(common::link_targets()).unwrap())
            .env_remove("EXO_NO_DISCOVERY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        net.children.push(child);
    }
    let ns1 = net.ns[0].clone();
    let api = "http://10.201.0.1:52415";
    // no --peers anywhere: only mDNS can introduce them
    let t = Instant::now();
    loop {
        let found = http(&ns1, "GET", &format!("{api}/cluster"), None)
            .is_some_and(|v| v["nodes"].as_array().is_some_and(|n| n.iter().any(|x| x["name"] == "n2")));
        if found {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "n1 never discovered n2");
        std::thread::sleep(Duration::from_millis(250));
    }
    let gen = || {
        let body = r#"{"model": "tiny-llama", "prompt": "Hello from a namespace", "raw": true, "stream": false, "options": {"num_predict": 16, "temperature": 0}}"#;
        let v = http(&ns1, "POST", &format!("{api}/api/generate"), Some(body)).expect("a JSON answer");
        v["response"].as_str().unwrap_or_else(|| panic!("{v}")).to_string()
    };
    let alone = gen();
    let placed = http(
        &ns1,
        "POST",
        &format!("{api}/instances"),
        Some(r#"{"model": "tiny-llama", "placement": [{"node": "n1", "begin": 0, "end": 4}, {"node": "n2", "begin": 4, "end": 8}]}"#),
    )
    .expect("a JSON answer");
    assert_eq!(placed["stages"][1]["node"], "n2", "{placed}");
    assert_eq!(gen(), alone);
}
