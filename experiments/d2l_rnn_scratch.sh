#!/usr/bin/env bash
# D2L 9.5, "RNN from scratch": one-hot inputs, hidden 32, 32 steps, batch 1024,
# SGD lr 1, gradient clipping at 1, 100 epochs, D2L's preprocessing.
# Usage: DATA=builtin|timemachine|PATH experiments/d2l_rnn_scratch.sh [extra jaxseq flags]
set -euo pipefail
DATA=${DATA:-builtin}
exec jaxseq train lm --model rnn --hidden 32 --seq-len 32 --batch-size 1024 \
  --optimizer sgd --lr 1 --clip 1 --epochs 100 --preprocess d2l --data "$DATA" \
  --workdir "${WORKDIR:-runs/d2l-rnn-$(basename "$DATA" .txt)}" "$@"
