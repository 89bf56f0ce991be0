#!/usr/bin/env python3
"""Reference check: greedy text of exo's engine equals llama.cpp's own `llama-simple`.

    python3 bench/reference.py [--model PATH] [--tokens N]

`llama-simple` (llama.cpp's examples/simple: tokenize with special tokens, greedy sampler, stop
at end of generation) is built by bench/llama-cpp/build-tools.sh from the same, unpatched
llama.cpp sources the engine is built from. For each prompt both tools get the same raw text
(`exo run MODEL PROMPT --raw --temperature 0 --repeat-penalty 1 --max-tokens N`, in this process,
whole model, and again split into 3 in-process stages); the generated text must be identical.
Writes bench/results/reference.md and exits 1 on any difference.

Default model: the real test model (scripts/fetch-test-model.sh).
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXO = ROOT / "target/release/exo"
SIMPLE = ROOT / "target/llama-cpp-tools/bin/llama-simple"
RESULTS = ROOT / "bench/results"

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a short poem about a lighthouse.<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n",
]


def llama_simple(model, prompt, n):
    out = subprocess.run([SIMPLE, "-m", str(model), "-n", str(n), prompt], capture_output=True, check=True)
    text = out.stdout.decode("utf-8", "replace")
    # llama-simple echoes the prompt (its tokens' pieces) before the generated text
    if not text.startswith(prompt):
        raise SystemExit(f"llama-simple did not echo the prompt: {text[:200]!r}")
    return text[len(prompt):].rstrip("\n")


def exo(model, prompt, n, split=None):
    args = [EXO, "run", str(model), prompt, "--raw", "--temperature", "0", "--repeat-penalty", "1",
            "--max-tokens", str(n), "--threads", "2"]
    if split:
        args += ["--split", split]
    env = dict(os.environ, EXO_API_ADDR="127.0.0.1:1", EXO_NO_DISCOVERY="1", EXO_DECODE_GBPS="10",
               EXO_MODELS_DIRS="/nonexistent")
    out = subprocess.run(args, capture_output=True, check=True, env=env)
    return out.stdout.decode("utf-8", "replace").rstrip("\n")


def n_layer(model):
    sys.path.insert(0, str(ROOT / "bench"))
    from compare import n_layer as read
    return read(model)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / ".test-models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--tokens", type=int, default=64)
    a = ap.parse_args()
    for need, how in [(EXO, "cargo build --release"), (SIMPLE, "bash bench/llama-cpp/build-tools.sh"),
                      (a.model, "scripts/fetch-test-model.sh")]:
        if not Path(need).exists():
            raise SystemExit(f"{need} is missing: {how}")
    layers = n_layer(a.model)
    cuts = [0, layers // 3, 2 * layers // 3, layers]
    split = ",".join(f"{cuts[i]}:{cuts[i + 1]}" for i in range(3))
    rows, ok = [], True
    for p in PROMPTS:
        ref = llama_simple(a.model, p, a.tokens)
        whole = exo(a.model, p, a.tokens)
        staged = exo(a.model, p, a.tokens, split)
        same = ref == whole == staged
        ok &= same
        print(f"{'same' if same else 'DIFFERENT'}: {p!r}\n  llama-simple: {ref!r}\n  exo:          {whole!r}\n"
              f"  exo {split}: {staged!r}", file=sys.stderr)
        cell = lambda s: s.replace("\n", "\\n").replace("|", "\\|")
        rows.append(f"| `{cell(p)}` | {'identical' if same else 'DIFFERENT'} | {cell(ref)} |"
                    + ("" if same else f" exo: {cell(whole)} / split: {cell(staged)} |"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        "# exo vs llama.cpp's llama-simple: greedy text",
        "",
        f"Model: {a.model.name} ({a.model.stat().st_size / 1e6:.1f} MB, {layers} layers); up to {a.tokens} "
        f"tokens per prompt, greedy, stopping at end of generation. exo: `exo run --raw --temperature 0 "
        f"--repeat-penalty 1`, whole model and `--split {split}`; llama-simple built by "
        f"bench/llama-cpp/build-tools.sh from the same llama.cpp sources, unpatched. "
        f"Date: {time.strftime('%Y-%m-%d')}. Result: {'all identical' if ok else 'DIFFERENCES'}.",
        "",
        "| prompt (raw) | exo (whole and split) vs llama-simple | generated text |",
        "|---|---|---|",
        *rows,
    ]) + "\n"
    (RESULTS / "reference.md").write_text(text)
    print(text)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
