#!/usr/bin/env python3
"""The Python package's overhead: `m.ask_batch` against `pal eval` on the same clips.

Both sides load the same run and answer the same (clip, question) pairs greedily with the same
batch size and token budget; each is timed as a whole process (start, load, decode, answer) and
the Python side's `ask_batch` call alone as well. Runs alternate, the median is reported, and the
answers must agree item for item before any time is written.

    python scripts/bench_python.py --pal target/release/pal \
        --model adapters/smollm2-whisper-pal --manifest data/instruct/fsdd/test.jsonl

`python` must have the `pal` package installed (`pip install ./crates/pal-py`) built from the
same tree as `--pal`.
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

PY_SIDE = r"""
import json, sys, time
import pal
model, manifest, batch, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = [json.loads(line) for line in open(manifest) if line.strip()]
clips = [r["audio"] for r in rows]
questions = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in rows]
t0 = time.perf_counter()
m = pal.AudioLlm.load(model)
t1 = time.perf_counter()
answers = m.ask_batch(clips, questions, max_tokens=max_tokens, batch_size=batch)
t2 = time.perf_counter()
print(json.dumps({"load_s": t1 - t0, "ask_batch_s": t2 - t1, "answers": answers}))
"""


def cpu_line() -> str:
    info = pathlib.Path("/proc/cpuinfo").read_text()
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines()
                  if l.startswith("model name")), "unknown CPU")
    flags = next((l.split(":", 1)[1].split() for l in info.splitlines()
                  if l.startswith("flags")), [])
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
             if f in flags]
    return f"{model}; {', '.join(shown) or 'no AVX2'}"


def run_eval(args, out: pathlib.Path) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    subprocess.run([args.pal, "eval", "--model", args.model, "--manifest", args.manifest,
                    "--batch", str(args.batch), "--max-tokens", str(args.max_tokens),
                    "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    answers = [json.loads(line)["answer"] for line in out.read_text().splitlines() if line]
    return wall, answers


def run_python(args) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run([args.python, "-c", PY_SIDE, args.model, args.manifest,
                           str(args.batch), str(args.max_tokens)],
                          check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pal", default="target/release/pal")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--model", default="adapters/smollm2-whisper-pal")
    p.add_argument("--manifest", default="data/instruct/fsdd/test.jsonl")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="docs/bench/python")
    args = p.parse_args()

    n = sum(1 for line in open(args.manifest) if line.strip())
    evals, pys, calls, loads = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            wall, eval_answers = run_eval(args, pathlib.Path(tmp) / "items.jsonl")
            evals.append(wall)
            wall, py = run_python(args)
            pys.append(wall)
            calls.append(py["ask_batch_s"])
            loads.append(py["load_s"])
            if py["answers"] != eval_answers:
                diff = sum(a != b for a, b in zip(py["answers"], eval_answers))
                sys.exit(f"answers differ on {diff} of {n} items: no time written")
            print(f"run {i + 1}: pal eval {evals[-1]:.2f} s, python {pys[-1]:.2f} s "
                  f"(ask_batch {calls[-1]:.2f} s)", file=sys.stderr)
    e, py, call = statistics.median(evals), statistics.median(pys), statistics.median(calls)
    result = {
        "cpu": cpu_line(), "clips": n, "model": args.model, "manifest": args.manifest,
        "batch": args.batch, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "pal_eval_s": evals, "python_process_s": pys, "ask_batch_s": calls, "load_s": loads,
        "python_over_eval": py / e,
    }
    out = pathlib.Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"""# Python: `ask_batch` against `pal eval`

`python scripts/bench_python.py --model {args.model} --manifest {args.manifest}`

CPU: {result['cpu']}. {n} clips, one question each, greedy, batch {args.batch}, at most
{args.max_tokens} tokens; the same answers on both sides, item for item (checked on every run).
Median of {args.repeats} alternating runs, each a whole process (start, load, decode, answer).

| side | seconds (median) | runs |
|---|---|---|
| `pal eval --manifest` (also scores) | {e:.2f} | {', '.join(f'{x:.2f}' for x in evals)} |
| `python`: `pal.AudioLlm.load` + `m.ask_batch` | {py:.2f} | {', '.join(f'{x:.2f}' for x in pys)} |
| of which `m.ask_batch` alone | {call:.2f} | {', '.join(f'{x:.2f}' for x in calls)} |

Python over `pal eval`: **{py / e:.3f}x** (the issue's target: within 5%, so at most 1.05x).
""")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
