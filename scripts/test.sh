#!/usr/bin/env bash
# The test command: fetch the base models (idempotent), check formatting and lints, run every test.
# Tests that need the real models fail (rather than skip) here, since they are fetched first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p pal
cargo run --locked -q -p pal -- fetch
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
PAL_REQUIRE_MODELS=1 cargo test --locked --workspace
