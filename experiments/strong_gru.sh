#!/usr/bin/env bash
# A stronger character GRU on the raw text (no preprocessing): hidden 512, 64 steps, batch 32,
# Adam 2e-3 with 100 warmup steps and cosine decay to 1e-4, clip 1, 4000 steps.
set -euo pipefail
DATA=${DATA:-builtin}
exec jaxseq train lm --model gru --hidden 512 --seq-len 64 --batch-size 32 \
  --optimizer adam --lr 2e-3 --schedule cosine --warmup 100 --min-lr 1e-4 --clip 1 --steps 4000 \
  --data "$DATA" --workdir "${WORKDIR:-runs/strong-gru-$(basename "$DATA" .txt)}" "$@"
