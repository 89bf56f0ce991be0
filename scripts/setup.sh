#!/usr/bin/env bash
# Installs what building and testing exo needs and this machine lacks; safe to run again.
#   Debian/Ubuntu: apt packages (sudo when not root); macOS: Xcode command-line tools must be
#   there, cmake via Homebrew. Then Rust (rustup) if there is no cargo, the Python clients and
#   frameworks that tests/external/python_clients.rs and tests/external/framework_clients.rs drive (.venv-clients/),
#   the Node clients (tests/clients/js/node_modules/, with nodejs and npm from apt when there is
#   no node), and the real test model (.test-models/).
#   --vulkan also installs what `--features vulkan` needs on Linux, with lavapipe (Vulkan on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
vulkan=0
for a in "$@"; do
    case "$a" in
        --vulkan) vulkan=1 ;;
        *) echo "usage: scripts/setup.sh [--vulkan]" >&2; exit 2 ;;
    esac
done

case "$(uname -s)" in
Linux)
    if ! command -v apt-get >/dev/null; then
        echo "no apt-get: install a C/C++ toolchain, cmake, clang/libclang, patch, git, python3 (venv, pip) yourself" >&2
    else
        SUDO=""
        if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
        pkgs=(build-essential cmake libclang-dev clang patch git pkg-config ca-certificates iproute2 curl
              python3 python3-venv python3-pip chromium chromium-driver ccache)
        # cmake builds llama.cpp; libclang-dev feeds bindgen; patch applies ggml-patches/;
        # chromium and its driver run the dashboard in tests/external/dashboard.rs; ccache lets
        # scripts/vulkan-check.sh's second llama.cpp build (Vulkan) reuse the first one's objects
        if [ "$vulkan" = 1 ]; then pkgs+=(mesa-vulkan-drivers glslc libvulkan-dev spirv-headers); fi
        # the Node clients (tests/clients/js) need node >= 20; Debian 12's nodejs is 18, which
        # openai-node 6 no longer supports (it runs there, but unsupported): a newer node on PATH wins
        if ! command -v node >/dev/null; then pkgs+=(nodejs npm); fi
        missing=()
        for p in "${pkgs[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
        done
        if [ "${#missing[@]}" -gt 0 ]; then
            echo "installing: ${missing[*]}" >&2
            export DEBIAN_FRONTEND=noninteractive
            $SUDO apt-get update -qq
            $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        fi
    fi
    ;;
Darwin)
    if ! xcode-select -p >/dev/null 2>&1; then
        echo "install Xcode's command-line tools first: xcode-select --install" >&2
        exit 1
    fi
    if ! command -v cmake >/dev/null; then
        command -v brew >/dev/null || { echo "cmake is missing and there is no Homebrew (https://brew.sh)" >&2; exit 1; }
        brew install cmake
    fi
    ;;
esac

if ! command -v cargo >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "installing Rust with rustup ..." >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >&2
fi

# the real Python clients (ollama, openai, anthropic) for tests/external/python_clients.rs, and the
# frameworks (pinned: versions these checks were written against) for tests/external/framework_clients.rs
if [ ! -x .venv-clients/bin/python ]; then python3 -m venv .venv-clients; fi
.venv-clients/bin/pip install -q --disable-pip-version-check ollama openai anthropic \
    langchain-ollama==1.1.0 langchain-openai==1.7.4 litellm==1.110.2 llm==0.36 llm-ollama==0.19.1

# the real Node clients (ollama-js, openai-node; versions pinned in package-lock.json)
if command -v npm >/dev/null; then
    npm ci --prefix tests/clients/js --no-audit --no-fund --loglevel=error >/dev/null
else
    echo "no npm: tests/external/framework_clients.rs will skip the Node clients (install node >= 20 and npm)" >&2
fi

scripts/fetch-test-model.sh >/dev/null
scripts/fetch-swa-test-model.sh >/dev/null
