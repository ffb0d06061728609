#!/usr/bin/env bash
# CI for the core on devices: the C ABI (header up to date, static library for the host and for Cortex-M4F,
# the C program against the Rust results), the bare-metal test image on an emulated Cortex-M4F (QEMU) against
# the host bit for bit, and a bounded fuzzing run of the C-ABI entry points and the conformance check.
#
# Installs what it needs on a bare Debian machine. Run from anywhere; `.ci/run` calls it.
#   FUZZ_SECONDS   seconds of fuzzing per target (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
CBINDGEN_VERSION=0.29.4
CARGO_FUZZ_VERSION=0.13.2
start=$SECONDS
step() { echo "== $1 (at $((SECONDS - start)) s)"; }

step "tools"
if command -v apt-get >/dev/null 2>&1; then
  missing=()
  command -v qemu-system-arm >/dev/null 2>&1 || missing+=(qemu-system-arm)
  command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
rustup target add thumbv7em-none-eabihf
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cbindgen --version 2>/dev/null | grep -q "$CBINDGEN_VERSION" || cargo install --locked --version "$CBINDGEN_VERSION" cbindgen
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz

step "the C header is what cbindgen makes of core/src/ffi.rs"
header="$(mktemp)"
cbindgen --quiet --config ffi/cbindgen.toml --output "$header" core/src/ffi.rs
if ! diff -u ffi/include/elasticface.h "$header"; then
  echo "ffi/include/elasticface.h is stale: regenerate it (see ffi/cbindgen.toml)" >&2
  exit 1
fi

step "the static C library for a Cortex-M4F"
cargo build --release -p elasticface-ffi --target thumbv7em-none-eabihf
ls -l target/thumbv7em-none-eabihf/release/libelasticface_ffi.a

step "the firmware and fuzz crates: format and lints (they are outside the workspace)"
(cd firmware && cargo fmt --check && cargo clippy --release -- -D warnings)
(cd fuzz && cargo fmt --check)

step "the C program against the Rust API, the firmware on QEMU against the host"
ELASTICFACE_REQUIRE_CC=1 ELASTICFACE_REQUIRE_QEMU=1 \
  cargo test --workspace --test ffi_c --test firmware_qemu -- --nocapture

step "fuzzing, ${FUZZ_SECONDS} s per target"
(
  cd fuzz
  cargo +nightly fuzz build
  for target in c_abi conformance; do
    log="$(mktemp)"
    cargo +nightly fuzz run "$target" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>"$log" || {
      tail -n 60 "$log" >&2
      echo "fuzz target $target failed" >&2
      exit 1
    }
    echo "$target: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') executions in ${FUZZ_SECONDS} s"
  done
)

step "done"
