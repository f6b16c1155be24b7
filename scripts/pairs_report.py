#!/usr/bin/env python3
"""The page of scripts/pairs_eval.sh: accuracy on each two-clip task over seeds, and whether the
answer to "which clip has the X" follows the clips when they are swapped. Markdown to stdout.

    python scripts/pairs_report.py runs/pairs "0 1 2" configs/smollm2-whisper-lal-pairs.toml

Each seed is one trained model: the interval is a t-interval over seeds (clipped to 0-100); the
items' own spread is not in it.
"""
import json
import sys
from pathlib import Path

from intervals import mean_t_interval

TASKS = [
    ("which-has", "Which clip has the dog, the first or the second?", "50%"),
    ("same-digit", "Are the two spoken digits the same?", "50%"),
    ("louder", "Which clip is louder, the first or the second?", "50%"),
    ("each-clip", "What is heard in each clip? (\"dog, then rain\")", "1.1% (90 ordered pairs)"),
]


def items(path):
    return [json.loads(line) for line in open(path)]


def main():
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pairs")
    seed_list = sys.argv[2] if len(sys.argv) > 2 else "0 1 2"
    model = sys.argv[3] if len(sys.argv) > 3 else "configs/smollm2-whisper-lal-pairs.toml"
    seeds = sorted(p for p in runs.glob("seed-*") if (p / "eval-which-has.jsonl").is_file())
    if not seeds:
        sys.exit(f"{runs}: no seed-*/eval-*.jsonl")
    route = next(line.split('"')[1] for line in open(seeds[0] / "model.toml")
                 if line.startswith("route"))
    print(f"## {route.upper()}\n")
    print(f"`scripts/pairs_eval.sh {runs} \"{seed_list}\" {model}` (one run; "
          f"this section is its output): `configs/pairs-lal.toml`, SmolLM2-135M-Instruct and Whisper "
          f"tiny.en through {route.upper()} with `max_clips = 2`, 400 steps on the four tasks of "
          f"`pal data pairs` (400 training pairs each, clips held out by FSDD take and ESC-10 "
          f"source recording), {len(seeds)} seeds; each task's 100 test pairs read once. Intervals: "
          f"95% t over seeds (each seed one trained model).\n")
    print("| task | question | chance | accuracy (mean over seeds) | 95% interval | per seed |")
    print("|---|---|---|---|---|---|")
    for task, question, chance in TASKS:
        accs = []
        for seed in seeds:
            rows = items(seed / f"eval-{task}.jsonl")
            accs.append(sum(r["correct"] for r in rows) / len(rows))
        mean, ci = mean_t_interval(accs)
        interval = f"{100 * ci[0]:.1f} to {100 * ci[1]:.1f}" if ci else f"n = {len(accs)}"
        per = ", ".join(f"{100 * a:.0f}" for a in accs)
        print(f"| {task} | {question} | {chance} | {100 * mean:.1f}% | {interval} | {per} |")
    # Swapping the clips: the answer should move with the dog.
    follows, same_answer = [], []
    for seed in seeds:
        plain = items(seed / "eval-which-has.jsonl")
        swapped = items(seed / "eval-which-has-swapped.jsonl")
        moved = [a["answer"].strip() != b["answer"].strip() for a, b in zip(plain, swapped)]
        both = [a["correct"] and b["correct"] for a, b in zip(plain, swapped)]
        follows.append(sum(both) / len(both))
        same_answer.append(1 - sum(moved) / len(moved))
    mean, ci = mean_t_interval(follows)
    interval = f" (95% interval {100 * ci[0]:.1f} to {100 * ci[1]:.1f})" if ci else ""
    print(f"\nSwapping the two clips of each which-has test pair (and so the right answer): "
          f"{100 * mean:.1f}% of pairs are answered right both ways{interval}; "
          f"{100 * sum(same_answer) / len(same_answer):.1f}% get the same answer both ways "
          f"(a model that ignored the order would give the same answer every time).")


if __name__ == "__main__":
    main()
