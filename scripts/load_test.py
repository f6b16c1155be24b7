#!/usr/bin/env python3
"""Load test for `pal serve` with the official `openai` client: N streamed chat completions
with audio, C at a time; prints requests/s, p50/p95 latency, p50/p95 time to first token and
failures as JSON. Exits 1 if any failed. `--warm` first asks one question about each clip, one
at a time and untimed (so that a server's audio cache holds every clip).

    python scripts/load_test.py --base-url http://127.0.0.1:8000/v1 --model NAME \
        --requests 200 --concurrency 16 [--warm] assets/clips/*.wav
"""
import argparse
import base64
import json
import pathlib
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

QUESTIONS = ["What is said?", "Describe the sound.", "What sound is this?", "Which digit is spoken?"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--api-key", default="unused")
    p.add_argument("--warm", action="store_true")
    p.add_argument("clips", nargs="+")
    args = p.parse_args()

    clips = [(base64.b64encode(pathlib.Path(c).read_bytes()).decode(), pathlib.Path(c).suffix.lstrip("."))
             for c in args.clips]
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=600)

    def one(i):
        data, fmt = clips[i % len(clips)]
        start = time.perf_counter()
        first = None
        pieces = 0
        try:
            stream = client.chat.completions.create(
                model=args.model,
                max_tokens=args.max_tokens,
                temperature=0,
                stream=True,
                messages=[{"role": "user", "content": [
                    {"type": "text", "text": QUESTIONS[i % len(QUESTIONS)]},
                    {"type": "input_audio", "input_audio": {"data": data, "format": fmt}},
                ]}],
            )
            finished = False
            for chunk in stream:
                if not chunk.choices:
                    continue
                if chunk.choices[0].delta.content:
                    pieces += 1
                    if first is None:
                        first = time.perf_counter() - start
                finished = finished or chunk.choices[0].finish_reason is not None
            total = time.perf_counter() - start
            return total, finished, pieces, first if first is not None else total
        except Exception as e:  # counted as a failure, printed once
            print(f"request {i} failed: {e}", file=sys.stderr)
            return time.perf_counter() - start, False, 0, None

    if args.warm:
        for i in range(len(clips)):
            one(i)

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(one, range(args.requests)))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    firsts = sorted(r[3] for r in results if r[3] is not None)
    failed = sum(1 for r in results if not r[1])
    report = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "failed": failed,
        "wall_s": round(wall, 2),
        "requests_per_s": round(args.requests / wall, 3),
        "text_chunks_per_s": round(sum(r[2] for r in results) / wall, 2),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "ttft_p50_s": round(statistics.median(firsts), 3) if firsts else None,
        "ttft_p95_s": round(firsts[int(0.95 * (len(firsts) - 1))], 3) if firsts else None,
        "warm": args.warm,
        # CPU seconds this load generator used (all its threads): on a small machine it competes
        # with the server for the same cores.
        "client_cpu_s": round(sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f)
                                  for f in ("ru_utime", "ru_stime")), 2),
    }
    print(json.dumps(report))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
