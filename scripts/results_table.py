#!/usr/bin/env python3
"""Collects `scripts/results.sh`'s evaluations into docs/results.{md,json}."""
import json
import pathlib
import sys
import tomllib

runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
MODES = [("pal", "PAL"), ("lal", "LAL"), ("plits", "PLITS")]
# (task, column title, metric, format)
COLUMNS = [
    ("fsdd", "digits acc.", "accuracy", "pct"),
    ("esc10", "ESC-10 acc.", "accuracy", "pct"),
    ("esc10-captions", "ESC-10 caption CIDEr-D", "cider_d", "num"),
    ("beeps", "beeps acc.", "accuracy", "pct"),
    ("noise", "noise acc.", "accuracy", "pct"),
    ("chords", "chords acc.", "accuracy", "pct"),
    ("espeak", "espeak WER", "wer", "pct"),
    ("speech", "JFK+Beckett WER", "wer", "pct"),
]
rows = {}
for mode, _ in MODES:
    run = runs / f"instruct-{mode}"
    summary = json.loads((run / "train_summary.json").read_text())
    steps = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    stage = tomllib.loads((run / "curriculum.toml").read_text())["stages"][0]
    samples = stage["batch_size"] * stage.get("grad_accum", 1)
    step_seconds = sorted(samples / m["samples_per_s"] for m in steps)
    row = {"train_minutes": summary["seconds"] / 60, "peak_gib": summary["peak_rss_bytes"] / 2**30,
           "median_step_seconds": step_seconds[len(step_seconds) // 2]}
    for task, _, metric, _ in COLUMNS:
        s = json.loads((run / f"eval-{task}.summary.json").read_text())
        row[task] = {"value": s[metric], "n": s["total"]}
    rows[mode] = row
out.with_suffix(".json").write_text(json.dumps(rows, indent=2))

lines = [
    "| mode | " + " | ".join(c[1] for c in COLUMNS) + " | train time | median step | peak memory |",
    "|---" * (len(COLUMNS) + 4) + "|",
]
for mode, name in MODES:
    r = rows[mode]
    cells = []
    for task, _, _, fmt in COLUMNS:
        v = r[task]["value"]
        cells.append(f"{100 * v:.1f}%" if fmt == "pct" else f"{v:.3f}")
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['train_minutes']:.1f} min | {r['median_step_seconds']:.2f} s | {r['peak_gib']:.2f} GiB |")
counts = ", ".join(f"{task} {rows['pal'][task]['n']}" for task, *_ in COLUMNS)
text = "\n".join(lines) + f"\n\nHeld-out examples per split: {counts}.\n"
out.with_suffix(".md").write_text(text)
