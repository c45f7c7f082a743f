#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, default 60:
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Targets: token_parser, form_decoder, jwt_header. Needs cargo-fuzz
# (installed here if missing) and a C++ compiler for libFuzzer. Only stable
# Rust is needed: cargo-fuzz passes a few -Z flags, which RUSTC_BOOTSTRAP=1
# allows; without a sanitizer runtime (`--sanitizer none`) nothing else
# needs nightly. New corpus entries go to fuzz/corpus/<target>, crashes to
# fuzz/artifacts/<target> (both ignored by git); reproduce a crash with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none <target> <file>
# CI never runs this.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
if [ $# -gt 0 ]; then shift; fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(token_parser form_decoder jwt_header)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# Separate from the workspace's build directory: everything here is built
# with coverage instrumentation.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$PWD/target}"

for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    echo "== $target: ${seconds}s"
    cargo fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1
done
