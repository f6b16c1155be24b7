#!/usr/bin/env bash
# Load test of `pal serve`, every setting one after the other on the same machine, on loopback:
# 200 streamed chat completions with audio, 16 at a time, through the openai client, over the
# bundled clips. Settings: max batch 8 and 1, with the audio cache off, then on and warm (one
# untimed question per clip first). Writes docs/bench/serve.{json,md}.
#   scripts/bench_serve.sh RUN_DIR PYTHON_WITH_OPENAI [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
run=$1 python=$2 requests=${3:-200} concurrency=${4:-16}
cargo build --release -q -p pal
mkdir -p docs/bench
results=()
for cache in 0 512; do
  for batch in 8 1; do
    log=$(mktemp)
    target/release/pal serve --model "$run" --port 0 --model-name bench --max-batch "$batch" \
      --queue 64 --audio-cache-mb "$cache" 2> "$log" &
    pid=$!
    until grep -q "on http://" "$log"; do sleep 0.2; kill -0 $pid; done
    addr=$(grep -o "http://[0-9.:]*" "$log" | head -1)
    warm=$([ "$cache" -gt 0 ] && echo --warm || true)
    echo "max_batch=$batch audio_cache_mb=$cache: $addr" >&2
    report=$("$python" scripts/load_test.py --base-url "$addr/v1" --model bench $warm \
      --requests "$requests" --concurrency "$concurrency" assets/clips/*.wav)
    health=$(curl -s "$addr/health")
    # The server's CPU seconds (user + system) over its life.
    server_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' /proc/$pid/stat)
    kill -TERM $pid; wait $pid
    results+=("{\"max_batch\": $batch, \"audio_cache_mb\": $cache, \"load\": $report, \"server\": $health, \"server_cpu_s\": $server_cpu}")
  done
done
json="[$(IFS=,; echo "${results[*]}")]"
echo "$json" > docs/bench/serve.json
"$python" - "$json" > docs/bench/serve.md <<'PY'
import json, sys
rows = json.loads(sys.argv[1])
print("# pal serve load test\n")
print("`scripts/bench_serve.sh RUN_DIR PYTHON`: loopback, openai client, streamed, greedy, max_tokens 16, "
      "200 requests 16 at a time over the bundled clips, every setting in one run on one machine. "
      "With the cache on, one untimed question per clip comes first (the cache is warm).\n")
print("| audio cache | max batch | failed | requests/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | p95 first token (s) | decode steps | mean running batch | cache hits |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l, s = r["load"], r["server"]
    cache = "off" if r["audio_cache_mb"] == 0 else f"{r['audio_cache_mb']} MiB, warm"
    print(f"| {cache} | {r['max_batch']} | {l['failed']} | {l['requests_per_s']} | {l['p50_s']} | {l['p95_s']} | "
          f"{l['ttft_p50_s']} | {l['ttft_p95_s']} | {s['decode_steps']} | {s['decoded_rows'] / max(s['decode_steps'], 1):.1f} | {s.get('audio_cache_hits', 0)} |")
by = {(r["audio_cache_mb"], r["max_batch"]): r["load"]["requests_per_s"] for r in rows}
for cache, name in ((0, "cache off"), (512, "cache warm")):
    if (cache, 8) in by and (cache, 1) in by:
        print(f"\nBatching speed-up, {name} (requests/s, max batch 8 vs 1, same run): {by[(cache, 8)] / by[(cache, 1)]:.2f}x")
if (512, 8) in by and (0, 1) in by:
    print(f"\nBatching and a warm cache against neither: {by[(512, 8)] / by[(0, 1)]:.2f}x")
print("\n## Where the time went\n")
print("Seconds over the whole run of each setting (with the cache on, the untimed warm-up "
      "questions count too): the encoder thread's busy time (cache lookups, encoding, LAL prefix), "
      "the model thread's prefill and decoding steps (`/health`, `busy_s`), the server's CPU time, "
      "and the load generator's own CPU time on the same cores.\n")
print("| audio cache | max batch | timed wall (s) | encoder busy (s) | prefill (s) | decode steps (s) | server CPU (s) | load generator CPU (s) | prompt rows run | prompt rows reused | whole prompts reused |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    l, s = r["load"], r["server"]
    busy = s.get("busy_s", {})
    cache = "off" if r["audio_cache_mb"] == 0 else f"{r['audio_cache_mb']} MiB, warm"
    print(f"| {cache} | {r['max_batch']} | {l['wall_s']} | {busy.get('encode', '-')} | {busy.get('prefill', '-')} | "
          f"{busy.get('decode', '-')} | {r.get('server_cpu_s', '-')} | {l.get('client_cpu_s', '-')} | "
          f"{s.get('prompt_rows_run', '-')} | {s.get('prompt_rows_reused', '-')} | {s.get('prompt_cache_hits', '-')} |")
print("""
## Earlier figures

2026-12-01, the same server and adapter before prompts were kept with their clip (every request
ran its whole prompt; with the cache off, the LAL prefix was computed on the model thread; the
previous run of this script):

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
