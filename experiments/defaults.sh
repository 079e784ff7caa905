#!/usr/bin/env bash
# Every model's no-flag run (the registry's defaults) on the built-in data, and the translation Transformer
# with no other flag on held-out English-French pairs. Results: experiments/README.md, "Each model's defaults".
#   bash experiments/defaults.sh [OUT=runs/defaults] [PAIRS=../shared/data/fra-eng-train.tsv]
set -euo pipefail
OUT=${OUT:-runs/defaults}
PAIRS=${PAIRS:-../shared/data/fra-eng-train.tsv}
for model in ngram rnn gru lstm mingru minlstm transformer; do
  jaxseq train lm --model "$model" --no-progress --workdir "$OUT/lm-$model"
done
for model in seq2seq bahdanau transformer; do
  jaxseq train translate --model "$model" --no-progress --workdir "$OUT/dates-$model"
done
# the command: no flag but the data and the length (a held-out 10% test split is scored at the end)
jaxseq train translate --model transformer --data "$PAIRS" --max-pairs 10000 --epochs 10 --no-progress \
  --workdir "$OUT/fra-eng-transformer"
