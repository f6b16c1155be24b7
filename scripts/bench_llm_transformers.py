#!/usr/bin/env python3
"""Prefill and decode tokens/s of an LLM in PyTorch eager (CPU), the reference for `pal bench llm`.

Same shapes and token ids as pal's benchmark; prints one JSON line. Needs torch, transformers,
gguf and accelerate. Run by `pal bench llm --compare-python VENV/bin/python`.
"""
import argparse
import json
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="HF folder or .gguf file")
parser.add_argument("--prompt-tokens", type=int, default=128)
parser.add_argument("--decode-tokens", type=int, default=64)
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()

torch.set_num_threads(os.cpu_count())
if args.model.endswith(".gguf"):
    folder, name = os.path.split(os.path.abspath(args.model))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
else:
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
model.eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(i * 7919 + 13) % vocab for i in range(args.prompt_tokens)]])
prefill, decode = [], []
with torch.inference_mode():
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        prefill.append(args.prompt_tokens / (time.perf_counter() - start))
        past = out.past_key_values
        start = time.perf_counter()
        for _ in range(args.decode_tokens):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        decode.append(args.decode_tokens / (time.perf_counter() - start))
print(json.dumps({"prefill_tokens_per_s": statistics.median(prefill),
                  "decode_tokens_per_s": statistics.median(decode),
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
