#!/usr/bin/env bash
# Builds `pal` with the `cuda` feature on a machine with neither a GPU nor a system CUDA toolkit,
# as CI does on every change (so the CUDA build keeps compiling):
# - the toolkit comes from PyPI wheels pinned to CUDA 13.0 (GPU machines with driver 580 run
#   CUDA 13.0, and PTX from a newer compiler does not load there; nvidia-nvvm must be pinned too,
#   or ptxas refuses the PTX: "Unsupported .version");
# - the driver library (libcuda), which no wheel ships, is a link-time stub made from the
#   driver API's names in the wheel's cuda.h; the real driver replaces it at run time;
# - the build has a target folder of its own, with fixed link flags, so that it never rebuilds
#   the CPU build's dependencies (changing RUSTFLAGS would).
# - with the `nccl` feature (PAL_CUDA_FEATURES=cuda,nccl or cuda,nccl,mpi), libnccl is a
#   link-time stub too, made from the names cudarc binds; the machine's libnccl.so.2 (from its
#   NCCL install, or the nvidia-nccl wheel PyTorch brings) replaces it at run time.
#   [PAL_CUDA_FEATURES=cuda,nccl] scripts/build_cuda.sh [OUT.xz]
# prints the binary's path; with OUT.xz, also writes it stripped and compressed (to carry to a
# GPU machine, see scripts/gpu_check.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
home="${PAL_HOME:-$HOME/.cache/pal}"
venv="${PAL_CUDA_VENV:-$home/cuda-toolkit-venv}"
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cublas==13.0.2.14
  nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
)
if ! "$venv/bin/python" -m pip show nvidia-cuda-nvcc 2>/dev/null | grep -q "^Version: 13.0.88$"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "${wheels[@]}"
fi
root=$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$root/bin/nvcc" ] || { echo "no nvcc in $root" >&2; exit 1; }
lib="$root/lib"
# The linker looks for unversioned names; the wheels ship versioned ones.
for name in cublas cublasLt cudart nvrtc curand; do
  versioned=$(ls "$lib/lib$name.so."* | head -1)
  ln -sf "$(basename "$versioned")" "$lib/lib$name.so"
done
stub="$venv/libcuda-stub"
if [ ! -f "$stub/libcuda.so" ]; then
  mkdir -p "$stub"
  grep -ohE '\bcu[A-Z][A-Za-z0-9_]*' "$root/include/cuda.h" | sort -u \
    | sed 's/.*/void &(void) {}/' > "$stub/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi
features="${PAL_CUDA_FEATURES:-cuda}"
nccl_stub="$venv/libnccl-stub"
mkdir -p "$nccl_stub"
if [[ ",$features," == *",nccl,"* ]] && [ ! -f "$nccl_stub/libnccl.so" ]; then
  cudarc=$(cargo metadata --locked --all-features --format-version 1 \
    | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')
  grep -ohE 'fn nccl[A-Za-z0-9_]*\(' "$(dirname "$cudarc")/src/nccl/sys/mod.rs" | sort -u \
    | sed -E 's/fn (.*)\(/void \1(void) {}/' > "$nccl_stub/stub.c"
  gcc -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$nccl_stub/libnccl.so" "$nccl_stub/stub.c"
fi
export PATH="$root/bin:$PATH"
export CUDA_ROOT="$root" CUDA_PATH="$root"
export CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export RUSTFLAGS="-L $lib -L $stub -L $nccl_stub"
export CARGO_TARGET_DIR="${PAL_CUDA_TARGET_DIR:-$HOME/.cache/pal-cuda-target}"
cargo build --locked --release -p pal --features "$features"
binary="$CARGO_TARGET_DIR/release/pal"
if [ $# -ge 1 ]; then
  out=$1
  strip -o "${out%.xz}" "$binary"
  xz -T2 -f -6 "${out%.xz}"
  echo "$out: $(du -h "$out" | cut -f1)" >&2
fi
echo "$binary"
