#!/usr/bin/env python3
"""Side-by-side comparisons of exo with llama.cpp, each in one invocation on one machine.

    python3 bench/compare.py single   # exo bench vs llama-bench, one node, in one process each
    python3 bench/compare.py stages   # 1, 2, 3, 4 stages as separate `exo serve` processes
    python3 bench/compare.py rpc      # exo (3 processes) vs rpc-server x2 + llama-bench --rpc

Options (after the comparison's name):
    --model PATH     the GGUF to measure (default: BENCH_MODEL, else the generated tinyllama-1b);
                     results then go to <name>-<model stem>.md/.png so they do not replace the
                     default model's
    --stages 1,2     stage counts for `stages` (default 1,2,3,4)

Needs `cargo build --release` and `bash bench/llama-cpp/build-tools.sh` (llama-bench and
rpc-server from the crate's llama.cpp sources). Configurations alternate round by round
(BENCH_REPS rounds, each tool doing its own warm-up and one timed run per round); the tables
give medians over the rounds. Results go to bench/results/<name>.md (and <name>.png when
matplotlib is importable; the README's venv has it).

Environment: BENCH_MODEL (default target/bench-models/tinyllama-1b.gguf, generated if missing),
BENCH_REPS (3), BENCH_THREADS (2), BENCH_PP (128,512), BENCH_TG (128).
"""
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXO = ROOT / "target/release/exo"
TOOLS = ROOT / "target/llama-cpp-tools/bin"
RESULTS = ROOT / "bench/results"
REPS = int(os.environ.get("BENCH_REPS", "3"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
PP = [int(x) for x in os.environ.get("BENCH_PP", "128,512").split(",") if x]
TG = int(os.environ.get("BENCH_TG", "128"))


def log(*a):
    print(*a, file=sys.stderr, flush=True)


MODEL_ARG = None
STAGES = [1, 2, 3, 4]
TAG = ""


def model_path():
    if MODEL_ARG:
        return MODEL_ARG
    m = os.environ.get("BENCH_MODEL")
    if m:
        return Path(m).resolve()
    p = ROOT / "target/bench-models/tinyllama-1b.gguf"
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        log(f"generating {p} ...")
        subprocess.run([EXO, "dev", "make-model", "--preset", "tinyllama-1b", "--out", p], check=True)
    return p


def n_layer(model):
    """`<arch>.block_count` from the GGUF header."""
    import struct
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    with open(model, "rb") as f:
        def rd(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def string():
            return f.read(rd("Q")).decode()

        def skip(t):
            if t == 8:
                string()
            elif t == 9:
                et, n = rd("I"), rd("Q")
                for _ in range(n):
                    skip(et)
            else:
                f.read(sizes[t])

        assert f.read(4) == b"GGUF", f"{model} is not a GGUF"
        rd("I"), rd("Q")
        for _ in range(rd("Q")):
            key, t = string(), rd("I")
            if key.endswith(".block_count") and t in (4, 5):
                return rd("I")
            skip(t)
    raise SystemExit(f"{model}: no block_count")


def quiet_env(**extra):
    env = dict(os.environ)
    env.update({"EXO_NO_DISCOVERY": "1", "EXO_DECODE_GBPS": "10", "EXO_OFFLINE": "1"})
    env.update(extra)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def even_split(layers, n):
    cuts = [round(i * layers / n) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


# --- runners -------------------------------------------------------------------------------

def exo_bench(model, extra, env):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        args = [EXO, "bench", str(model), "--pp", ",".join(map(str, PP)), "--tg", str(TG), "--repeat", "1",
                "--json-out", f.name] + extra
        subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.load(open(f.name))


def exo_rates(report):
    return {t["name"]: t["tokens_per_s"] for t in report["tests"]}


def llama_bench(model, extra):
    args = [TOOLS / "llama-bench", "-m", str(model), "-p", ",".join(map(str, PP)), "-n", str(TG), "-r", "1",
            "-t", str(THREADS), "-b", "512", "-ub", "512", "-o", "json"] + extra
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rates = {}
    for t in json.loads(out):
        name = f"pp{t['n_prompt']}" if t["n_gen"] == 0 else f"tg{t['n_gen']}"
        rates[name] = t["avg_ts"]
    return rates


class Nodes:
    """`exo serve` processes on loopback joined with --peers; killed on exit."""

    def __init__(self, names, model, threads):
        self.dir = tempfile.TemporaryDirectory()
        os.symlink(model, Path(self.dir.name) / "bench.gguf")
        ports = [(free_port(), free_port()) for _ in names]
        self.api = {n: f"http://127.0.0.1:{a}" for n, (a, _) in zip(names, ports)}
        self.procs = []
        for i, n in enumerate(names):
            peers = ",".join(f"127.0.0.1:{p}" for j, (_, p) in enumerate(ports) if j != i)
            args = [EXO, "serve", "--api-addr", f"127.0.0.1:{ports[i][0]}", "--peer-addr", f"127.0.0.1:{ports[i][1]}",
                    "--node-name", n, "--threads", str(threads), "--parallel", "1", "--peers", peers]
            env = quiet_env(EXO_MODELS_DIRS=self.dir.name, HOME=self.dir.name)
            self.procs.append(subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        first = self.api[names[0]]
        t = time.time()
        while True:
            try:
                v = json.load(urllib.request.urlopen(f"{first}/cluster", timeout=2))
                if len(v["nodes"]) == len(names):
                    break
            except OSError:
                pass
            if time.time() - t > 60:
                raise SystemExit("the nodes did not join")
            time.sleep(0.3)

    def bench(self, via, split):
        env = quiet_env(EXO_API_ADDR=self.api[via].removeprefix("http://"))
        return exo_bench("bench", ["--split", split], env)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        self.dir.cleanup()


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes it forwards (both ways); used only in an
    untimed run to measure what llama.cpp RPC sends per token."""

    def __init__(self, target_port):
        import threading
        self.bytes = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.target = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.target))
            for s in (c, u):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, a, b):
        while True:
            try:
                data = a.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                try:
                    b.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                self.bytes += len(data)
            b.sendall(data)


def rpc_bytes_per_token(model, ports, ts):
    """Bytes through both RPC connections per generated token: a 96- minus a 32-token run (the
    model upload and the setup cancel out)."""
    proxies = [CountingProxy(p) for p in ports]
    rpc = ["--rpc", ",".join(f"127.0.0.1:{x.port}" for x in proxies), "-ngl", "99", "-ts", ts, "--poll", "0"]
    totals = []
    for n in (32, 96):
        before = sum(x.bytes for x in proxies)
        subprocess.run([TOOLS / "llama-bench", "-m", str(model), "-p", "0", "-n", str(n), "-r", "1", "-t", str(THREADS)]
                       + rpc, check=True, capture_output=True)
        totals.append(sum(x.bytes for x in proxies) - before)
    for x in proxies:
        x.sock.close()
    # llama-bench runs the test twice (warm-up + timed)
    return (totals[1] - totals[0]) / (2 * 64)


# --- output --------------------------------------------------------------------------------

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def write(name, title, header, rows, notes, chart):
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *notes, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    name = f"{name}-{TAG}" if TAG else name
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not importable: no chart (see bench/README.md)")
        return
    groups, series, ylabel = chart
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png", dpi=110)
    log(f"wrote {RESULTS / name}.md and .png")


def machine_note(model):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    size = model.stat().st_size / 1e9
    return [f"Machine: {os.cpu_count()} vCPU ({cpu}), {THREADS} threads per process. "
            f"Model: {model.name} ({size:.2f} GB). pp {','.join(map(str, PP))}, tg {TG}; "
            f"median of {REPS} rounds (configurations alternate within each round, each run after "
            f"its tool's own warm-up). Date: {time.strftime('%Y-%m-%d')}."]


# --- comparisons ---------------------------------------------------------------------------

def single():
    model = model_path()
    tests = [f"pp{p}" for p in PP] + [f"tg{TG}"]
    exo, ref = {t: [] for t in tests}, {t: [] for t in tests}
    env = quiet_env(EXO_API_ADDR="127.0.0.1:1")
    for r in range(REPS):
        e = exo_rates(exo_bench(model, ["--local", "--threads", str(THREADS)], env))
        l = llama_bench(model, [])
        for t in tests:
            exo[t].append(e[t])
            ref[t].append(l[t])
        log(f"round {r + 1}: exo {e} llama-bench {l}")
    rows = []
    for t in tests:
        ratio = med(exo[t]) / med(ref[t])
        rows.append([t, f"{med(exo[t]):.2f}", ", ".join(f"{x:.2f}" for x in exo[t]), f"{med(ref[t]):.2f}",
                     ", ".join(f"{x:.2f}" for x in ref[t]), f"{ratio:.3f}", "met" if ratio >= 0.98 else "MISSED"])
    write("single", "One node: exo bench vs llama-bench (tok/s)",
          ["test", "exo tok/s", "exo runs", "llama-bench tok/s", "llama-bench runs", "exo / llama-bench",
           "target >= 0.98"], rows,
          machine_note(model) + ["", "`exo bench MODEL --local` (one in-process stage) against llama.cpp's "
                                 "`llama-bench -b 512 -ub 512` built from the same sources with the same flags."],
          (tests, [("exo", [med(exo[t]) for t in tests]), ("llama-bench", [med(ref[t]) for t in tests])], "tokens/s"))


def stages():
    model = model_path()
    layers = n_layer(model)
    names = ["a", "b", "c", "d", "e"][:max(STAGES)]
    nodes = Nodes(names, model, THREADS)
    tests = [f"pp{p}" for p in PP] + [f"tg{TG}"]
    configs = {k: ",".join(f"{names[i]}={b}:{e}" for i, (b, e) in enumerate(even_split(layers, k))) for k in STAGES}
    rates = {k: {t: [] for t in tests} for k in configs}
    extra = {k: {} for k in configs}
    try:
        for r in range(REPS):
            for k, split in configs.items():
                rep = nodes.bench("a", split)
                for t in tests:
                    rates[k][t].append(exo_rates(rep)[t])
                tg = next(t for t in rep["tests"] if t["name"] == f"tg{TG}")
                extra[k].setdefault("bytes", []).append(tg["transfer_bytes_per_token"])
                extra[k].setdefault("stage_ms", []).append([round(ms / TG, 2) for ms in tg["stage_compute_ms"]])
                log(f"round {r + 1} {k} stages ({split}): {exo_rates(rep)}")
    finally:
        nodes.close()
    rows = []
    for k, split in configs.items():
        tg = f"tg{TG}"
        ratio = med(rates[k][tg]) / med(rates[STAGES[0]][tg])
        target = {2: 0.97, 4: 0.93}.get(k)
        verdict = "" if target is None else (f">= {target}: " + ("met" if ratio >= target else "MISSED"))
        cells = [f"{k}", split]
        cells += [f"{med(rates[k][t]):.2f}" for t in tests]
        cells += [", ".join(f"{x:.2f}" for x in rates[k][tg]), f"{ratio:.3f}", verdict,
                  f"{med(extra[k]['bytes']):.0f}", " / ".join(f"{x}" for x in extra[k]["stage_ms"][-1])]
        rows.append(cells)
    header = ["stages", "placement"] + [f"{t} tok/s" for t in tests] + [
        f"tg{TG} runs", f"tg ratio to {STAGES[0]} stage{'s' if STAGES[0] > 1 else ''}", "target", "net bytes/token (tg)", "stage ms/token (tg, last round)"]
    write("stages", "Stages as separate processes on loopback (tok/s)", header, rows,
          machine_note(model) + ["", f"{len(names)} `exo serve` processes joined with --peers on 127.0.0.1; "
                                 "`exo bench bench --split ...` through node a (the coordinator)."],
          (tests, [(f"{k} stage{'s' if k > 1 else ''}", [med(rates[k][t]) for t in tests]) for k in configs],
           "tokens/s"))


def rpc():
    model = model_path()
    layers = n_layer(model)
    half = layers // 2
    tests = [f"pp{p}" for p in PP] + [f"tg{TG}"]
    ports = [free_port(), free_port()]
    servers = [subprocess.Popen([TOOLS / "rpc-server", "-H", "127.0.0.1", "-p", str(p), "-t", str(THREADS)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    nodes = Nodes(["coord", "a", "b"], model, THREADS)
    exo, ref, quiet = {t: [] for t in tests}, {t: [] for t in tests}, {t: [] for t in tests}
    exo_bytes = []
    # llama.cpp gives layer il (the output layer is il = layers) to the first device whose
    # cumulative split exceeds il / (layers + 1): a first share of (half - 0.5) / (layers + 1) puts
    # exactly layers [0, half) on the first server
    ts = f"{half - 0.5}/{layers + 1 - half + 0.5}"
    rpc_args = ["--rpc", ",".join(f"127.0.0.1:{p}" for p in ports), "-ngl", "99", "-ts", ts]
    split = f"a=0:{half},b={half}:{layers}"
    try:
        time.sleep(1)
        for r in range(REPS):
            rep = nodes.bench("coord", split)
            e = exo_rates(rep)
            exo_bytes.append(next(t for t in rep["tests"] if t["name"] == f"tg{TG}")["transfer_bytes_per_token"])
            l = llama_bench(model, rpc_args)
            q = llama_bench(model, rpc_args + ["--poll", "0"])
            for t in tests:
                exo[t].append(e[t])
                ref[t].append(l[t])
                quiet[t].append(q[t])
            log(f"round {r + 1}: exo {e} rpc {l} rpc --poll 0 {q}")
        rpc_bytes = rpc_bytes_per_token(model, ports, ts)
    finally:
        nodes.close()
        for s in servers:
            s.kill()
            s.wait()
    rows = []
    for t in tests:
        r1, r2 = med(exo[t]) / med(ref[t]), med(exo[t]) / med(quiet[t])
        verdict = (("met" if r1 >= 1.5 else "MISSED") + " / " + ("met" if r2 >= 1.5 else "MISSED")) if t.startswith("tg") else ""
        rows.append([t, f"{med(exo[t]):.2f}", ", ".join(f"{x:.2f}" for x in exo[t]), f"{med(ref[t]):.2f}",
                     f"{med(quiet[t]):.2f}", ", ".join(f"{x:.2f}" for x in quiet[t]), f"{r1:.2f}x", f"{r2:.2f}x",
                     verdict])
    write("rpc", "Two stages: exo vs llama.cpp RPC on loopback (tok/s)",
          ["test", "exo tok/s", "exo runs", "RPC tok/s (llama-bench defaults)", "RPC tok/s (--poll 0)",
           "RPC --poll 0 runs", "exo / RPC", "exo / RPC --poll 0", "target >= 1.5x (tg)"], rows,
          machine_note(model) + ["", f"exo: three `exo serve` processes, the coordinator holding no layers and "
                                 f"`{split}`; llama.cpp: two `rpc-server -t {THREADS}` processes and "
                                 f"`llama-bench {' '.join(rpc_args)}` (the same two halves, output layer on the "
                                 f"second server, the client holding only the token embeddings), once with "
                                 f"llama-bench's default threadpool polling and once with `--poll 0` (the "
                                 f"client's idle threads then sleep instead of spinning on the cores the "
                                 f"servers compute on).", "",
                                 f"Bytes over the network per generated token: exo {med(exo_bytes):.0f} "
                                 f"(hidden state 2048 x 4 B plus token frames); llama.cpp RPC {rpc_bytes:.0f} "
                                 f"(counted by a proxy in an untimed run: 96- minus 32-token generation)."],
          (tests, [("exo", [med(exo[t]) for t in tests]), ("RPC (defaults)", [med(ref[t]) for t in tests]),
                   ("RPC --poll 0", [med(quiet[t]) for t in tests])], "tokens/s"))


def parse_args(argv):
    global MODEL_ARG, STAGES, TAG
    import argparse
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("what", choices=["single", "stages", "rpc"])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--stages", default="1,2,3,4")
    a = ap.parse_args(argv)
    if a.model:
        MODEL_ARG = a.model.resolve()
        if not MODEL_ARG.is_file():
            raise SystemExit(f"no model at {MODEL_ARG}")
        TAG = "".join(c if c.isalnum() or c in "-_." else "-" for c in MODEL_ARG.stem.lower())
    STAGES = sorted({int(x) for x in a.stages.split(",") if x})
    if not STAGES or not all(1 <= k <= 5 for k in STAGES):
        raise SystemExit("--stages takes counts from 1 to 5")
    return a.what


if __name__ == "__main__":
    what = parse_args(sys.argv[1:])
    cmds = {"single": single, "stages": stages, "rpc": rpc}
    if not EXO.exists():
        raise SystemExit("build first: cargo build --release")
    if what in ("single", "rpc") and not (TOOLS / "llama-bench").exists():
        raise SystemExit("build llama.cpp's tools first: bash bench/llama-cpp/build-tools.sh")
    cmds[what]()
