#!/usr/bin/env bash
# Load test of `pal serve`, every setting one after the other on the same machine, on loopback:
# 200 streamed chat completions with audio, 16 at a time, through the openai client, over the
# bundled clips. Settings: max batch 8 and 1, with the audio cache off, then on and warm (one
# untimed question per clip first), with every core computing, then with one (`--threads 1`:
# the HTTP side and the load generator share these cores). Writes docs/bench/serve.{json,md}.
#   [SERVE_ARGS='--dtype f32'] scripts/bench_serve.sh RUN_DIR PYTHON_WITH_OPENAI [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1 python=$2 requests=${3:-200} concurrency=${4:-16}
cargo build --release -q -p pal
mkdir -p docs/bench
results=()
cores=$(nproc)
for threads in "$cores" 1; do
 for cache in 0 512; do
  for batch in 8 1; do
    log=$(mktemp)
    # shellcheck disable=SC2086 # SERVE_ARGS: more `pal serve` flags, word-split on purpose.
    target/release/pal --threads "$threads" serve --model "$run" --port 0 --model-name bench \
      --max-batch "$batch" --queue 64 --audio-cache-mb "$cache" ${SERVE_ARGS:-} 2> "$log" &
    pid=$!
    until grep -q "on http://" "$log"; do sleep 0.2; kill -0 $pid; done
    addr=$(grep -o "http://[0-9.:]*" "$log" | head -1)
    warm=$([ "$cache" -gt 0 ] && echo --warm || true)
    echo "threads=$threads max_batch=$batch audio_cache_mb=$cache: $addr" >&2
    report=$("$python" scripts/load_test.py --base-url "$addr/v1" --model bench $warm \
      --requests "$requests" --concurrency "$concurrency" assets/clips/*.wav)
    # The server's counters (/metrics, Prometheus text) as the JSON fields the tables read.
    health=$(curl -s "$addr/metrics" | "$python" -c '
import json, sys
m = {}
for line in sys.stdin:
    if line.startswith("#") or not line.strip():
        continue
    name, value = line.rsplit(" ", 1)
    m[name] = float(value)
n = lambda k: int(m.get(k, 0))
print(json.dumps({
    "decode_steps": n("pal_decode_steps_total"), "decoded_rows": n("pal_decoded_rows_total"),
    "audio_cache_hits": n("pal_audio_cache_hits_total"), "encoder_batches": n("pal_encoder_batches_total"),
    "prompt_rows_run": n("pal_prompt_rows_run_total"), "prompt_rows_reused": n("pal_prompt_rows_reused_total"),
    "prompt_cache_hits": n("pal_prompt_cache_hits_total"),
    "busy_s": {s: round(m.get("pal_busy_seconds_total{stage=\"%s\"}" % s, 0), 3) for s in ("encode", "prefill", "decode")}}))')
    # The server's CPU seconds (user + system) over its life.
    server_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$pid/stat)
    kill -TERM $pid; wait $pid
    results+=("{\"threads\": $threads, \"max_batch\": $batch, \"audio_cache_mb\": $cache, \"load\": $report, \"server\": $health, \"server_cpu_s\": $server_cpu}")
  done
 done
done
json="[$(IFS=,; echo "${results[*]}")]"
echo "$json" > docs/bench/serve.json
"$python" - "$json" > docs/bench/serve.md <<'PY'
import json, sys
rows = json.loads(sys.argv[1])
print("# pal serve load test\n")
print("`scripts/bench_serve.sh RUN_DIR PYTHON`: loopback, openai client, streamed, greedy, max_tokens 16, "
      "200 requests 16 at a time over the bundled clips (six clips, four questions), every setting in one "
      "run on one machine: every core computing, then one (`pal --threads 1 serve`), each with the audio "
      "cache off and on. With the cache on, one untimed question per clip comes first (the cache holds "
      "every clip; the prompts asked about them are kept as the timed requests come).\n")
print("| threads | audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l, s = r["load"], r["server"]
    cache = "off" if r["audio_cache_mb"] == 0 else f"{r['audio_cache_mb']} MiB, warm"
    print(f"| {r['threads']} | {cache} | {r['max_batch']} | {l['failed']} | {l['requests_per_s']} | {l['p50_s']} | {l['p95_s']} | "
          f"{l['ttft_p50_s']} | {l['ttft_p95_s']} | {s['decode_steps']} | {s['decoded_rows'] / max(s['decode_steps'], 1):.1f} | {s.get('audio_cache_hits', 0)} |")
by = {(r["threads"], r["audio_cache_mb"], r["max_batch"]): r["load"]["requests_per_s"] for r in rows}
print()
for threads in dict.fromkeys(r["threads"] for r in rows):
    cores = f"{threads} compute thread" + ("s" if threads != 1 else "")
    for cache, name in ((0, "cache off"), (512, "cache warm")):
        if (threads, cache, 8) in by and (threads, cache, 1) in by:
            ratio = by[(threads, cache, 8)] / by[(threads, cache, 1)]
            print(f"- batching speed-up, {cores}, {name} (requests/s, max batch 8 vs 1): {ratio:.2f}x")
    if (threads, 512, 8) in by and (threads, 0, 1) in by:
        print(f"- batching and a warm cache against neither, {cores}: {by[(threads, 512, 8)] / by[(threads, 0, 1)]:.2f}x")
print("\n## Where the time went\n")
print("Seconds over the whole run of each setting (with the cache on, the untimed warm-up "
      "questions count too): the encoder thread's busy time (cache lookups, encoding, LAL prefix), "
      "the model thread's prefill and decoding steps (`/metrics`, `pal_busy_seconds_total`), the server's CPU time, "
      "and the load generator's own CPU time on the same cores.\n")
print("| threads | audio cache | max batch | timed wall (s) | encoder busy (s) | encoder batches | prefill (s) | decode steps (s) | server CPU (s) | load generator CPU (s) | prompt rows run | prompt rows reused | whole prompts reused |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l, s = r["load"], r["server"]
    busy = s.get("busy_s", {})
    cache = "off" if r["audio_cache_mb"] == 0 else f"{r['audio_cache_mb']} MiB, warm"
    print(f"| {r['threads']} | {cache} | {r['max_batch']} | {l['wall_s']} | {busy.get('encode', '-')} | {s.get('encoder_batches', '-')} | {busy.get('prefill', '-')} | "
          f"{busy.get('decode', '-')} | {r.get('server_cpu_s', '-')} | {l.get('client_cpu_s', '-')} | "
          f"{s.get('prompt_rows_run', '-')} | {s.get('prompt_rows_reused', '-')} | {s.get('prompt_cache_hits', '-')} |")
print("\n## What bounds the batching speed-up here\n")
print("With the cache off every request's clip goes through the encoder, one stage that batching the "
      "model thread cannot shorten (clips of equal length are encoded together, but on a CPU a batch "
      "saves little: 3 to 7% on 5 to 10 s clips). The encoder thread's busy time bounds the requests/s "
      "of the batched setting:\n")
for threads in dict.fromkeys(r["threads"] for r in rows):
    eight = next((r for r in rows if (r["threads"], r["audio_cache_mb"], r["max_batch"]) == (threads, 0, 8)), None)
    one = by.get((threads, 0, 1))
    if eight and one:
        busy = eight["server"]["busy_s"]["encode"]
        bound = eight["load"]["requests"] / busy
        print(f"- {threads} compute thread{'s' if threads != 1 else ''}: encoder busy {busy} s of {eight['load']['wall_s']} s, "
              f"so at most {bound:.1f} requests/s, {bound / one:.2f}x the max-batch-1 setting")
print("\nWith the cache warm, a request's prompt is mostly reused and its answer is a few tokens "
      "(this adapter answers in about 3.7): what is left is decoding steps and each request's own "
      "HTTP, audio decoding and sampling. The model's own decoding scales 2.59x from batch 1 to 8 "
      "(`docs/bench/llm.md`, without a client on the same cores); here the running batch averages "
      "about 6 and the load generator shares the 2 cores.")
print("""
## Earlier figures

2026-12-01, the same code less a review (a kept prompt is shared, not copied, when the same
question comes again; encoding's retry of a failed batch shared with `pal encode`; the previous
run of this script):

| threads | audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|---|
| 2 | off | 8 | 0 | 9.877 | 1.475 | 2.659 | 1.093 | 1.683 | 169 | 4.3 | 0 |
| 2 | off | 1 | 0 | 9.197 | 1.736 | 1.872 | 1.708 | 1.848 | 730 | 1.0 | 0 |
| 2 | 512 MiB, warm | 8 | 0 | 86.706 | 0.149 | 0.385 | 0.08 | 0.196 | 121 | 6.2 | 200 |
| 2 | 512 MiB, warm | 1 | 0 | 50.514 | 0.296 | 0.455 | 0.281 | 0.426 | 753 | 1.0 | 200 |
| 1 | off | 8 | 0 | 12.588 | 1.245 | 1.709 | 1.014 | 1.378 | 231 | 3.2 | 0 |
| 1 | off | 1 | 0 | 11.858 | 1.339 | 1.419 | 1.322 | 1.405 | 730 | 1.0 | 0 |
| 1 | 512 MiB, warm | 8 | 0 | 120.065 | 0.103 | 0.253 | 0.062 | 0.092 | 120 | 6.3 | 200 |
| 1 | 512 MiB, warm | 1 | 0 | 69.967 | 0.211 | 0.298 | 0.193 | 0.28 | 753 | 1.0 | 200 |

Batching speed-up then: 1.07x (2 threads, cache off), 1.72x (2 threads, warm), 1.06x (1 thread,
cache off), 1.72x (1 thread, warm).

2026-12-01, the same code less a refactor of the KV cache's appends (the differences from the run
after it are this machine's noise):

| threads | audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|---|
| 2 | off | 8 | 0 | 10.52 | 1.442 | 2.493 | 1.102 | 1.516 | 181 | 4.0 | 0 |
| 2 | off | 1 | 0 | 9.715 | 1.639 | 1.774 | 1.613 | 1.752 | 730 | 1.0 | 0 |
| 2 | 512 MiB, warm | 8 | 0 | 106.926 | 0.125 | 0.276 | 0.072 | 0.115 | 120 | 6.3 | 200 |
| 2 | 512 MiB, warm | 1 | 0 | 63.479 | 0.24 | 0.309 | 0.227 | 0.291 | 753 | 1.0 | 200 |
| 1 | off | 8 | 0 | 13.526 | 1.146 | 1.603 | 0.936 | 1.319 | 223 | 3.3 | 0 |
| 1 | off | 1 | 0 | 12.329 | 1.292 | 1.376 | 1.274 | 1.363 | 730 | 1.0 | 0 |
| 1 | 512 MiB, warm | 8 | 0 | 130.721 | 0.099 | 0.23 | 0.059 | 0.088 | 121 | 6.2 | 200 |
| 1 | 512 MiB, warm | 1 | 0 | 72.187 | 0.205 | 0.308 | 0.188 | 0.287 | 753 | 1.0 | 200 |

Batching speed-up then: 1.08x (2 threads, cache off), 1.68x (2 threads, warm), 1.10x (1 thread,
cache off), 1.81x (1 thread, warm).

2026-12-01, the same server and adapter with prompts kept with their clip and decoding's
attention in one pass, before the encoder thread took waiting requests together (every core
computing):

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 9.458 | 1.654 | 1.96 | 1.61 | 1.781 | 603 | 1.2 | 0 |
| off | 1 | 0 | 9.141 | 1.727 | 1.911 | 1.707 | 1.88 | 730 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 104.754 | 0.127 | 0.278 | 0.071 | 0.127 | 120 | 6.3 | 200 |
| 512 MiB, warm | 1 | 0 | 59.544 | 0.257 | 0.34 | 0.242 | 0.318 | 753 | 1.0 | 200 |

Batching speed-up then: 1.03x (cache off), 1.76x (warm).

| audio cache | max batch | timed wall (s) | encoder busy (s) | prefill (s) | decode steps (s) | server CPU (s) | load generator CPU (s) | prompt rows run | prompt rows reused | whole prompts reused |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 21.15 | 20.98 | 13.746 | 4.349 | 39.47 | 1.13 | 10300 | 0 | 0 |
| off | 1 | 21.88 | 21.312 | 14.047 | 4.679 | 40.51 | 1.13 | 10300 | 0 | 0 |
| 512 MiB, warm | 8 | 1.91 | 0.395 | 0.394 | 1.777 | 4.88 | 0.91 | 369 | 10239 | 194 |
| 512 MiB, warm | 1 | 3.36 | 0.396 | 0.368 | 3.142 | 7.62 | 1.02 | 369 | 10239 | 194 |

2026-12-01, the same server and adapter before prompts were kept with their clip (every request
ran its whole prompt; with the cache off, the LAL prefix was computed on the model thread):

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 10.497 | 1.296 | 2.902 | 0.902 | 1.25 | 99 | 7.4 | 0 |
| off | 1 | 0 | 9.383 | 1.692 | 1.869 | 1.668 | 1.846 | 730 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 23.045 | 0.581 | 1.313 | 0.406 | 0.522 | 120 | 6.3 | 200 |
| 512 MiB, warm | 1 | 0 | 19.243 | 0.822 | 0.883 | 0.809 | 0.869 | 753 | 1.0 | 200 |

Batching speed-up then: 1.12x (cache off), 1.20x (warm).

| audio cache | max batch | timed wall (s) | encoder busy (s) | prefill (s) | decode steps (s) | server CPU (s) | load generator CPU (s) |
|---|---|---|---|---|---|---|---|
| off | 8 | 19.05 | 16.692 | 16.948 | 1.98 | 35.6 | 1.08 |
| off | 1 | 21.31 | 17.033 | 16.904 | 3.825 | 39.25 | 1.16 |
| 512 MiB, warm | 8 | 8.68 | 0.364 | 7.609 | 1.357 | 18.03 | 0.98 |
| 512 MiB, warm | 1 | 10.39 | 0.378 | 7.889 | 2.625 | 21.16 | 1.14 |

2026-12-01, the same server and adapter before the tile kernel (decoding on chunks of eight
blocks, prefill in f32):

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 6.954 | 1.965 | 4.271 | 1.451 | 2.331 | 97 | 7.5 | 0 |
| off | 1 | 0 | 6.066 | 2.595 | 2.848 | 2.577 | 2.829 | 730 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 12.216 | 1.116 | 2.337 | 0.793 | 1.33 | 120 | 6.3 | 200 |
| 512 MiB, warm | 1 | 0 | 10.63 | 1.488 | 1.625 | 1.461 | 1.605 | 753 | 1.0 | 200 |

Batching speed-up then: 1.15x (cache off), 1.15x (warm).

| audio cache | max batch | timed wall (s) | encoder busy (s) | prefill (s) | decode steps (s) | server CPU (s) | load generator CPU (s) |
|---|---|---|---|---|---|---|---|
| off | 8 | 28.76 | 19.459 | 25.812 | 2.745 | 56.09 | 1.43 |
| off | 1 | 32.97 | 18.997 | 27.588 | 4.851 | 61.97 | 1.44 |
| 512 MiB, warm | 8 | 16.37 | 0.481 | 14.268 | 2.735 | 32.97 | 1.35 |
| 512 MiB, warm | 1 | 18.81 | 0.42 | 15.012 | 4.184 | 38.19 | 1.33 |

2026-12-01, the same server and adapter, with the 512-bit decoding kernel, before the busy-time
counters (the run before that):

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 7.874 | 1.736 | 3.889 | 1.281 | 1.942 | 97 | 7.5 | 0 |
| off | 1 | 0 | 6.539 | 2.418 | 2.572 | 2.396 | 2.547 | 730 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 13.917 | 0.939 | 2.156 | 0.69 | 1.257 | 120 | 6.3 | 200 |
| 512 MiB, warm | 1 | 0 | 10.928 | 1.449 | 1.53 | 1.427 | 1.515 | 753 | 1.0 | 200 |

Batching speed-up then: 1.20x (cache off), 1.27x (warm).

2026-12-01, the same server and adapter, before the 512-bit decoding kernel:

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 7.697 | 1.771 | 4.007 | 1.321 | 1.826 | 98 | 7.4 | 0 |
| off | 1 | 0 | 6.349 | 2.512 | 2.667 | 2.49 | 2.626 | 730 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 13.338 | 0.992 | 2.353 | 0.746 | 0.958 | 120 | 6.3 | 200 |
| 512 MiB, warm | 1 | 0 | 10.277 | 1.543 | 1.651 | 1.522 | 1.626 | 753 | 1.0 | 200 |

Batching speed-up then: 1.21x (cache off), 1.30x (warm).

2026-11-30, the same server (continuous batching, encoder thread, quantized decoding) with the
adapter shipped before gated LAL (its answers to these questions were shorter on some clips):

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 7.056 | 1.793 | 3.965 | 1.341 | 1.786 | 175 | 7.5 | 0 |
| off | 1 | 0 | 5.935 | 2.692 | 2.868 | 2.651 | 2.83 | 1319 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 11.904 | 1.02 | 2.319 | 0.782 | 0.941 | 212 | 6.4 | 200 |
| 512 MiB, warm | 1 | 0 | 9.329 | 1.715 | 1.81 | 1.666 | 1.78 | 1358 | 1.0 | 200 |

Batching speed-up then: 1.19x (cache off), 1.28x (warm).

2026-11, static batches, encoder on the model thread, with the audio cache, f32 decoding:

| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | batches | mean batch | cache hits |
|---|---|---|---|---|---|---|---|---|---|---|
| off | 8 | 0 | 4.429 | 3.49 | 3.858 | 2.556 | 2.922 | 26 | 7.7 | 0 |
| off | 1 | 0 | 3.578 | 4.505 | 4.982 | 4.289 | 4.806 | 200 | 1.0 | 0 |
| 512 MiB, warm | 8 | 0 | 5.762 | 2.685 | 3.048 | 1.728 | 2.091 | 32 | 6.4 | 200 |
| 512 MiB, warm | 1 | 0 | 4.447 | 3.547 | 3.85 | 3.407 | 3.775 | 206 | 1.0 | 200 |

Batching speed-up then: 1.24x (cache off), 1.30x (warm).

2026-11, before the audio cache (static batches, encoder on the model thread):

| max batch | requests | concurrent | failed | requests/s | p50 latency (s) | p95 latency (s) | batches run | mean batch |
|---|---|---|---|---|---|---|---|---|
| 8 | 200 | 16 | 0 | 1.443 | 10.914 | 11.537 | 25 | 8.0 |
| 1 | 200 | 16 | 0 | 1.119 | 14.218 | 15.524 | 200 | 1.0 |

Batching speed-up then: 1.29x.""")
PY
cat docs/bench/serve.md
