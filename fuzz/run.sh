#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer (libfuzzer-sys) on the stable toolchain and runs each
# for FUZZ_SECONDS (default 60) on its seeds; a crash leaves the input in fuzz/artifacts/TARGET/
# and fails the script. Usage: fuzz/run.sh [TARGET...]   (default: every target)
# Env: FUZZ_SECONDS, FUZZ_JOBS (parallel fuzzing processes per target, default 1).
set -euo pipefail
cd "$(dirname "$0")"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then TARGETS=(frame messages handshake gguf cluster_file api); fi
SECS="${FUZZ_SECONDS:-60}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
# SanitizerCoverage, as cargo-fuzz sets it, minus the nightly-only AddressSanitizer (safe Rust
# needs it less; overflow checks and debug assertions are on in fuzz/Cargo.toml's profile).
# An explicit --target keeps these flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
t0=$(date +%s)
cargo build --release --target "$TRIPLE" --bins
echo "fuzz build: $(( $(date +%s) - t0 )) s"
status=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    # new inputs go to corpus/ (not committed); seeds/ is read, never written
    # several processes only when asked (libFuzzer's -jobs mode logs to fuzz-N.log instead)
    jobs=()
    if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi
    if ! "target/$TRIPLE/release/$t" -max_total_time="$SECS" -rss_limit_mb=2048 -malloc_limit_mb=512 \
        ${jobs[@]+"${jobs[@]}"} -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" 2> "artifacts/$t.log"; then
        echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/):"
        tail -40 "artifacts/$t.log"
        status=1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "artifacts/$t.log" | tail -1)
    echo "fuzz $t: ${runs:-?} executions in ${SECS} s"
done
exit $status
