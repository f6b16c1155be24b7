#!/usr/bin/env python3
"""Prefill and decode tokens/s of a GGUF model in llama.cpp (through llama-cpp-python's C API),
the reference for `pal bench llm --llama-cpp-python PYTHON`.

Same token ids, shapes, batch sizes and threads as pal's benchmark; greedy. A batch of b
sequences is one llama_batch per step (prompt: all b prompts at once; decode: one token per
sequence), as llama.cpp's own batched example does. Prints one JSON line, with
llama_print_system_info() and whether llama.cpp's extra (repack/AMX) weight buffers were on:
they are off unless PAL_LLAMACPP_EXTRA_BUFTS=1, since on an Intel Xeon VM with AMX they crashed
llama.cpp with SIGSEGV (where they work, turn them on for llama.cpp's best figure).

llama-cpp-python builds llama.cpp from source on install:
    python3 -m venv VENV && VENV/bin/pip install llama-cpp-python==0.3.16
"""
import argparse
import ctypes
import json
import os
import resource
import statistics
import time

import llama_cpp
import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help=".gguf file")
parser.add_argument("--prompt-tokens", type=int, default=128)
parser.add_argument("--decode-tokens", type=int, default=64)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--batches", default="1,8")
parser.add_argument("--threads", type=int, default=2)
args = parser.parse_args()


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def quiet(level, text, user_data):
    pass


llama_cpp.llama_log_set(quiet, ctypes.c_void_p())
llama_cpp.llama_backend_init()
model_params = llama_cpp.llama_model_default_params()
extra_bufts = os.environ.get("PAL_LLAMACPP_EXTRA_BUFTS") == "1"
model_params.use_extra_bufts = extra_bufts
model = llama_cpp.llama_model_load_from_file(args.model.encode(), model_params)
vocab_size = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))


def prompt_ids(s, n):
    # The same ids as pal_bench::llm::prompt_ids.
    return [(i * 7919 + 13 + s * 104729) % vocab_size for i in range(n)]


def measure(b):
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = b * (args.prompt_tokens + args.decode_tokens + 8)
    params.n_batch = max(b * args.prompt_tokens, 512)
    params.n_ubatch = params.n_batch
    params.n_seq_max = b
    params.n_threads = args.threads
    params.n_threads_batch = args.threads
    ctx = llama_cpp.llama_init_from_model(model, params)
    batch = llama_cpp.llama_batch_init(b * args.prompt_tokens, 0, b)

    def step(tokens_per_seq, first_position):
        batch.n_tokens = 0
        last = []
        for s, tokens in enumerate(tokens_per_seq):
            for i, t in enumerate(tokens):
                k = batch.n_tokens
                batch.token[k] = t
                batch.pos[k] = first_position + i
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = s
                batch.logits[k] = i == len(tokens) - 1
                batch.n_tokens += 1
            last.append(batch.n_tokens - 1)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        return [
            int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, k), shape=(vocab_size,))))
            for k in last
        ]

    prefill, decode = [], []
    for run in range(args.repeats + 1):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        start = time.perf_counter()
        nxt = step([prompt_ids(s, args.prompt_tokens) for s in range(b)], 0)
        prefill_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.decode_tokens):
            nxt = step([[t] for t in nxt], args.prompt_tokens + i)
        decode_s = time.perf_counter() - start
        if run > 0:  # the first run warms up
            prefill.append(b * args.prompt_tokens / prefill_s)
            decode.append(b * args.decode_tokens / decode_s)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return {
        "batch": b,
        "prefill_tokens_per_s": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
    }


throughput = [measure(int(b)) for b in args.batches.split(",")]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({
    "engine": "llama.cpp",
    "weights": f"the GGUF's own (llama-cpp-python {llama_cpp.__version__})",
    "throughput": throughput,
    "peak_rss_bytes": peak,
    "system_info": llama_cpp.llama_print_system_info().decode().strip()
    + f"; extra (repack/AMX) weight buffers {'on' if extra_bufts else 'off (PAL_LLAMACPP_EXTRA_BUFTS=1 turns them on)'}",
}))
