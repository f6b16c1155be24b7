#!/usr/bin/env bash
# The one script to run on a GPU machine that has the NVIDIA driver but no Rust toolchain and no
# network. Build the binary here first and carry it along (about 10 MB):
#   scripts/build_cuda.sh pal-cuda.xz
# then, on the GPU machine, from the repository root:
#   scripts/gpu_check.sh pal-cuda.xz [OUT_DIR] [pal-cuda-nccl.xz] [FIXTURE_DIR]
# (scripts/gpu_carry.sh prepares gpu-carry/ with the binary and the two optional arguments.)
# The third, optional, is the NCCL build (PAL_CUDA_FEATURES=cuda,nccl scripts/build_cuda.sh
# pal-cuda-nccl.xz, no MPI: GPU machines may have no OpenMPI); its selftest adds the NCCL
# all-reduce of a training step's gradients, one rank on this GPU (selftest-nccl.*), with the
# machine's libnccl.so.2 (a system NCCL, or the nvidia-nccl wheel of its PyTorch).
# The fourth, optional, is a tiny training job (python scripts/tiny_train_fixture.py DIR, made
# where numpy is, about 1 MB): 10 steps of LAL and PLITS with `pal train --device cuda`, the NCCL
# build's (one rank, the gradients through NCCL) and `--device cpu`; the adapters compared in
# train-equivalence.json (scripts/compare_adapters.py), logs in train-SIDE-ROUTE.log, each run's
# train_summary.json (steps, loss, seconds, the engine that summed) in train-SIDE-ROUTE.json.
# It writes to OUT_DIR (default: $OUT, else ./gpu-results): nvidia-smi.txt, libraries.txt (which
# CUDA libraries it found where), selftest.md / selftest.json / selftest.rc (`pal selftest
# --device cuda`: every op, a training step per route and a generation against the CPU in f64).
# modes-SHAPES.{json,md} / .log / .rc: pal's side of the GPU benchmark (`pal bench modes --device
# cuda --dtype bf16`, SmolLM2-135M and Llama-3.2-1B shapes with random weights, batch 8, Nt 64,
# Na 256 and 750, PLITS, LAL and PAL training steps: s/step and peak GPU memory).
# torch-reference.jsonl: the PyTorch side on the same card (scripts/bench_modes_torch.py, the same
# shapes, bf16, PLITS and LAL, eager, and compiled for Llama-3.2-1B at Na 750).
# bf16-peak.json: the card's measured bf16 matmul TFLOP/s. gpu.md: all of it side by side, with
# model FLOP utilisation (scripts/gpu_report.py).
# Plan: about 8 minutes (selftest about a minute, the NCCL build's another; pal's 12
# measurements, seconds each after the model is built; 10 reference runs of at most 90 s each,
# the eager ones seconds); it never stops early, so that every result comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
archive=${1:?usage: scripts/gpu_check.sh PAL_CUDA_XZ [OUT_DIR]}
out=${2:-${OUT:-gpu-results}}
nccl_archive=${3:-}
fixture=${4:-}
mkdir -p "$out"
work=$(mktemp -d)
xz -dc "$archive" > "$work/pal" && chmod +x "$work/pal"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1

# libcublas.so.13, libcudart.so.13 and libcurand.so.10: from a CUDA toolkit, the system's
# linker cache, or the NVIDIA wheels of the machine's PyTorch.
candidates=("${CUDA_HOME:-/usr/local/cuda}/lib64" /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu)
if wheels=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null); then
  while IFS= read -r dir; do candidates+=("$dir"); done < <(find "$wheels" -maxdepth 3 -type d -name lib 2>/dev/null)
fi
: > "$out/libraries.txt"
paths=()
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libcurand.so.10 libnvrtc.so.13; do
  found=""
  for dir in "${candidates[@]}"; do
    if [ -e "$dir/$lib" ]; then found="$dir"; break; fi
  done
  if [ -z "$found" ] && ldconfig -p 2>/dev/null | grep -q "$lib"; then found="(linker cache)"; fi
  echo "$lib: ${found:-MISSING}" >> "$out/libraries.txt"
  if [ -n "$found" ] && [ "$found" != "(linker cache)" ]; then paths+=("$found"); fi
done
export LD_LIBRARY_PATH="$(IFS=:; echo "${paths[*]:-}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cat "$out/libraries.txt"

