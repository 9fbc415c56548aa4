#!/usr/bin/env bash
# GPU check for a machine with one NVIDIA GPU and no network (about 6 minutes on an H100).
#
# Here, with network, fetch the wheels the GPU image lacks (it has torch, transformers, accelerate, peft):
#   scripts/gpu_check.sh --download        # writes .whl/ (ignored by git)
# There, from the repository root:
#   bash scripts/gpu_check.sh              # installs .whl/ into /tmp/site, then runs scripts/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--download" ]; then
  mkdir -p .whl
  py="--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  python3 -m pip download --no-deps $py -d .whl trl==1.16.0 transformers==5.24.0 datasets dill multiprocess hjson \
    huggingface_hub accelerate==1.15.0 peft==0.21.2
  # DeepSpeed ships only as a source archive: build a wheel without compiled ops (they JIT-compile where needed).
  DS_BUILD_OPS=0 python3 -m pip wheel --no-deps -w .whl deepspeed==0.19.8
  exit 0
fi
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 480 python3 scripts/gpu_check.py --out "${OUT:-/tmp/gpu_check}"
