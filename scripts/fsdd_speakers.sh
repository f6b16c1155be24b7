#!/usr/bin/env bash
# FSDD held out by speaker beside FSDD's official split, for docs/fsdd-speakers.md: one LAL
# adapter per rotation (configs/fsdd-lal.toml on data/fsdd-speakers/SPEAKER/train.jsonl, the
# five other speakers), tested on every clip of the sixth; and the same config on the official
# split (the same six speakers in train and test). Writes the page to stdout.
#   scripts/fsdd_speakers.sh [RUNS_DIR]        (default runs/fsdd-speakers; reruns skip what exists)
# Needs the data (pal data shared --root ../shared/data --out data), the fetched SmolLM2 and
# Whisper tiny.en, and PAL (default target/release/pal).
set -euo pipefail
cd "$(dirname "$0")/.."
pal=${PAL:-target/release/pal}
runs=${1:-runs/fsdd-speakers}
mkdir -p "$runs"
[ -d data/fsdd-speakers ] || $pal data shared --root "${SHARED_DATA:-../shared/data}" --out data >/dev/null
configs=$(pwd)/configs
# name : training manifest : test manifest
jobs=("official:data/fsdd/train.jsonl:data/fsdd/test.jsonl")
for dir in data/fsdd-speakers/*/; do
  speaker=$(basename "$dir")
  jobs+=("$speaker:${dir}train.jsonl:${dir}test.jsonl")
done
for job in "${jobs[@]}"; do
  IFS=: read -r name train test <<<"$job"
  run=$runs/$name
  if [ ! -f "$run/adapter.safetensors" ]; then
    mkdir -p "$run"
    sed -e "s|^model = \"|model = \"$configs/|" \
        -e "s|\"../data/fsdd/train.jsonl\"|\"$(pwd)/$train\"|" configs/fsdd-lal.toml > "$run/curriculum.toml"
    $pal train --config "$run/curriculum.toml" --output "$run" --encoder-cache "$runs/cache" --quiet \
      > "$run/train.log" 2>&1
  fi
  [ -f "$run/test.summary.json" ] || $pal eval --model "$run" --manifest "$test" \
    --json "$run/test.jsonl" > "$run/eval.log" 2>&1
done
python3 scripts/fsdd_speakers_report.py "$runs"
