#!/usr/bin/env bash
# The results table of docs/results.md: trains PAL, LAL and PLITS adapters on the instruction set with the
# same curriculum (configs/instruct.toml), evaluates each on every held-out split, and writes
# docs/results.{md,json}. Finished runs are reused (delete runs/instruct-* to retrain).
#   scripts/results.sh [SHARED_DATA_ROOT]        (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-../shared/data}
cargo build --release -q -p pal
pal=target/release/pal
[ -f data/instruct/fsdd/train.jsonl ] || $pal data instruct --root "$root" --out data/instruct
tasks="fsdd esc10 esc10-captions speech espeak beeps noise chords"
for mode in pal lal plits; do
  run=runs/instruct-$mode
  if [ ! -f "$run/train_summary.json" ]; then
    $pal train --config configs/instruct.toml --model configs/smollm2-whisper-$mode.toml \
      --output "$run" --resume --quiet
  fi
  for task in $tasks; do
    [ -f "$run/eval-$task.summary.json" ] && continue
    case $task in speech|espeak) tokens=64 ;; *) tokens=24 ;; esac
    $pal eval --model "$run" --manifest "data/instruct/$task/test.jsonl" \
      --json "$run/eval-$task.jsonl" --max-tokens $tokens
  done
done
python3 scripts/results_table.py runs docs/results
cat docs/results.md
