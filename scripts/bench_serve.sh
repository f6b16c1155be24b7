#!/usr/bin/env bash
# Load test of `pal serve` with and without dynamic batching, on loopback, one after the other on
# the same machine: 200 chat completions with audio, 16 at a time, through the openai client.
# Writes docs/bench/serve.{json,md}.
#   scripts/bench_serve.sh RUN_DIR PYTHON_WITH_OPENAI [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1 python=$2 requests=${3:-200} concurrency=${4:-16}
cargo build --release -q -p pal
mkdir -p docs/bench
results=()
for batch in 8 1; do
  log=$(mktemp)
  target/release/pal serve --model "$run" --port 0 --model-name bench --max-batch "$batch" --queue 64 2> "$log" &
  pid=$!
  until grep -q "on http://" "$log"; do sleep 0.2; kill -0 $pid; done
  addr=$(grep -o "http://[0-9.:]*" "$log" | head -1)
  echo "max_batch=$batch: $addr" >&2
  report=$("$python" scripts/load_test.py --base-url "$addr/v1" --model bench \
    --requests "$requests" --concurrency "$concurrency" assets/clips/*.wav)
  health=$(curl -s "$addr/health")
  kill -TERM $pid; wait $pid
  results+=("{\"max_batch\": $batch, \"load\": $report, \"server\": $health}")
done
json="[$(IFS=,; echo "${results[*]}")]"
echo "$json" > docs/bench/serve.json
"$python" - "$json" > docs/bench/serve.md <<'PY'
import json, sys
rows = json.loads(sys.argv[1])
print("# pal serve load test\n")
print("`scripts/bench_serve.sh RUN_DIR PYTHON` (loopback, openai client, greedy, max_tokens 16).\n")
print("| max batch | requests | concurrent | failed | requests/s | p50 latency (s) | p95 latency (s) | batches run | mean batch |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l, s = r["load"], r["server"]
    print(f"| {r['max_batch']} | {l['requests']} | {l['concurrency']} | {l['failed']} | {l['requests_per_s']} | {l['p50_s']} | {l['p95_s']} | {s['batches']} | {s['chats'] / max(s['batches'], 1):.1f} |")
base = rows[-1]["load"]["requests_per_s"]
print(f"\nBatching speed-up (requests/s, max batch {rows[0]['max_batch']} vs 1, same run): {rows[0]['load']['requests_per_s'] / base:.2f}x")
PY
cat docs/bench/serve.md
