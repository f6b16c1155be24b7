#!/usr/bin/env bash
# The one script to run on a GPU machine that has the NVIDIA driver but no Rust toolchain and no
# network. Build the binary here first and carry it along (about 10 MB):
#   scripts/build_cuda.sh pal-cuda.xz
# then, on the GPU machine, from the repository root:
#   scripts/gpu_check.sh pal-cuda.xz [OUT_DIR]
# It writes to OUT_DIR (default: $OUT, else ./gpu-results): nvidia-smi.txt, libraries.txt (which
# CUDA libraries it found where), selftest.md / selftest.json / selftest.rc (`pal selftest
# --device cuda`: every op, a training step per route and a generation against the CPU in f64).
# torch-reference.jsonl: the PyTorch side of the GPU benchmark (scripts/bench_modes_torch.py on
# cuda, Llama-3.2-1B shapes, bf16, batch 8, Nt 64, Na 256 and 750, PLITS and LAL, eager, and
# compiled at Na 750: s/step and peak GPU memory), the targets pal's side will be held to; pal's side waits
# for `pal bench modes --device`.
# Plan: under 8 minutes (selftest about a minute; 6 reference runs of at most 90 s each, the
# eager ones seconds); it never stops early, so that every result comes back.
set -uo pipefail
cd "$(dirname "$0")/.."
archive=${1:?usage: scripts/gpu_check.sh PAL_CUDA_XZ [OUT_DIR]}
out=${2:-${OUT:-gpu-results}}
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
: > "$out/torch-reference.jsonl"
for na in 256 750; do
  for mode in lal plits; do
    compiles=("")
    if [ "$na" = 750 ]; then compiles+=(--compile); fi
    for compile in "${compiles[@]}"; do
      timeout 90 python3 scripts/bench_modes_torch.py --device cuda --dtype bf16 --shapes llama-3.2-1b \
        --batch 8 --text-tokens 64 --audio-tokens "$na" --mode "$mode" --steps 3 $compile \
        >> "$out/torch-reference.jsonl" 2>> "$out/torch-reference.err" \
        || echo "{\"mode\": \"$mode\", \"audio_tokens\": $na, \"failed\": true}" >> "$out/torch-reference.jsonl"
    done
  done
done
cat "$out/torch-reference.jsonl"
rm -rf "$work"
