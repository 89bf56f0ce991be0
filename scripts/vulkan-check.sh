#!/usr/bin/env bash
# The Vulkan backend's tests (tests/vulkan.rs) on lavapipe, Mesa's Vulkan driver on the CPU: a
# second llama.cpp build (with ggml-vulkan's shaders, ~10 minutes on 2 cores) in the same target/
# as the CPU build, where every other dependency is already built (other features, other
# artifact hashes: the two builds coexist). Not part of CI, which it would take past 30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --vulkan
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
# ccache serves the translation units a CPU build already compiled (the CPU backend, llama
# itself). llama-cpp-sys-2 hands every CMAKE_* variable to CMake; the base dir makes the two
# build directories' paths hash alike, and no hashed cwd keeps debug info from splitting them.
if command -v ccache >/dev/null; then
    export CMAKE_C_COMPILER_LAUNCHER=ccache CMAKE_CXX_COMPILER_LAUNCHER=ccache
    export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1 CCACHE_DIR="${CCACHE_DIR:-$PWD/target/ccache}"
fi
# Debian 12's Vulkan headers are too old for ggml-vulkan: vulkan-headers.sh provides newer ones
# (headers only) when needed.
VULKAN_SDK="$(scripts/vulkan-headers.sh)"
if [ -n "$VULKAN_SDK" ]; then export VULKAN_SDK; fi
if [ -z "${EXO_TEST_REAL_MODEL:-}" ]; then
    EXO_TEST_REAL_MODEL="$(scripts/fetch-test-model.sh)"
    export EXO_TEST_REAL_MODEL
fi
# ggml skips CPU-type Vulkan devices unless they are named (lavapipe is device 0 here)
GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}" cargo test --release --features vulkan --test vulkan "$@"
