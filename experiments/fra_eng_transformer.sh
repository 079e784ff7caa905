#!/usr/bin/env bash
# The Transformer on fra_eng.sh's data (the first 30,000 fra-eng pairs dealt at random into 27,000 training,
# 1,500 validation and 1,500 test pairs, sentences cut to 12 tokens), for its BLEU table next to seq2seq and
# Bahdanau: d_model 256, 2 + 2 blocks, 4 heads, FFN 1024, dropout 0.2, label smoothing 0.1, Adam lr 0.001
# with 200 warmup steps, clip 1, batch 128, 5 epochs. Test BLEU: greedy and beam 4 (alpha 0.6).
set -euo pipefail
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
exec jaxseq train translate --model transformer --d-model 256 --layers 2 --heads 4 --ffn 1024 --dropout 0.2 \
  --label-smoothing 0.1 --data "$DATA" --preprocess d2l --max-pairs 30000 --split random --valid-fraction 0.05 \
  --test-fraction 0.05 --max-len 12 --batch-size 128 --optimizer adam --lr 0.001 --warmup 200 --clip 1 \
  --epochs 5 --eval-every 250 --beam 4 --alpha 0.6 --examples 8 --workdir "${WORKDIR:-runs/fra-eng-transformer}" "$@"
