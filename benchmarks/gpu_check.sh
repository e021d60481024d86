#!/usr/bin/env bash
# The GPU check, for a person with an NVIDIA GPU (about 3 minutes): see benchmarks/gpu_check.py.
#   benchmarks/gpu_check.sh [DEVICE] [OUT_DIR]     (DEVICE: CUDA by default; NV, AMD, METAL, CL work too)
# Uses the python3 on PATH with spiralctl's dependencies installed, or a tinygrad wheel in .whl/
# (see the README: "Checking a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import tinygrad" 2>/dev/null && ls .whl/tinygrad-*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl
  export PYTHONPATH="$PWD/.site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_check.py --device "${1:-CUDA}" --out "${2:-gpu-check}" "${@:3}"
