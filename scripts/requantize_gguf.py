#!/usr/bin/env python3
"""Re-quantizes a GGUF file to another llama.cpp type with llama-cpp-python's
`llama_model_quantize` (for benchmarks: `pal bench llm` on Q4_0, Q8_0, Q4_K_M, ... of one model).

Re-quantizing an already quantized file (SmolLM2's Q4_1) is lossy twice over: the result is for
measuring speed, not quality.

    python scripts/requantize_gguf.py IN.gguf OUT.gguf Q4_K_M
"""

import argparse
import sys

import llama_cpp


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="GGUF file to read")
    parser.add_argument("dest", help="GGUF file to write")
    parser.add_argument("type", help="llama.cpp file type: Q4_0, Q4_1, Q5_0, Q8_0, Q4_K_M, Q6_K, ...")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    name = f"LLAMA_FTYPE_MOSTLY_{args.type.upper()}"
    ftype = getattr(llama_cpp, name, None)
    if ftype is None:
        known = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp)
                       if n.startswith("LLAMA_FTYPE_MOSTLY_"))
        print(f"unknown type {args.type!r}; llama.cpp knows {', '.join(known)}", file=sys.stderr)
        return 2
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = args.threads
    params.allow_requantize = True
    status = llama_cpp.llama_model_quantize(
        args.source.encode(), args.dest.encode(), params
    )
    if status != 0:
        print(f"llama_model_quantize failed ({status}) on {args.source}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
