#!/usr/bin/env python3
"""Prefill and decode tokens/s of an LLM in PyTorch eager (CPU, f32), the reference for
`pal bench llm --compare-python PYTHON`.

Same token ids, shapes, batch sizes and threads as pal's benchmark; greedy, KV cache. Prints one
JSON line. Needs torch, transformers, gguf and accelerate.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="HF folder or .gguf file")
parser.add_argument("--prompt-tokens", type=int, default=128)
parser.add_argument("--decode-tokens", type=int, default=64)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--batches", default="1,8")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()

torch.set_num_threads(args.threads)
if args.model.endswith(".gguf"):
    import os

    folder, name = os.path.split(os.path.abspath(args.model))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size


def prompt_ids(s, n):
    # The same ids as pal_bench::llm::prompt_ids.
    return [(i * 7919 + 13 + s * 104729) % vocab for i in range(n)]


def measure(b):
    ids = torch.tensor([prompt_ids(s, args.prompt_tokens) for s in range(b)])
    prefill, decode = [], []
    with torch.inference_mode():
        for run in range(args.repeats + 1):
            start = time.perf_counter()
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            prefill_s = time.perf_counter() - start
            past = out.past_key_values
            start = time.perf_counter()
            for _ in range(args.decode_tokens):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            decode_s = time.perf_counter() - start
            if run > 0:  # the first run warms up
                prefill.append(b * args.prompt_tokens / prefill_s)
                decode.append(b * args.decode_tokens / decode_s)
    return {
        "batch": b,
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
    }


throughput = [measure(int(b)) for b in args.batches.split(",")]
print(json.dumps({
    "engine": "transformers",
    "weights": f"f32, eager (torch {torch.__version__}, transformers {transformers.__version__})",
    "throughput": throughput,
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
