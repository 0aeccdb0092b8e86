#!/usr/bin/env bash
# The GPU check in one command: decode the carried CIFAR-10 copy, then run
# bench/gpu_check.py and keep its table. About 8 minutes on an H100.
#
#   bench/gpu_check.sh COPY_DIR [OUT_DIR]
#
# COPY_DIR holds the JPEG copy's prepare.py and archive (carried with the tree); the
# table is written to OUT_DIR (default bench/results) as gpu_check-<card>-<date>.md.
set -euo pipefail
copy=${1:?usage: bench/gpu_check.sh COPY_DIR [OUT_DIR]}
out=${2:-bench/results}
scratch=$(mktemp -d /tmp/gpu-check-data.XXXXXX)
python3 "$copy/prepare.py" "$scratch" --npz
card=$(python3 -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tr ' /' '__')
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py --data-dir "$scratch" \
  --out "$out/gpu_check-$card-$(date -u +%Y-%m-%d).md"
