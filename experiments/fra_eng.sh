#!/usr/bin/env bash
# seq2seq vs Bahdanau attention (MODEL=seq2seq|bahdanau) on a real fra-eng subset: the first 30,000 pairs
# (short sentences; the file is ordered by length), dealt at random into 27,000 training, 1,500 validation
# and 1,500 test pairs; D2L's sizes (embed 256, hidden 256, 2 GRU layers, dropout 0.2), Adam lr 0.005,
# clip 1, batch 128, 5 epochs; sentences cut to 12 tokens. Test BLEU: greedy and beam 4 (alpha 0.6).
set -euo pipefail
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
MODEL=${MODEL:-bahdanau}
exec jaxseq train translate --model "$MODEL" --embed 256 --hidden 256 --layers 2 --dropout 0.2 \
  --data "$DATA" --preprocess d2l --max-pairs 30000 --split random --valid-fraction 0.05 --test-fraction 0.05 \
  --max-len 12 --batch-size 128 --optimizer adam --lr 0.005 --clip 1 --epochs 5 --eval-every 250 \
  --beam 4 --alpha 0.6 --examples 8 --workdir "${WORKDIR:-runs/fra-eng-$MODEL}" "$@"
