#!/usr/bin/env bash
# D2L 10.3, deep GRU: 2 layers of 32, 32 steps, batch 1024, SGD lr 2, clip 1, 50 epochs.
set -euo pipefail
DATA=${DATA:-builtin}
exec jaxseq train lm --model gru --layers 2 --hidden 32 --seq-len 32 --batch-size 1024 \
  --optimizer sgd --lr 2 --clip 1 --epochs 50 --preprocess d2l --data "$DATA" \
  --workdir "${WORKDIR:-runs/d2l-deep-gru-$(basename "$DATA" .txt)}" "$@"
