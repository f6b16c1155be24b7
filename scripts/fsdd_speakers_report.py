#!/usr/bin/env python3
"""The page of scripts/fsdd_speakers.sh: FSDD accuracy on the official split and held out by
speaker, with intervals, from RUNS/NAME/test.jsonl (pal eval --json). Markdown to stdout.

    python scripts/fsdd_speakers_report.py runs/fsdd-speakers

Intervals: for one trained model, a 95% Wilson interval over its test items (it says nothing of
another training run); over the six rotations, a t-interval over the rotations' accuracies (each
rotation is one trained model on one new speaker: the spread of speakers and of training).
"""
import json
import platform
import sys
from pathlib import Path

from intervals import mean_t_interval, wilson

def cpu():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main():
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/fsdd-speakers")
    results = {}
    for run in sorted(p for p in runs.iterdir() if (p / "test.jsonl").is_file()):
        items = [json.loads(line) for line in open(run / "test.jsonl")]
        correct = sum(1 for i in items if i["correct"])
        well = sum(1 for i in items if i.get("well_formed"))
        results[run.name] = (correct, len(items), well)
    if "official" not in results or len(results) < 3:
        sys.exit(f"{runs}: expected official/ and speaker runs with test.jsonl, found {sorted(results)}")
    print("# FSDD held out by speaker\n")
    print("`scripts/fsdd_speakers.sh` (one run; the page is its output). Every row is one LAL adapter "
          "trained by `configs/fsdd-lal.toml` (SmolLM2-135M-Instruct, Whisper tiny.en, 150 steps, seed 0): "
          "on FSDD's official split (takes 0-4 of all six speakers test, the rest trains), and once per "
          "speaker on the five others (`pal data shared` writes `data/fsdd-speakers/SPEAKER/`), tested "
          f"on all 500 clips of the speaker it never heard. CPU: {cpu()}.\n")
    print("| trained on | tested on | clips | accuracy | 95% interval (items) | well-formed |")
    print("|---|---|---|---|---|---|")
    correct, n, well = results["official"]
    lo, hi = wilson(correct, n)
    print(f"| official split (6 speakers) | takes 0-4, same speakers | {n} | {100 * correct / n:.1f}% "
          f"| {100 * lo:.1f} to {100 * hi:.1f} | {100 * well / n:.1f}% |")
    speakers = [s for s in results if s != "official"]
    accuracies = []
    for s in speakers:
        correct, n, well = results[s]
        lo, hi = wilson(correct, n)
        accuracies.append(correct / n)
        print(f"| the 5 others | {s} (new speaker) | {n} | {100 * correct / n:.1f}% "
              f"| {100 * lo:.1f} to {100 * hi:.1f} | {100 * well / n:.1f}% |")
    k = len(accuracies)
    mean, (lo, hi) = mean_t_interval(accuracies)
    official = results["official"][0] / results["official"][1]
    print(f"\nHeld out by speaker, mean over the {k} rotations: **{100 * mean:.1f}%** "
          f"(95% t-interval over rotations {100 * lo:.1f} to {100 * hi:.1f}; lowest "
          f"{100 * min(accuracies):.1f}%, {speakers[accuracies.index(min(accuracies))]}), against "
          f"{100 * official:.1f}% on the official split. The official split's figure is one trained "
          "model on speakers it has heard: its interval is over items only.")


if __name__ == "__main__":
    main()
