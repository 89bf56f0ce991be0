//! A live `exo serve` (with an API key) driven by real clients and frameworks nobody here wrote:
//! ollama-js and openai-node (tests/clients/js, `npm ci`), LangChain's ChatOllama and ChatOpenAI,
//! LiteLLM, and llm with llm-ollama (`.venv-clients/`). Chat, streaming, tools (forced where the
//! API can force them, so that the generated model's calls are valid by construction) and
//! structured outputs on the generated tiny-llama; a smaller set on the real SmolLM2-135M; and, as a
//! test of its own, embeddings through each client that has them, on both.
//! `.ci/run` (scripts/setup.sh) installs them; elsewhere set EXO_TEST_PYTHON to a Python that
//! has them. Without them the test is skipped, except under CI where that is a failure.

use crate::common;

use common::real;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const API_KEY: &str = "sk-exo-test-5d1e";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Python with the frameworks, or why there is none.
fn python() -> Result<PathBuf, String> {
    let py = match std::env::var_os("EXO_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => repo().join(".venv-clients/bin/python"),
    };
    let probe = "import importlib.util as u, sys; \
                 sys.exit(any(u.find_spec(m) is None for m in \
                 ['langchain_ollama', 'langchain_openai', 'litellm', 'llm', 'llm_ollama']))";
    let found = Command::new(&py).args(["-c", probe]).output();
    match found {
        Ok(o) if o.status.success() => Ok(py),
        _ => Err(format!("{} lacks langchain-ollama, langchain-openai, litellm, llm or llm-ollama", py.display())),
    }
}

/// `node` and the npm packages, or why not.
fn node() -> Result<PathBuf, String> {
    let ok = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        return Err("no `node` on PATH".into());
    }
    let js = repo().join("tests/clients/js");
    if !js.join("node_modules/openai").is_dir() || !js.join("node_modules/ollama").is_dir() {
        return Err(format!("no node_modules in {} (npm ci --prefix tests/clients/js)", js.display()));
    }
    Ok(js.join("check_clients.mjs"))
}

/// The clients this machine has: (python, node script); skipped (None) with the reason printed,
/// or a failure under CI, which must run them.
fn clients() -> Option<(PathBuf, PathBuf)> {
    match (python(), node()) {
        (Ok(py), Ok(js)) => Some((py, js)),
        (p, n) => {
            let why: Vec<String> = [p.err(), n.err()].into_iter().flatten().collect();
            common::skip(&format!("{} (run scripts/setup.sh, or set EXO_TEST_PYTHON)", why.join("; ")));
            None
        }
    }
}

struct Server {
    child: Child,
    base: String,
    _home: tempfile::TempDir,
}

