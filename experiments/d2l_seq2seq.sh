#!/usr/bin/env bash
# D2L 10.7 (seq2seq) and 11.4 (Bahdanau attention; MODEL=bahdanau): embed 256, hidden 256, 2 GRU layers,
# dropout 0.2, Adam lr 0.005, clip 1, batch 128, 30 epochs on the first 512 fra-eng pairs (the next 128
# held out), sentences cut to 9 tokens (<eos> included). D2L builds its vocabularies (min_freq 2) from all
# 640 pairs; ours come from the 512 training pairs only, so --min-freq 1 keeps "he's" (seen once there).
# Then: python experiments/d2l_examples.py --workdir <workdir>   (the book's four sentences, BLEU-2)
set -euo pipefail
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
MODEL=${MODEL:-seq2seq}
exec jaxseq train translate --model "$MODEL" --embed 256 --hidden 256 --layers 2 --dropout 0.2 \
  --data "$DATA" --preprocess d2l --max-pairs 640 --split head --valid-fraction 0.2 --test-fraction 0 \
  --max-len 9 --buckets none --min-freq 1 --batch-size 128 --optimizer adam --lr 0.005 --clip 1 --epochs 30 \
  --eval-every 40 --log-every 4 --beam 4 --workdir "${WORKDIR:-runs/d2l-$MODEL}" "$@"