timeout 300 "$work/pal" selftest --device cuda --json "$out/selftest.json" > "$out/selftest.md" 2>&1
echo $? > "$out/selftest.rc"
cat "$out/selftest.md"
if [ -n "$nccl_archive" ]; then
  xz -dc "$nccl_archive" > "$work/pal-nccl" && chmod +x "$work/pal-nccl"
  nccl_dir=""
  for dir in "${candidates[@]}"; do
    if [ -e "$dir/libnccl.so.2" ]; then nccl_dir="$dir"; break; fi
  done
  echo "libnccl.so.2: ${nccl_dir:-not in a candidate folder (linker cache?)}" >> "$out/libraries.txt"
  LD_LIBRARY_PATH="${nccl_dir:+$nccl_dir:}$LD_LIBRARY_PATH" timeout 300 "$work/pal-nccl" selftest \
    --device cuda --json "$out/selftest-nccl.json" > "$out/selftest-nccl.md" 2>&1
  echo $? > "$out/selftest-nccl.rc"
  tail -5 "$out/selftest-nccl.md"
fi
for shapes in smollm2-135m llama-3.2-1b; do
  timeout 240 "$work/pal" bench modes --device cuda --dtype bf16 --shapes "$shapes" --batch 8 \
    --text-tokens 64 --audio-tokens 256,750 --trainable adapter --rounds 1 --steps 3 \
    --out "$out/modes-$shapes" > "$out/modes-$shapes.log" 2>&1
  echo $? > "$out/modes-$shapes.rc"
  cat "$out/modes-$shapes.md" 2>/dev/null || tail -20 "$out/modes-$shapes.log"
done
: > "$out/torch-reference.jsonl"
for shapes in smollm2-135m llama-3.2-1b; do
  for na in 256 750; do
    for mode in lal plits; do
      compiles=("")
      if [ "$shapes" = llama-3.2-1b ] && [ "$na" = 750 ]; then compiles+=(--compile); fi
      for compile in "${compiles[@]}"; do
        timeout 90 python3 scripts/bench_modes_torch.py --device cuda --dtype bf16 --shapes "$shapes" \
          --batch 8 --text-tokens 64 --audio-tokens "$na" --mode "$mode" --steps 3 $compile \
          >> "$out/torch-reference.jsonl" 2>> "$out/torch-reference.err" \
          || echo "{\"shapes\": \"$shapes\", \"mode\": \"$mode\", \"audio_tokens\": $na, \"failed\": true}" >> "$out/torch-reference.jsonl"
      done
    done
  done
done
timeout 60 python3 - > "$out/bf16-peak.json" 2>> "$out/torch-reference.err" <<'PY'
import json, time, torch
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(5):
    a @ b
torch.cuda.synchronize()
start, reps = time.perf_counter(), 50
for _ in range(reps):
    a @ b
torch.cuda.synchronize()
print(json.dumps({"n": n, "tflops": 2 * n**3 * reps / (time.perf_counter() - start) / 1e12,
                  "device": torch.cuda.get_device_name()}))
PY
if [ -n "$fixture" ]; then
  pairs=()
  for route in lal plits; do
    for side in cpu cuda nccl; do
      binary="$work/pal" device=cuda libraries="$LD_LIBRARY_PATH"
      [ "$side" = cpu ] && device=cpu
      if [ "$side" = nccl ]; then
        [ -x "$work/pal-nccl" ] || continue
        binary="$work/pal-nccl" libraries="${nccl_dir:+$nccl_dir:}$LD_LIBRARY_PATH"
      fi
      (cd "$fixture" && LD_LIBRARY_PATH="$libraries" timeout 120 "$binary" train --quiet \
        --device "$device" --config "train-$route.toml" --output "$work/run-$side-$route") \
        > "$out/train-$side-$route.log" 2>&1
      echo $? > "$out/train-$side-$route.rc"
      # steps, final loss, seconds and the engine that summed the gradients (NCCL for the NCCL build)
      cp "$work/run-$side-$route/train_summary.json" "$out/train-$side-$route.json" 2>/dev/null
    done
    pairs+=("$route cuda vs cpu=$work/run-cpu-$route/adapter.safetensors:$work/run-cuda-$route/adapter.safetensors")
    if [ -x "$work/pal-nccl" ]; then
      pairs+=("$route nccl vs cuda=$work/run-cuda-$route/adapter.safetensors:$work/run-nccl-$route/adapter.safetensors")
    fi
  done
  python3 scripts/compare_adapters.py "${pairs[@]}" > "$out/train-equivalence.json"
  cat "$out/train-equivalence.json"
fi
python3 scripts/gpu_report.py "$out" > "$out/gpu.md"
cat "$out/gpu.md"
rm -rf "$work"
