#!/usr/bin/env python3
"""The GPU race as one markdown table, from what scripts/gpu_check.sh wrote to OUT_DIR:
pal's `pal bench modes --device cuda --dtype bf16` reports (modes-SHAPES.json) beside the PyTorch
reference's runs on the same card (torch-reference.jsonl), with model FLOP utilisation against
the card's measured bf16 matmul peak (bf16-peak.json). Standard library only.

    python3 scripts/gpu_report.py OUT_DIR > docs/bench/gpu.md
"""
import json
import pathlib
import sys


def read_json(path):
    """A result file's JSON, or None when a step failed to write it (every other result is
    still reported)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_json_line(line):
    try:
        return json.loads(line)
    except ValueError:
        return None


def main():
    out = pathlib.Path(sys.argv[1])
    peak = (read_json(out / "bf16-peak.json") or {}).get("tflops")
    peak = peak * 1e12 if peak else None
    lines = (out / "torch-reference.jsonl").read_text().splitlines() \
        if (out / "torch-reference.jsonl").exists() else []
    torch = [t for t in (read_json_line(l) for l in lines) if t is not None]
    print("# pal against PyTorch on one GPU\n")
    print(f"From `scripts/gpu_check.sh` (results in `{out.name}`): training steps (forward and "
          "backward, no optimizer step on either side) with the frozen LLM in bf16 and the adapter "
          "in f32, random weights, batch 8, Nt 64. MFU: the cost model's FLOPs of a step (pal's "
          "report) over its time, against the card's bf16 matmul peak"
          + (f" measured here ({peak / 1e12:.0f} TFLOP/s)." if peak else " (not measured)."))
    print("\n| shapes | Na | mode | pal s/step | PyTorch eager s/step | PyTorch compiled s/step "
          "| pal samples/s | pal peak GPU (MiB) | PyTorch peak GPU (MiB) | pal MFU | PyTorch MFU (best) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for report in sorted(out.glob("modes-*.json")):
        shapes = report.stem.removeprefix("modes-")
        data = read_json(report)
        if data is None:
            print(f"| {shapes} | - | - | no report (see {report.stem}.log) |")
            continue
        for e in data["measurements"]:
            if e["task"] != "train" or e["implementation"] != "pal":
                continue
            mode, na = e["mode"], e["audio_tokens"]
            ref = {t.get("compiled", False): t for t in torch
                   if t.get("shapes") == shapes and t.get("mode") == mode
                   and t.get("audio_tokens") == na and "step_seconds" in t}
            flops = e.get("predicted_train_flops")
            mfu = lambda s: f"{100 * flops / s / peak:.1f}%" if (flops and peak and s) else "-"
            eager, compiled = ref.get(False, {}), ref.get(True, {})
            best = min((t["step_seconds"] for t in ref.values()), default=None)
            mib = lambda b: f"{b / 2**20:.0f}" if b else "-"
            sec = lambda s: f"{s:.4f}" if s else "-"
            step = e.get("step_seconds")
            print(f"| {shapes} | {na} | {mode} | {sec(step)} | {sec(eager.get('step_seconds'))} "
                  f"| {sec(compiled.get('step_seconds'))} "
                  f"| {data['batch'] / step:.1f} | {mib(e.get('peak_gpu_bytes'))} "
                  f"| {mib(eager.get('peak_gpu_bytes') or compiled.get('peak_gpu_bytes'))} "
                  f"| {mfu(step)} | {mfu(best)} |")
    failed = [t for t in torch if t.get("failed")]
    if failed:
        print(f"\nPyTorch runs that failed or ran out of time: {failed}")
    # `pal selftest --device cuda`, and the NCCL build's (which adds the gradients' all-reduce).
    for name, label in [("selftest", "CUDA build"), ("selftest-nccl", "NCCL build")]:
        path = out / f"{name}.json"
        if not path.exists() and not (out / f"{name}.md").exists():
            continue
        checks = (read_json(path) or {}).get("checks")
        if checks is None:
            print(f"\n`pal selftest --device cuda` ({label}): no result (see {name}.md)")
            continue
        bad = [c["name"] for c in checks if c["error"] > c["tolerance"]]
        nccl = [c for c in checks if c["name"].startswith("NCCL")]
        print(f"\n`pal selftest --device cuda` ({label}): {len(checks) - len(bad)} of "
              f"{len(checks)} checks pass" + (f"; failed: {bad}" if bad else "") + ".")
        for c in nccl:
            print(f"- {c['name']}: error {c['error']:.2e} (tolerance {c['tolerance']:.0e})")
    # `pal train` of the tiny job on the GPU, through NCCL and on the CPU (gpu_check.sh).
    path = out / "train-equivalence.json"
    if path.exists():
        print("\n10 training steps of the tiny job (`scripts/tiny_train_fixture.py`), adapters' "
              "largest relative difference (`|a - b| / |a|` per tensor):\n")
        for name, value in (read_json(path) or {}).items():
            shown = f"{value:.2e}" if isinstance(value, float) else value
            print(f"- {name}: {shown}")


if __name__ == "__main__":
    main()
