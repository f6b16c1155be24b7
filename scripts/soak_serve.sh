#!/usr/bin/env bash
# The serving soak test (scripts/soak_serve.py) on the shipped adapter: normal traffic from the
# openai client beside hostile clients, then SIGTERM. Writes docs/bench/serve-soak.md's figures
# with --bench (the long run); without it, a short run for CI that only checks the outcome.
#   scripts/soak_serve.sh PYTHON_WITH_OPENAI [SECONDS] [--bench]
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
seconds=${2:-300}
cargo build --release -q -p pal
cargo build --release -q -p pal-audio --example hostile_audio
hostile=$(mktemp -d)
target_dir=$(cargo metadata --format-version 1 --no-deps | "$python" -c "import json,sys; print(json.load(sys.stdin)['target_directory'])")
"$target_dir/release/examples/hostile_audio" "$hostile" > /dev/null
out=$(mktemp -d)
status=0
"$python" scripts/soak_serve.py --pal "$target_dir/release/pal" --hostile "$hostile" \
  --seconds "$seconds" --out "$out/report.json" --markdown "$out/report.md" \
  ${3:+--strict} || status=$?
if [ "${3:-}" = "--bench" ]; then
  {
    echo
    echo "## $(date -u +%Y-%m-%d): \`scripts/soak_serve.sh PYTHON $seconds --bench\`"
    echo
    cat "$out/report.md"
  } >> docs/bench/serve-soak.md
fi
rm -rf "$hostile"
exit $status
