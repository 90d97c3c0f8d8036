#!/usr/bin/env bash
# A short training on GPU (one device, then all of them with DDP) beside the CPU: images/s.
# Without a CUDA GPU it says so and exits 0. Usage: bash benchmarks/gpu_check.sh [--epochs N]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "gpu_check: nvidia-smi not found (no NVIDIA driver on this machine)"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
