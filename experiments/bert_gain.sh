#!/usr/bin/env bash
# Does pretraining help? D2L's BERT (2 blocks, d_model 128, 2 heads, FFN 256; 32 positions, as tinyshakespeare
# lines are short) pretrained on tinyshakespeare (one line a sentence, speeches as paragraphs), then fine-tuned on
# a label-scarce word-order task (lines as written or with their words shuffled) cut from the paragraphs the
# pretraining run held out (never pretrained on), with and without --init-from: same model, flags and steps.
#   bash experiments/bert_gain.sh        # OUT=runs/bert-gain SHAKESPEARE=../shared/data/tinyshakespeare.txt
set -euo pipefail
OUT=${OUT:-runs/bert-gain}
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
PRE_STEPS=${PRE_STEPS:-4000}
PRE_LIMIT=${PRE_LIMIT:-720}
FT_STEPS=${FT_STEPS:-300}
TRAIN=${TRAIN:-300}
SHAPE="--layers 2 --d-model 128 --heads 2 --ffn 256 --seq-len 32"
jaxseq train mlm $SHAPE --data "$SHAKESPEARE" --sentences line --min-freq 3 --batch-size 32 --steps "$PRE_STEPS" \
  --time-limit "$PRE_LIMIT" --eval-every 500 --log-every 100 --no-progress --workdir "$OUT/mlm-shakespeare"
python experiments/word_order_tsv.py "$SHAKESPEARE" "$OUT/word-order-$TRAIN" --train "$TRAIN" --valid 1000
FT="--data $OUT/word-order-$TRAIN/train.tsv --valid $OUT/word-order-$TRAIN/valid.tsv --steps $FT_STEPS \
  --batch-size 32 --eval-every 50 --log-every 50 --no-progress"
jaxseq train classify --init-from "$OUT/mlm-shakespeare" $FT --workdir "$OUT/classify-$TRAIN-pretrained"
jaxseq train classify $SHAPE $FT --workdir "$OUT/classify-$TRAIN-scratch"
