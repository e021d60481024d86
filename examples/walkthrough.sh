#!/usr/bin/env bash
# The whole journey on the built-in defaults: generate data, train, evaluate, predict, plot.
# Usage: bash examples/walkthrough.sh [WORK_DIR]   (default: demo)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=${1:-demo}

# 1000 direction spirals of 50 points: 600 to train, 200 to validate, 200 held out to test
spiralctl gen-data "$work/data" --test-fraction 0.2 --force
# hidden 8, batch 128, Adam lr 0.01, 25 epochs: the Lux tutorial's settings; the demo starts its
# run over each time (train never replaces a run folder's model by itself)
rm -rf "$work/run"
spiralctl train --data "$work/data" --out "$work/run"
spiralctl eval "$work/run/best.safetensors" "$work/data/test.safetensors"
# four hand-made spirals of 20 to 80 points, in a CSV with header sequence,x,y
spiralctl predict "$work/run/best.safetensors" "$here/spirals.csv"
# the first 16 test spirals, coloured by the model's prediction, mistakes framed in red
spiralctl plot "$work/data/test.safetensors" --checkpoint "$work/run/best.safetensors" --limit 16 \
  -o "$work/test-predictions.png" --force
