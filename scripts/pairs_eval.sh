#!/usr/bin/env bash
# Questions about two clips, for docs/pairs.md: the curriculum configs/pairs-lal.toml with MODEL
# (default configs/smollm2-whisper-lal-pairs.toml: SmolLM2-135M + Whisper tiny.en through LAL;
# max_clips = 2 is added where a config lacks it) trained over SEEDS, each run evaluated on the
# four tasks' test splits and on which-has with every pair's clips swapped (its answer flipped).
# The page goes to stdout.
#   scripts/pairs_eval.sh [RUNS_DIR] [SEEDS] [MODEL]   (default runs/pairs "0 1 2"; reruns skip
#                                                       what exists)
# Needs the data (pal data pairs --root ../shared/data --out data/pairs), the fetched SmolLM2 and
# Whisper tiny.en, and PAL (default target/release/pal).
set -euo pipefail
cd "$(dirname "$0")/.."
pal=${PAL:-target/release/pal}
runs=${1:-runs/pairs}
seeds=${2:-0 1 2}
model=${3:-configs/smollm2-whisper-lal-pairs.toml}
mkdir -p "$runs"
[ -f data/pairs/louder/test.jsonl ] || $pal data pairs --root "${SHARED_DATA:-../shared/data}" --out data/pairs >/dev/null
# which-has with each pair's clips swapped and its answer flipped.
python3 - <<'PY'
import json
flip = {"the first": "the second", "the second": "the first"}
with open("data/pairs/which-has/test.jsonl") as src, open("data/pairs/which-has/test-swapped.jsonl", "w") as dst:
    for line in src:
        item = json.loads(line)
        item["audio"] = item["audio"][::-1]
        item["messages"][1]["content"] = flip[item["messages"][1]["content"]]
        dst.write(json.dumps(item) + "\n")
PY
for seed in $seeds; do
  run=$runs/seed-$seed
  if [ ! -f "$run/adapter.safetensors" ]; then
    mkdir -p "$run"
    { grep -q '^max_clips' "$model" || echo "max_clips = 2"; sed "s/^seed = 0$/seed = $seed/" "$model"; } \
      > "$runs/model-seed-$seed.toml"
    $pal train --config configs/pairs-lal.toml --model "$runs/model-seed-$seed.toml" --seed "$seed" \
      --output "$run" --encoder-cache "$runs/cache" --quiet > "$runs/seed-$seed.log" 2>&1
  fi
  for task in which-has same-digit louder each-clip which-has-swapped; do
    manifest=data/pairs/$task/test.jsonl
    [ "$task" = which-has-swapped ] && manifest=data/pairs/which-has/test-swapped.jsonl
    [ -f "$run/eval-$task.summary.json" ] || $pal eval --model "$run" --manifest "$manifest" \
      --max-tokens 12 --json "$run/eval-$task.jsonl" > /dev/null 2>&1
  done
done
python3 scripts/pairs_report.py "$runs" "$seeds" "$model"
