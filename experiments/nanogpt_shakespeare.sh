#!/usr/bin/env bash
# nanoGPT's CPU configuration of its character Shakespeare model (config/train_shakespeare_char.py with the
# README's laptop overrides): 4 layers, 4 heads, d_model 128, context 64, batch 12, 2000 iterations,
# dropout 0, AdamW lr 1e-3 (100 warmup steps, cosine decay to 1e-4), weight decay 0.1, beta2 0.99, clip 1.0;
# GPT-2 blocks (pre-norm, learned positions, GELU). nanoGPT reports a validation loss of about 1.88
# nats/char for it. Validation here: the last 10% of the text, as in nanoGPT.
#   DATA=../shared/data/tinyshakespeare.txt bash experiments/nanogpt_shakespeare.sh
set -euo pipefail
DATA=${DATA:-../shared/data/tinyshakespeare.txt}
exec jaxseq train lm --model transformer --layers 4 --heads 4 --d-model 128 --seq-len 64 --batch-size 12 \
  --steps 2000 --dropout 0 --optimizer adamw --lr 1e-3 --schedule cosine --warmup 100 --min-lr 1e-4 \
  --weight-decay 0.1 --beta2 0.99 --clip 1.0 --norm pre --positional learned --ffn-activation gelu \
  --eval-every 500 --log-every 100 --no-progress --data "$DATA" --workdir "${WORKDIR:-runs/nanogpt-shakespeare}" "$@"
