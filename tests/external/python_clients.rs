//! A live `exo serve` driven by the real Python clients from PyPI (ollama, openai, anthropic),
//! with an API key: every client sends it and works; without it (or with a wrong one) each API
//! answers 401 in its own error shape.
//! `.ci/run` installs them into `.venv-clients/`; elsewhere set EXO_TEST_PYTHON to a Python that
//! has them. Without one the test is skipped, except under CI where that is a failure.

use crate::common;

use common::hub::{self, Hub};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EXO_TEST_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-clients/bin/python");
    venv.exists().then_some(venv)
}

const API_KEY: &str = "sk-exo-test-8f2c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_python_clients_against_exo_serve() {
    let Some(py) = python() else {
        common::skip("no Python with ollama/openai/anthropic (run scripts/setup.sh, or set EXO_TEST_PYTHON)");
        return;
    };
    // a hub for `ollama pull`
    let hub = Arc::new(Hub::default());
    hub.add("org/Pulled-GGUF", "Pulled-Q8_0.gguf", std::fs::read(common::model("tiny-qwen2")).unwrap());
    let hub_url = hub::serve(hub).await;

    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::os::unix::fs::symlink(common::model("tiny-llama"), models.join("tiny-llama.gguf")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = common::exo_command()
        .args(["serve", "--api-addr", &format!("127.0.0.1:{port}"), "--peer-addr", "127.0.0.1:0", "--threads", "2"])
        .env("HOME", home.path())
        .env("EXO_DECODE_GBPS", "10")
        .env("EXO_NO_DISCOVERY", "1")
        .env("EXO_API_KEY", API_KEY)
        .env("EXO_MODELS_DIRS", &models)
        .env("HF_ENDPOINT", &hub_url)
        .env_remove("EXO_OFFLINE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "exo serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/check_clients.py");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .args([&base, "tiny-llama", "hf.co/org/Pulled-GGUF:Q8_0", API_KEY])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));

    // clean shutdown on SIGTERM
    Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = server.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "exo serve did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(out.status.success(), "client checks failed:\n{text}");
    assert!(status.success(), "exo serve exited with {status}");
}
