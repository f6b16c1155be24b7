#!/usr/bin/env python3
"""Every held-out task of an adapter on one split, as a markdown table: `pal eval` on each task's
SPLIT manifest (`pal data instruct` into data/instruct, `pal data pairs` into data/pairs), by
question where a task asks several, with the share of well-formed answers, and the
out-of-distribution check set of the same split (`pal data ood` into data/ood: `validation.jsonl`
is the twin to make choices on, `test.jsonl` is read with the test splits), by clip kind; with
`--split test` also `pal demo`. Results are kept in RUN/report-SPLIT/ (delete to rerun).

    python3 scripts/adapter_report.py RUN [RUN ...] --split validation [--out PAGE.md]

Make choices on `validation`; read `test` once, for the final report. Accuracies carry a 95%
Wilson interval over the split's items (one trained model: the interval says nothing of seeds).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from intervals import wilson  # noqa: E402

PAL = os.environ.get("PAL", "target/release/pal")

# (task, manifest pattern, most tokens per answer, headline metric)
TASKS = [
    ("fsdd", "data/instruct/fsdd/{}.jsonl", 24, "accuracy"),
    ("esc10", "data/instruct/esc10/{}.jsonl", 24, "accuracy"),
    ("esc10-captions", "data/instruct/esc10-captions/{}.jsonl", 32, "cider_d"),
    ("espeak", "data/instruct/espeak/{}.jsonl", 64, "wer"),
    ("beeps", "data/instruct/beeps/{}.jsonl", 24, "accuracy"),
    ("noise", "data/instruct/noise/{}.jsonl", 24, "accuracy"),
    ("chords", "data/instruct/chords/{}.jsonl", 24, "accuracy"),
    ("instruments", "data/instruct/instruments/{}.jsonl", 24, "accuracy"),
    ("languages", "data/instruct/languages/{}.jsonl", 24, "accuracy"),
    ("unknown", "data/instruct/unknown/{}.jsonl", 32, "accuracy"),
    ("text-questions", "data/instruct/text-questions/{}.jsonl", 48, "accuracy"),
    ("which-has", "data/pairs/which-has/{}.jsonl", 32, "accuracy"),
    ("same-digit", "data/pairs/same-digit/{}.jsonl", 32, "accuracy"),
    ("louder", "data/pairs/louder/{}.jsonl", 32, "accuracy"),
    ("each-clip", "data/pairs/each-clip/{}.jsonl", 48, "accuracy"),
]
# Long recordings (`pal data long` into data/long), per length.
for _task, _metric in [("digit-strings", "wer"), ("sound-counts", "accuracy"), ("first-heard", "accuracy")]:
    for _length in ["30s", "120s", "600s"]:
        TASKS.append((f"{_task} {_length}", f"data/long/{_task}/{{}}-{_length}.jsonl", 32, _metric))


def evaluate(run, name, manifest, tokens, out):
    path = os.path.join(out, name + ".jsonl")
    if not os.path.exists(path.replace(".jsonl", ".summary.json")):
        done = subprocess.run([PAL, "eval", "--model", run, "--manifest", manifest, "--json", path,
                               "--max-tokens", str(tokens)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            # A model may refuse a task (a clip longer than it takes, two clips where it takes one).
            errors = [l for l in done.stderr.splitlines() if l.startswith("Error")] or done.stderr.splitlines()[-1:]
            print(f"{run}: {name} not evaluated: {' '.join(errors)}", file=sys.stderr)
            return None
    summary = json.load(open(path.replace(".jsonl", ".summary.json")))
    items = [json.loads(line) for line in open(path)]
    return summary, items


def cell(summary, metric, items):
    n = summary["total"]
    if metric == "accuracy":
        lo, hi = wilson(summary["correct"], n)
        text = f"{100 * summary['accuracy']:.1f}% ({summary['correct']}/{n}; {100 * lo:.0f}-{100 * hi:.0f})"
    elif metric == "wer":
        text = f"{100 * summary['wer']:.1f}% WER"
    else:
        text = f"{summary[metric]:.3f} CIDEr-D"
    wf = [i["well_formed"] for i in items if "well_formed" in i]
    return text, (f"{100 * sum(wf) / len(wf):.1f}%" if wf else "-")


def ood_by_kind(manifest, by_run):
    """The check set's well-formed answers by clip kind (the clip's name up to its first '-')
    and by question (the unrelated questions together)."""
    kinds = []
    for line in open(manifest):
        clip = os.path.basename(json.loads(line)["audio"])
        kinds.append(clip.split("-")[0] if not clip.startswith("near-") else "near-silence")
    standard = {"What sound is this?": "sound?", "Describe the sound.": "describe",
                "What is said?": "said?"}
    columns = sorted(set(kinds)) + ["sound?", "describe", "said?", "unrelated"]
    lines = ["\nThe check set's well-formed answers by clip kind and question:\n",
             "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for run, row in by_run.items():
        if row is None:
            continue
        counts = defaultdict(lambda: [0, 0])
        for item in row[1]:
            line = int(item["origin"].rsplit(":", 1)[1])
            for key in (kinds[line - 1], standard.get(item["question"], "unrelated")):
                counts[key][0] += int(item["well_formed"])
                counts[key][1] += 1
        lines.append(f"| {run} | " + " | ".join(f"{counts[c][0]}/{counts[c][1]}" for c in columns) + " |")
    return lines


def main():
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+", help="run folders (model.toml + adapter.safetensors)")
    p.add_argument("--split", choices=["validation", "test"], required=True)
    p.add_argument("--out", help="also write the tables to this markdown file")
    args = p.parse_args()
    lines = [f"`python3 scripts/adapter_report.py {' '.join(args.runs)} --split {args.split}`"
             + (f" (written to `{args.out}`)" if args.out else "") + "\n"]
    results = {}
    for run in args.runs:
        out = os.path.join(run, "report-" + args.split)
        os.makedirs(out, exist_ok=True)
        rows = {}
        for name, pattern, tokens, metric in TASKS:
            manifest = pattern.format(args.split)
            if not os.path.exists(manifest):
                print(f"skipped {name}: no {manifest}", file=sys.stderr)
                continue
            result = evaluate(run, name, manifest, tokens, out)
            if result is not None:
                rows[name] = result + (metric,)
        ood = f"data/ood/{args.split}.jsonl"
        if os.path.exists(ood):
            result = evaluate(run, "ood", ood, 96, out)
            if result is not None:
                rows["ood"] = result + ("well_formed",)
        if args.split == "test":
            demo = os.path.join(out, "demo.txt")
            if not os.path.exists(demo):
                with open(demo, "w") as f:
                    subprocess.run([PAL, "demo", "--model", run], stdout=f, stderr=subprocess.STDOUT)
            m = re.findall(r"(\d+/\d+) answers right", open(demo).read())
            rows["demo"] = m[-1] if m else "?"
        results[run] = rows

    manifests = {name: pattern.format(args.split) for name, pattern, _, _ in TASKS}
    manifests["ood"] = f"data/ood/{args.split}.jsonl"
    names = [name for name, _, _, _ in TASKS if os.path.exists(manifests[name])]
    names += ["ood"] if os.path.exists(manifests["ood"]) else []
    lines.append("| task | examples | " + " | ".join(f"{r}: score / well-formed" for r in args.runs) + " |")
    lines.append("|---|---|" + "---|" * len(args.runs))
    for name in names:
        cells, n = [], "-"
        for run in args.runs:
            row = results[run].get(name)
            if row is None:
                cells.append("not taken" if os.path.exists(manifests[name]) else "-")
                continue
            summary, items, metric = row
            n = summary["total"]
            if metric == "well_formed":
                wf = [i["well_formed"] for i in items if "well_formed" in i]
                cells.append(f"- / {100 * sum(wf) / max(1, len(wf)):.1f}% ({sum(wf)}/{len(wf)})")
            else:
                score, wf = cell(summary, metric, items)
                cells.append(f"{score} / {wf}")
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    if args.split == "test":
        lines.append("| `pal demo` | - | " + " | ".join(results[r]["demo"] for r in args.runs) + " |")

    # Tasks that ask several questions of a clip: accuracy by question.
    lines.append("\nBy question, where a task asks several:\n")
    lines.append("| task | question | " + " | ".join(args.runs) + " |")
    lines.append("|---|---|" + "---|" * len(args.runs))
    for name in names:
        questions = defaultdict(dict)
        for run in args.runs:
            row = results[run].get(name)
            if row is None or row[2] != "accuracy":
                continue
            for item in row[1]:
                questions[item["question"]].setdefault(run, []).append(item["correct"])
        if len(questions) < 2 or len(questions) > 3:
            continue
        for q, by_run in questions.items():
            cells = [f"{100 * sum(v) / len(v):.1f}% ({sum(v)}/{len(v)})" if (v := by_run.get(r)) else "-"
                     for r in args.runs]
            lines.append(f"| {name} | {q} | " + " | ".join(cells) + " |")
    if "ood" in names:
        lines += ood_by_kind(manifests["ood"], {r: results[r].get("ood") for r in args.runs})
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
