#!/usr/bin/env bash
# The shipped adapter's answers through `pal serve` are the same with everything that makes it
# fast (audio cache with kept prompts, batched encoding, continuous batching of 8) as without
# (cache off, max batch 1): every held-out clip asked in every shape of conversation the server
# accepts, eight asks per clip (scripts/serve_answers.py); refusals must match too.
# Needs the instruction set (pal data instruct) and a Python with openai.
#   scripts/check_serve_answers.sh PYTHON_WITH_OPENAI
set -euo pipefail
cd "$(dirname "$0")/.."
python=$1
cargo build --release -q -p pal
out=$(mktemp -d)
for setting in "0 1" "512 8"; do
  read -r cache batch <<< "$setting"
  log=$(mktemp)
  target/release/pal serve --model adapters/smollm2-whisper-pal --port 0 --model-name check \
    --audio-cache-mb "$cache" --max-batch "$batch" 2> "$log" &
  pid=$!
  until grep -q "on http://" "$log"; do sleep 0.2; kill -0 $pid; done
  addr=$(grep -o "http://[0-9.:]*" "$log" | head -1)
  "$python" scripts/serve_answers.py --base-url "$addr/v1" --model check "$out/$cache.json"
  kill -TERM $pid; wait $pid
done
"$python" - "$out/0.json" "$out/512.json" <<'PY'
import json, sys
plain, fast = (json.load(open(f)) for f in sys.argv[1:])
same = sum(a == b for a, b in zip(plain, fast))
print(f"{same} of {len(plain)} answers identical")
for i, (a, b) in enumerate(zip(plain, fast)):
    if a != b:
        print(f"ask {i}: {a!r} vs {b!r}")
sys.exit(0 if same == len(plain) == len(fast) else 1)
PY
