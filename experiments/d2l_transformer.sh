#!/usr/bin/env bash
# D2L 11.7 (Transformer): d_model 256, 2 encoder and 2 decoder blocks, 4 heads, FFN 64, dropout 0.2 (post-norm,
# sinusoidal positions), Adam lr 0.001, clip 1, batch 128, 30 epochs on the first 512 fra-eng pairs (the
# next 128 held out), sentences cut to 9 tokens; the data flags are d2l_seq2seq.sh's.
# Then: python experiments/d2l_examples.py --workdir <workdir>   (the book's four sentences, BLEU-2)
set -euo pipefail
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
exec jaxseq train translate --model transformer --d-model 256 --layers 2 --heads 4 --ffn 64 --dropout 0.2 \
  --data "$DATA" --preprocess d2l --max-pairs 640 --split head --valid-fraction 0.2 --test-fraction 0 \
  --max-len 9 --buckets none --min-freq 1 --batch-size 128 --optimizer adam --lr 0.001 --clip 1 --epochs 30 \
  --label-smoothing 0 --warmup 0 \
  --eval-every 40 --log-every 4 --beam 4 --workdir "${WORKDIR:-runs/d2l-transformer}" "$@"
