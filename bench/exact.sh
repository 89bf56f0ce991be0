#!/usr/bin/env bash
# What batch-invariant kernels cost (bench/results/exact.md): `exo bench` prefill (pp512) and
# decode (tg128) tok/s with `--exact true` (the default) and `--exact false` (llama.cpp's fastest
# kernels), alternating round by round, for SmolLM2-135M in Q4_0, Q4_K_M, Q8_0 and F16 (derived
# from the shipped Q4_1 with llama.cpp's own quantizer, `exo dev quantize`), whole and as 2
# in-process stages. Prints a markdown table (medians of ROUNDS rounds; each `exo bench` run does
# its own warm-up and REPEAT timed runs).
#   bash bench/exact.sh > bench/results/exact.md      (~10 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
exo=target/release/exo
ROUNDS="${ROUNDS:-3}"
REPEAT="${REPEAT:-2}"
src="$(scripts/fetch-test-model.sh)"
dir=target/bench-models
mkdir -p "$dir"
for t in q4_0 q4_k_m q8_0 f16; do
    [ -f "$dir/smollm2-135m-$t.gguf" ] || "$exo" dev quantize --in "$src" --out "$dir/smollm2-135m-$t.gguf" --type "$t" >&2
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in q4_0 q4_k_m q8_0 f16; do
    for split in whole 0:15,15:30; do
        for r in $(seq "$ROUNDS"); do
            for exact in true false; do
                args=(bench "$dir/smollm2-135m-$t.gguf" --local --pp 512 --tg 128 --repeat "$REPEAT" --threads 2
                      --exact "$exact" --json-out "$tmp/$t-$split-$exact-$r.json")
                [ "$split" = whole ] || args+=(--split "$split")
                "$exo" "${args[@]}" >/dev/null 2>&1
            done
        done
    done
done
python3 - "$tmp" "$ROUNDS" <<'PY'
import json, statistics, sys, glob, os, platform, datetime
d, rounds = sys.argv[1], int(sys.argv[2])
def rate(f, kind):
    rep = json.load(open(f))
    for t in rep["tests"]:
        if t["name"].startswith(kind):
            return t["tokens_per_s"]
    raise SystemExit(f"{f}: no {kind} test in {list(rep)}")
print("| weights | stages | prefill pp512 exact / fast (tok/s) | ratio | decode tg128 exact / fast (tok/s) | ratio |")
print("|---|---|---|---|---|---|")
for t in ["q4_0", "q4_k_m", "q8_0", "f16"]:
    for split in ["whole", "0:15,15:30"]:
        row = {}
        for kind in ["pp", "tg"]:
            for exact in ["true", "false"]:
                v = [rate(f"{d}/{t}-{split}-{exact}-{r}.json", kind) for r in range(1, rounds + 1)]
                row[kind, exact] = statistics.median(v)
        pp = row["pp", "true"] / row["pp", "false"]
        tg = row["tg", "true"] / row["tg", "false"]
        stages = "1" if split == "whole" else "2 (0:15, 15:30)"
        print(f"| {t.upper()} | {stages} | {row['pp','true']:.1f} / {row['pp','false']:.1f} | {pp:.2f} | "
              f"{row['tg','true']:.1f} / {row['tg','false']:.1f} | {tg:.2f} |")
PY
