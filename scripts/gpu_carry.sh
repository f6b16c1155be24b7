#!/usr/bin/env bash
# Prepares gpu-carry/ (git-ignored, about 23 MB) with all that scripts/gpu_check.sh uses on a GPU
# machine that has no Rust toolchain and no network:
# - pal-cuda.xz: the CUDA build (scripts/build_cuda.sh);
# - pal-cuda-nccl.xz: the CUDA build with NCCL, without MPI (GPU machines may lack OpenMPI);
# - fixture/: the tiny training job (scripts/tiny_train_fixture.py; needs numpy and safetensors,
#   PAL_FIXTURE_PYTHON, default the test venv's Python).
# Then, with gpu-carry carried along, on the GPU machine from the repository root:
#   scripts/gpu_check.sh gpu-carry/pal-cuda.xz OUT gpu-carry/pal-cuda-nccl.xz gpu-carry/fixture
# and back here: python3 scripts/gpu_report.py OUT > docs/bench/gpu.md
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PAL_FIXTURE_PYTHON:-${PAL_HOME:-$HOME/.cache/pal}/test-venv/bin/python}"
rm -rf gpu-carry
mkdir -p gpu-carry
scripts/build_cuda.sh gpu-carry/pal-cuda.xz > /dev/null
PAL_CUDA_FEATURES=cuda,nccl scripts/build_cuda.sh gpu-carry/pal-cuda-nccl.xz > /dev/null
"$python" scripts/tiny_train_fixture.py gpu-carry/fixture
du -sh gpu-carry
