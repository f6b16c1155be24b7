#!/usr/bin/env bash
# The test command: fetch the base models (idempotent), check formatting and lints, run every test.
# Tests that need the real models (or the openai client venv) fail rather than skip here, since
# both are set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p pal
cargo run --locked -q -p pal -- fetch
# Whisper base too (the probe's second encoder; about 140 MB, cached like the others), and
# Gemma 3 270M (the second LLM family, 253 MB: its logits are checked against transformers').
cargo run --locked -q -p pal -- fetch whisper-base
cargo run --locked -q -p pal -- fetch gemma3-270m
# The serving test drives `pal serve` with the official openai client, and the shard tests write
# shards with scripts/write_shards.py (numpy + safetensors), from a venv of their own.
venv="${PAL_TEST_VENV:-${PAL_HOME:-$HOME/.cache/pal}/test-venv}"
if ! "$venv/bin/python" -c "import openai, numpy, safetensors, pytest, websockets" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q openai==3.57.0 numpy==2.4.6 safetensors==0.8.0 pytest==8.4.2 websockets==15.0.1
fi
export PAL_TEST_PYTHON="$venv/bin/python"
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
PAL_REQUIRE_MODELS=1 cargo test --locked --workspace
# The Python package: built and installed into the venv as a user installs it, then its tests
# (which also run every example of docs/python.md).
"$venv/bin/pip" install -q ./crates/pal-py
PAL_REQUIRE_MODELS=1 "$venv/bin/python" -m pytest -q crates/pal-py/tests
# The page that listens, in a real browser (headless Chromium with a fake microphone playing the
# FSDD 'seven' clip), where Chromium is installed (CI installs it).
if command -v chromium >/dev/null; then
  "$venv/bin/python" scripts/check_page.py --pal "${CARGO_TARGET_DIR:-target}/debug/pal"
else
  echo "skipped: the browser test of the page needs chromium (apt-get install chromium)" >&2
fi
# Data-parallel training over MPI (the `mpi` feature), where OpenMPI is installed (CI installs it).
if command -v mpirun >/dev/null; then
  cargo clippy --locked -p pal-train -p pal --features pal/mpi --all-targets -- -D warnings
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PAL_REQUIRE_MODELS=1 \
    cargo test --locked -p pal --features mpi --test distributed
else
  echo "skipped: the distributed-training tests need OpenMPI (apt-get install openmpi-bin libopenmpi-dev libclang-dev)" >&2
fi
