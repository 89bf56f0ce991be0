#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench`, `llama-batched-bench`, `rpc-server` and `llama-simple`
# into a scratch directory (never committed):
#   target/llama-cpp-tools/bin/{llama-bench,llama-batched-bench,rpc-server,llama-simple}
#
# The libraries they link (llama, ggml, ggml-cpu, common) are compiled from exactly the llama.cpp
# sources that the llama-cpp-sys-2 crate bundles (unpatched), with the build type, compiler flags
# and GGML_* options of the crate's own build of our engine (read from its CMake cache; run
# `cargo build --release` first). The crate ships the library sources only, not the tools'
# driver files, so those come from LLAMA_CPP_CHECKOUT (a llama.cpp git checkout, ideally at the
# crate's commit) or, by default, from the llama.cpp that the llama-cpp-python sdist on PyPI
# vendors (LLAMA_CPP_PYTHON_VERSION, default 0.3.36).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
out="${LLAMA_TOOLS_DIR:-$root/target/llama-cpp-tools}"
mkdir -p "$out"

manifest=$(cargo metadata --format-version 1 --locked 2>/dev/null | python3 -c '
import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "llama-cpp-sys-2":
        print(p["manifest_path"])')
src="$(dirname "$manifest")/llama.cpp"
[ -f "$src/CMakeLists.txt" ] || { echo "llama.cpp sources not found next to $manifest" >&2; exit 1; }

cache=$(ls -t target/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt 2>/dev/null | head -1 || true)
[ -n "$cache" ] || { echo "no release build of llama-cpp-sys-2 found: run cargo build --release first" >&2; exit 1; }

# The driver sources: llama-bench and rpc-server (tools/), llama-simple (examples/simple: greedy
# generation with nothing else around it, the reference for bench/reference.py).
drivers="$out/drivers"
if [ -n "${LLAMA_CPP_CHECKOUT:-}" ]; then
    rm -rf "$drivers" && mkdir -p "$drivers"
    cp -r "$LLAMA_CPP_CHECKOUT/tools/llama-bench" "$LLAMA_CPP_CHECKOUT/tools/rpc" \
        "$LLAMA_CPP_CHECKOUT/tools/batched-bench" "$LLAMA_CPP_CHECKOUT/examples/simple" "$drivers/"
elif [ ! -f "$drivers/llama-bench/llama-bench.cpp" ] || [ ! -f "$drivers/simple/simple.cpp" ] \
    || [ ! -f "$drivers/batched-bench/batched-bench.cpp" ]; then
    ver="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
    tmp=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$ver"
    tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp" --wildcards \
        '*/vendor/llama.cpp/tools/llama-bench/*' '*/vendor/llama.cpp/tools/rpc/*' \
        '*/vendor/llama.cpp/tools/batched-bench/*' '*/vendor/llama.cpp/examples/simple/*'
    rm -rf "$drivers" && mkdir -p "$drivers"
    v="$(echo "$tmp"/llama_cpp_python-*/vendor/llama.cpp)"
    cp -r "$v/tools/llama-bench" "$v/tools/rpc" "$v/tools/batched-bench" "$v/examples/simple" "$drivers/"
    rm -rf "$tmp"
fi

# A wrapper project: the crate's llama.cpp as a subdirectory, plus the two tools.
mkdir -p "$out/project"
cat > "$out/project/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.14)
project(exo_llama_tools C CXX)
add_subdirectory("$src" llama.cpp)
add_subdirectory("$drivers/llama-bench" llama-bench)
add_subdirectory("$drivers/rpc" rpc)
add_subdirectory("$drivers/batched-bench" batched-bench)
add_subdirectory("$drivers/simple" simple)
CMAKE

# The crate's choices: build type, C/C++ flags and every GGML_* switch it set.
args=()
for key in CMAKE_BUILD_TYPE CMAKE_C_FLAGS CMAKE_CXX_FLAGS; do
    val=$(grep -E "^$key:[A-Z]+=" "$cache" | head -1 | cut -d= -f2-)
    args+=("-D$key=$val")
done
for key in GGML_NATIVE GGML_OPENMP GGML_AVX GGML_AVX2 GGML_AVX512 GGML_AVX_VNNI GGML_FMA GGML_F16C \
           GGML_BMI2 GGML_SSE42 GGML_LLAMAFILE GGML_CPU_REPACK GGML_CUDA GGML_VULKAN GGML_METAL; do
    val=$(grep -E "^$key:BOOL=" "$cache" | head -1 | cut -d= -f2- || true)
    if [ -n "$val" ]; then args+=("-D$key=$val"); fi
done

echo "llama.cpp library sources: $src"
echo "tool drivers: $drivers"
echo "options: ${args[*]}"
cmake -S "$out/project" -B "$out/build" "${args[@]}" \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_COMMON=ON -DGGML_RPC=ON -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
cmake --build "$out/build" --target llama-bench llama-batched-bench ggml-rpc-server llama-simple -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
mkdir -p "$out/bin"
cp "$(find "$out/build" -name llama-bench -type f -perm -u+x | head -1)" "$out/bin/llama-bench"
cp "$(find "$out/build" -name ggml-rpc-server -type f -perm -u+x | head -1)" "$out/bin/rpc-server"
cp "$(find "$out/build" -name llama-batched-bench -type f -perm -u+x | head -1)" "$out/bin/llama-batched-bench"
cp "$(find "$out/build" -name llama-simple -type f -perm -u+x | head -1)" "$out/bin/llama-simple"
ls -l "$out/bin"
