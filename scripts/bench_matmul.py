#!/usr/bin/env python3
"""Matrix products beside torch.matmul, on the same shapes, threads and machine:
pal's f32 product and its bf16 products against a packed frozen weight (every kernel the CPU
has), against torch f32 (MKL on Intel) and torch bf16 (oneDNN; AMX where the CPU has it).
Writes docs/bench/matmul.{json,md} (`--out PREFIX`: PREFIX.{json,md}).

    python scripts/bench_matmul.py --example target/release/examples/matmul_shapes [--threads 2]

The torch side is timed like pal's: the product of an f32 input with the weight's transpose
(bf16: both operands bf16, as autocast casts them), warmed up, then enough rounds for about 20
GFLOP. Both sides run under pal's allocator settings (glibc keeps freed memory, as the `pal`
binary sets it: a product's output of tens of MiB is otherwise mapped and zeroed afresh each
time), and the two alternate shape by shape for `--rounds` rounds; each cell is the median.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch


def cpu():
    model, flags = platform.machine(), ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
            flags = " ".join(f for f in line.split(":", 1)[1].split() if f in wanted)
            break
    return model, flags


def torch_rate(m, k, n, dtype):
    x = torch.randn(m, k)
    w = torch.randn(n, k)
    if dtype == "bf16":
        x, w = x.bfloat16(), w.bfloat16()
    gflop = 2.0 * m * k * n / 1e9
    rounds = max(3, min(50, int(20.0 / gflop)))
    with torch.no_grad():
        for _ in range(2):
            torch.matmul(x, w.t())
        start = time.perf_counter()
        for _ in range(rounds):
            torch.matmul(x, w.t())
        return gflop * rounds / (time.perf_counter() - start)


# pal's allocator settings (pal_bench::allocator_env): glibc reads them at process start.
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def pal_rate(example, env, m, k, n):
    out = subprocess.run([example, "--json", f"{m},{k},{n}"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main():
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, **ALLOCATOR_ENV))
    p = argparse.ArgumentParser()
    p.add_argument("--example", required=True, help="pal's matmul_shapes example, built --release")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="docs/bench/matmul")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two sides per shape")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = dict(os.environ, CANDLE_NUM_THREADS=str(args.threads), RAYON_NUM_THREADS=str(args.threads))
    shapes = [(r["m"], r["k"], r["n"]) for r in map(json.loads, subprocess.run(
        [args.example, "--json", "--shapes"], env=env, check=True, capture_output=True,
        text=True).stdout.splitlines())]
    rows = []
    for m, k, n in shapes:
        runs = []
        for _ in range(args.rounds):
            r = pal_rate(args.example, env, m, k, n)
            r["torch_f32"] = torch_rate(m, k, n, "f32")
            r["torch_bf16"] = torch_rate(m, k, n, "bf16")
            runs.append(r)
        med = lambda f: statistics.median(f(r) for r in runs)
        row = {"m": m, "k": k, "n": n, "rounds": args.rounds,
               "pal_bf16": {kn: med(lambda r: r["pal_bf16"][kn]) for kn in runs[0]["pal_bf16"]}}
        for key in ("candle_f32", "pal_f32", "torch_f32", "torch_bf16"):
            row[key] = med(lambda r: r[key])
        rows.append(row)
    model, flags = cpu()
    report = {"cpu": model, "flags": flags, "threads": args.threads, "torch": torch.__version__,
              "onednn": torch.backends.mkldnn.is_available(), "rows": rows}
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=2)
    kernels = sorted({k for r in rows for k in r["pal_bf16"]})
    out = [f"# Matrix products beside torch.matmul\n",
           f"`python scripts/bench_matmul.py --example target/release/examples/matmul_shapes --threads {args.threads}"
           + (f" --rounds {args.rounds}" if args.rounds != 3 else "")
           + (f" --out {args.out}`" if args.out != "docs/bench/matmul" else "`"),
           f"(pal's side: `cargo run --release -p pal-nn --example matmul_shapes`; the two sides "
           f"alternate shape by shape, {args.rounds} rounds, medians; both under pal's allocator "
           f"settings, {' '.join(f'{k}={v}' for k, v in ALLOCATOR_ENV.items())}).\n",
           f"CPU: {model}; flags: {flags}; {args.threads} threads; torch {torch.__version__} "
           f"(f32 through MKL, bf16 through oneDNN).\n",
           "GFLOP/s of `x W^T` (x f32 `m x k`, W `n x k`). pal bf16: the weight packed once in bf16 "
           "tiles (as a frozen weight is at load), the input rounded to bf16 and packed inside "
           "each timed product, f32 accumulation and output. torch bf16: both operands bf16.\n",
           ]
    if kernels:
        out += ["| m x k x n | torch f32 | pal f32 | pal / torch f32 | torch bf16 | "
                + " | ".join(f"pal bf16 ({k})" for k in kernels) + " | best pal bf16 / torch bf16 |",
                "|---|---|---|---|---|" + "---|" * len(kernels) + "---|"]
    else:
        out += ["pal has no bf16 kernel for this CPU (it needs AMX or AVX512-BF16; `--dtype auto` "
                "picks f32 here): the bf16 columns are torch's alone.\n",
                "| m x k x n | torch f32 | pal f32 | pal / torch f32 | torch bf16 |",
                "|---|---|---|---|---|"]
    for r in rows:
        best = max(r["pal_bf16"].values(), default=0.0)
        cells = "".join(f" {r['pal_bf16'].get(k, 0):.0f} |" for k in kernels)
        ratio = f" {best / r['torch_bf16']:.2f} |" if kernels else ""
        out.append(f"| {r['m']} x {r['k']} x {r['n']} | {r['torch_f32']:.0f} | {r['pal_f32']:.0f} | "
                   f"{r['pal_f32'] / r['torch_f32']:.2f} | {r['torch_bf16']:.0f} |{cells}{ratio}")
    at_90 = sum(r["pal_f32"] >= 0.9 * r["torch_f32"] for r in rows)
    out.append(f"\npal f32 reaches at least 90% of torch's f32 GFLOP/s on {at_90} of {len(rows)} shapes.")
    if kernels:
        at_80 = sum(max(r["pal_bf16"].values(), default=0.0) >= 0.8 * r["torch_bf16"] for r in rows)
        out.append(f"pal's best bf16 reaches at least 80% of torch's bf16 on {at_80} of {len(rows)} shapes.")
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
