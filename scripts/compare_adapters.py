#!/usr/bin/env python3
"""The largest relative difference between adapters, tensor by tensor (`|a - b| / |a|`, Frobenius
norms), as JSON. Standard library only (a GPU machine may lack numpy and safetensors): reads
f32 safetensors files by hand.

    python3 scripts/compare_adapters.py NAME=A.safetensors:B.safetensors ...
"""
import json
import math
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {info['dtype']}, not F32")
        start, end = info["data_offsets"]
        tensors[name] = struct.unpack(f"<{(end - start) // 4}f", data[start:end])
    return tensors


def relative_difference(a, b):
    if a.keys() != b.keys():
        return math.inf
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        norm = math.sqrt(sum(v * v for v in x))
        diff = math.sqrt(sum((u - v) ** 2 for u, v in zip(x, y)))
        worst = max(worst, diff / max(norm, 1e-12))
    return worst


def main():
    result = {}
    for arg in sys.argv[1:]:
        name, _, pair = arg.partition("=")
        a, _, b = pair.partition(":")
        try:
            result[name] = relative_difference(load(a), load(b))
        except (OSError, ValueError, SystemExit) as e:
            result[name] = f"not compared: {e}"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