impl Server {
    /// `exo serve` on a free loopback port with the API key, serving these (name, file) models.
    async fn start(models: &[(&str, &Path)]) -> Server {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join("models");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, file) in models {
            std::os::unix::fs::symlink(file, dir.join(format!("{name}.gguf"))).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = common::exo_command()
            // one compute thread: the clients' Python and Node share the two cores, and llama.cpp's
            // spin-waiting threads slow down many times over when a core is taken from them
            .args(["serve", "--api-addr", &format!("127.0.0.1:{port}"), "--peer-addr", "127.0.0.1:0", "--threads", "1"])
            .env("HOME", home.path())
            .env("EXO_DECODE_GBPS", "10")
            .env("EXO_NO_DISCOVERY", "1")
            .env("EXO_OFFLINE", "1")
            .env("EXO_API_KEY", API_KEY)
            .env("EXO_MODELS_DIRS", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "exo serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server { child, base: format!("http://127.0.0.1:{port}"), _home: home }
    }

    /// SIGTERM, and the exit status once it stopped.
    async fn stop(mut self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "exo serve did not stop on SIGTERM");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client script's output and how long it ran.
struct Ran {
    out: Output,
    took: Duration,
}

/// Longest one client script may run; a server that hangs fails the test instead of stalling it.
const SCRIPT_LIMIT: Duration = Duration::from_secs(300);

/// Runs a client script (program, args) off the async workers; clients talk to nothing but the
/// server (no proxy for loopback, llm's files in a temporary directory). Killed at SCRIPT_LIMIT.
async fn run(program: PathBuf, args: Vec<String>) -> Ran {
    let llm_home = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let child = Command::new(&program)
        .args(&args)
        .env("LLM_USER_PATH", llm_home.path())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env_remove("OLLAMA_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let pid = child.id().to_string();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    tokio::pin!(waiting);
    let out = match tokio::time::timeout(SCRIPT_LIMIT, &mut waiting).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => {
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
            let mut out = waiting.await.unwrap().unwrap();
            out.stderr.extend_from_slice(format!("\nkilled after {SCRIPT_LIMIT:?}\n").as_bytes());
            out
        }
    };
    Ran { out, took: t.elapsed() }
}

/// Prints each script's output under its name; the names of those that failed.
fn report(runs: &[(&str, &Ran)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, Ran { out, took }) in runs {
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("== {name} ({:.1} s)\n{stdout}{stderr}", took.as_secs_f64());
        if !out.status.success() {
            failed.push(name.to_string());
        }
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_and_frameworks_against_exo_serve() {
    let Some((py, js)) = clients() else { return };
    let tiny = common::model("tiny-llama");
    let real_file = real::model();
    let real_name = real::FILE.trim_end_matches(".gguf");
    let mut models = vec![("tiny-llama", tiny.as_path())];
    if let Some(r) = &real_file {
        models.push((real_name, r.as_path()));
    }
    let server = Server::start(&models).await;
    let base = server.base.clone();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();

    // one after the other, so that the clients and the server do not fight for the CPU
    let js_path = js.to_str().unwrap().to_string();
    let node_tiny = run("node".into(), s(&[js_path.as_str(), base.as_str(), "tiny-llama", API_KEY, "--tools"])).await;
    let node_real = match real_file {
        Some(_) => Some(run("node".into(), s(&[js_path.as_str(), base.as_str(), real_name, API_KEY, "--small"])).await),
        None => None,
    };
    let mut py_args =
        s(&[repo().join("tests/clients/check_frameworks.py").to_str().unwrap(), base.as_str(), "tiny-llama"]);
    py_args.extend(s(&[API_KEY, "--tools"]));
    if real_file.is_some() {
        py_args.push(format!("--real={real_name}"));
    }
    let python = run(py, py_args).await;

    let mut runs = vec![("node (ollama-js, openai-node) on tiny-llama", &node_tiny)];
    if let Some(o) = &node_real {
        runs.push(("node (ollama-js, openai-node) on SmolLM2, the small set", o));
    }
    runs.push(("python (LangChain, LiteLLM, llm + llm-ollama)", &python));
    let failed = report(&runs);
    let status = server.stop().await;
    assert!(failed.is_empty(), "client checks failed: {failed:?} (their output is above)");
    assert!(status.success(), "exo serve exited with {status}");
}

/// The embedding routes through the same clients: ollama-js embed/embeddings, openai-node and
/// LangChain's OpenAIEmbeddings/OllamaEmbeddings, LiteLLM's embedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_embeddings_against_exo_serve() {
    let Some((py, js)) = clients() else { return };
    let tiny = common::model("tiny-llama");
    let real_file = real::model();
    let real_name = real::FILE.trim_end_matches(".gguf");
    let mut models = vec![("tiny-llama", tiny.as_path())];
    if let Some(r) = &real_file {
        models.push((real_name, r.as_path()));
    }
    let server = Server::start(&models).await;
    let base = server.base.clone();
    let script = repo().join("tests/clients/check_frameworks.py").to_str().unwrap().to_string();
    let js = js.to_str().unwrap().to_string();
    let mut names = vec!["tiny-llama"];
    if real_file.is_some() {
        names.push(real_name);
    }
    let mut node = Vec::new();
    for name in &names {
        let args = vec![js.clone(), base.clone(), name.to_string(), API_KEY.into(), "--embeddings".into()];
        node.push((format!("node embeddings on {name}"), run("node".into(), args).await));
    }
    let mut py_args = vec![script, base, "tiny-llama".into(), API_KEY.into(), "--embeddings".into()];
    if real_file.is_some() {
        py_args.push(format!("--real={real_name}"));
    }
    let python = run(py, py_args).await;
    let mut runs: Vec<(&str, &Ran)> = node.iter().map(|(n, r)| (n.as_str(), r)).collect();
    runs.push(("python embeddings (LangChain, LiteLLM)", &python));
    let failed = report(&runs);
    let status = server.stop().await;
    assert!(failed.is_empty(), "embedding checks failed: {failed:?} (their output is above)");
    assert!(status.success(), "exo serve exited with {status}");
}
