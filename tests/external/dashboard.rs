//! The dashboard in a real browser: three `exo serve` processes on loopback (the first with an
//! API key), a model placed over all three, and headless Chromium driven through chromedriver
//! (WebDriver over HTTP). Checked from the DOM: the page asks for the key, then shows 3 nodes,
//! the placed model's layer map, a placement preview, and streamed text after a chat message; it
//! fits 1280x800 and a phone's width without sideways scrolling. Screenshots go to
//! `target/tmp/dashboard/` (docs/dashboard.png is the 1280x800 one).
//!
//! Needs Debian's `chromium` and `chromium-driver`: under CI a missing browser fails the test,
//! elsewhere it is skipped with the reason printed.

use crate::common;

use common::nodes::{spawn_with, wait_for, Node};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "dashboard-test-key";

fn which(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| std::env::split_paths(&path).map(|d| d.join(n)).find(|p| p.is_file()))
}

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A WebDriver session: just the commands this test needs.
struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "{path}: {v}");
        v["value"].clone()
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({ "script": script, "args": [] }))).await
    }

    /// Polls `script` until it returns true (`limit` at most).
    async fn until(&self, what: &str, script: &str, limit: Duration) {
        let t = Instant::now();
        while self.js(script).await != json!(true) {
            let page = self.js("return document.body.innerText").await;
            assert!(
                t.elapsed() < limit,
                "timed out waiting for {what}; the page says:\n{}",
                page.as_str().unwrap_or("")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn element(&self, css: &str) -> String {
        let v =
            self.cmd(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css }))).await;
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).unwrap().to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/value"), Some(json!({ "text": text }))).await;
    }

    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{e}/click"), Some(json!({}))).await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(reqwest::Method::POST, "/window/rect", Some(json!({ "width": width, "height": height }))).await;
    }

    async fn screenshot(&self, to: &Path) {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        std::fs::write(to, base64(b64.as_str().unwrap())).unwrap();
    }
}

fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for ch in digits.chunks(4) {
        let n = ch.iter().enumerate().fold(0u32, |n, (i, d)| n | (*d as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..ch.len()]);
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGVsbG8h"), b"hello!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium() {
    let (Some(chromium), Some(chromedriver)) = (which(&["chromium", "chromium-browser"]), which(&["chromedriver"]))
    else {
        common::skip(
            "chromium or chromedriver is not installed (scripts/setup.sh, or apt-get install chromium chromium-driver)",
        );
        return;
    };
    let models = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.path().join("tiny-llama.gguf")).unwrap();
    // the chat talks to the real model when it is here (CI has it): real words in the screenshot
    let chat_model = match common::real::model() {
        Some(p) => {
            std::os::unix::fs::symlink(p, models.path().join("smollm2-135m.gguf")).unwrap();
            "smollm2-135m"
        }
        None => "tiny-llama",
    };
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
        // a speculates (its instances show their proposals' acceptance)
        let extra: &[&str] = if i == 0 { &["--api-key", KEY, "--draft", "ngram"] } else { &[] };
        let peers: Vec<&str> = nodes.iter().map(|n| n.peer.as_str()).collect();
        let node = spawn_with(n, models.path(), &peers, extra);
        nodes.push(node);
    }
    let api = nodes[0].api.clone();
    let mut auth = reqwest::header::HeaderMap::new();
    auth.insert(reqwest::header::AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
    let http = reqwest::Client::builder().default_headers(auth).build().unwrap();
    wait_for(&http, &format!("{api}/cluster"), |v| v["nodes"].as_array().is_some_and(|n| n.len() == 3)).await;
    let placement = json!([{ "node": "a", "begin": 0, "end": 3 }, { "node": "b", "begin": 3, "end": 6 }, { "node": "c", "begin": 6, "end": 8 }]);
    let r = http
        .post(format!("{api}/instances"))
        .json(&json!({ "model": "tiny-llama", "placement": placement }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    // the page is public, its data is not
    let plain = reqwest::Client::new();
    assert_eq!(plain.get(format!("{api}/dashboard")).send().await.unwrap().status(), 200);
    assert_eq!(plain.get(format!("{api}/dashboard/app.js")).send().await.unwrap().status(), 200);
    assert_eq!(plain.get(format!("{api}/dashboard/status")).send().await.unwrap().status(), 401);
    assert_eq!(plain.get(format!("{api}/")).send().await.unwrap().text().await.unwrap(), "exo is running");

    // chromedriver cannot report a port it chose: this one is free now (a small race, here only)
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wd = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_for(&wd, &format!("{base}/status"), |v| v["value"]["ready"] == true).await;
    let profile = tempfile::tempdir().unwrap();
    let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
        "binary": chromium,
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800",
                 "--hide-scrollbars", format!("--user-data-dir={}", profile.path().display())] } } } });
    let v: Value = wd.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
    let id = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
    let s = Session { http: wd.clone(), url: format!("{base}/session/{id}") };
    let limit = Duration::from_secs(20);
    s.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": format!("{api}/dashboard") }))).await;

    // the key, asked for once, typed in, then the live view
    s.until("the API key form", "return !document.getElementById('key-bar').hidden", limit).await;
    s.type_into("#key-input", KEY).await;
    s.click("#key-bar button").await;
    s.until("3 nodes", "return document.querySelectorAll('#nodes .node').length === 3", limit).await;
    let key_bar = "return getComputedStyle(document.getElementById('key-bar')).display";
    assert_eq!(s.js(key_bar).await, json!("none"), "the key form is gone once the key works");
    assert_eq!(s.js("return sessionStorage.getItem('exo-api-key')").await, json!(KEY));
    let topo = "return document.querySelectorAll('#topology .topo-node').length === 3 && document.querySelectorAll('#topology .link').length >= 2";
    s.until("the topology picture", topo, limit).await;
    let map = "return [...document.querySelectorAll('.instance[data-model=\"tiny-llama\"] .layer-map .stage')].map(e => e.textContent).join(',')";
    let t = Instant::now();
    while s.js(map).await != json!("a 0:3,b 3:6,c 6:8") {
        assert!(t.elapsed() < limit, "layer map: {}", s.js(map).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let colored = "return new Set([...document.querySelectorAll('.instance .layer-map .stage')].map(e => getComputedStyle(e).backgroundColor)).size";
    assert_eq!(s.js(colored).await, json!(3), "each node's stages in its own colour");

    // a chat message: text streams in, then the rates
    let pick = format!(
        "const s = document.getElementById('chat-model'); \
         if (![...s.options].some(o => o.value === '{chat_model}')) return false; s.value = '{chat_model}'; return true"
    );
    s.until("the model picker", &pick, limit).await;
    // greedy: the real model's plain answer
    s.js("document.getElementById('chat-temp').value = '0'; return true").await;
    s.type_into("#chat-input", "What is the capital of France?").await;
    s.click("#chat-send").await;
    // (the real model loads on node a first)
    let long = Duration::from_secs(60);
    s.until("streamed text", "return document.querySelector('#chat-output .answer').textContent.length > 0", long)
        .await;
    s.until("the rates", "return document.getElementById('chat-rates').textContent.includes('generated')", long).await;
    // the stage figures come from the stages themselves
    let compute = "return [...document.querySelectorAll('.instance td')].some(td => / s$/.test(td.textContent) && parseFloat(td.textContent) > 0)";
    s.until("per-stage compute time", compute, limit).await;
    let spec = format!(
        "return [...document.querySelectorAll('.instance[data-model=\"{chat_model}\"] .figures')].some(f => f.textContent.includes('draft ngram'))"
    );
    s.until("the instance's speculation", &spec, limit).await;

    // a placement preview: ours, exo's split, one node, each placeable
    s.type_into("#preview-model", "tiny-llama").await;
    s.click("#preview-form button").await;
    s.until("3 candidates", "return document.querySelectorAll('#preview .candidate .place').length === 3", limit).await;

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth + 1";
    for (w, h, file) in [(1280, 800, "dashboard-1280x800.png"), (390, 844, "dashboard-phone.png")] {
        s.resize(w, h).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s.js(fits).await, json!(true), "sideways scrolling at {w}px");
        s.screenshot(&shots.join(file)).await;
        eprintln!("screenshot: {}", shots.join(file).display());
    }
    s.cmd(reqwest::Method::DELETE, "", None).await;
}
