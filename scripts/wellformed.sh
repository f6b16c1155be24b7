#!/usr/bin/env bash
# Well-formedness and held-out accuracy of adapters, for docs/wellformed.md and the model card:
# each run is asked every question of the out-of-distribution check set (pal data ood) and the
# FSDD, ESC-10 and espeak-ng held-out splits, then pal demo; a table goes to stdout.
#   scripts/wellformed.sh RUN_DIR [RUN_DIR ...]     (results in RUN_DIR/wellformed/)
# Needs the word list /usr/share/dict/words (Debian: apt-get install wamerican), the data
# (pal data instruct / pal data ood --root ../shared/data) and PAL (default target/release/pal).
set -euo pipefail
cd "$(dirname "$0")/.."
pal=${PAL:-target/release/pal}
[ -f data/ood/test.jsonl ] || $pal data ood --root "${SHARED_DATA:-../shared/data}" --out data/ood
# "accuracy / well-formed" of a summary (WER instead of accuracy with wer as the 2nd argument).
summary() { python3 -c "import json,sys; s=json.load(open(sys.argv[1])); k=sys.argv[2]; v=s[k]; print(f\"{100*v:.1f}% {'WER' if k=='wer' else ''} / {100*(s['well_formed'] or 0):.1f}%\".replace('  ',' '), end='')" "$1" "$2"; }
echo "| run | OOD check set: well-formed | FSDD test: accuracy / well-formed | ESC-10 test: accuracy / well-formed | espeak-ng test: WER / well-formed | pal demo |"
echo "|---|---|---|---|---|---|"
for run in "$@"; do
  out=$run/wellformed
  mkdir -p "$out"
  for set in ood:data/ood/test.jsonl:96 fsdd:data/instruct/fsdd/test.jsonl:24 \
             esc10:data/instruct/esc10/test.jsonl:24 espeak:data/instruct/espeak/test.jsonl:64; do
    IFS=: read -r name manifest tokens <<<"$set"
    [ -f "$out/$name.summary.json" ] || $pal eval --model "$run" --manifest "$manifest" \
      --json "$out/$name.jsonl" --max-tokens "$tokens" >/dev/null
  done
  [ -f "$out/demo.txt" ] || $pal demo --model "$run" > "$out/demo.txt" 2>&1 || true
  demo=$(grep -oE '[0-9]+/[0-9]+ answers right' "$out/demo.txt" | tail -1 | cut -d' ' -f1 || echo "?")
  ood=$(python3 -c "import json; s=json.load(open('$out/ood.summary.json')); print(f\"{100*s['well_formed']:.1f}%\")")
  echo "| $run | $ood | $(summary $out/fsdd.summary.json accuracy) | $(summary $out/esc10.summary.json accuracy) | $(summary $out/espeak.summary.json wer) | $demo |"
done
# The check set by clip kind (the file name's first word) and by question.
echo
echo "| run | speech | espeak | music | noise | silence | near-silence | esc10 | sound? | describe | said? | unrelated |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for run in "$@"; do
  python3 - "$run/wellformed/ood.jsonl" data/ood/test.jsonl <<'PY'
import json, sys
items = [json.loads(l) for l in open(sys.argv[1])]
clips = [json.loads(l)["audio"].rsplit("/", 1)[-1].split("-")[0] for l in open(sys.argv[2])]
audio_questions = ["What sound is this?", "Describe the sound.", "What is said?"]
def share(pick):
    chosen = [i["well_formed"] for i in pick]
    return f"{sum(chosen)}/{len(chosen)}"
by_kind = [share([i for k, i in zip(clips, items) if k == kind])
           for kind in ["speech", "espeak", "music", "noise", "silence", "near", "esc10"]]
by_question = [share([i for i in items if i["question"] == q]) for q in audio_questions]
by_question.append(share([i for i in items if i["question"] not in audio_questions]))
print("| " + " | ".join([sys.argv[1].split("/wellformed")[0]] + by_kind + by_question) + " |")
PY
done
