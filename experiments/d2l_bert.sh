#!/usr/bin/env bash
# D2L's BERT (chapter 15.8-15.10): 2 encoder blocks, d_model 128, 2 heads, FFN 256, inputs of 64 positions,
# masked LM (15%: 80/10/10) + next-sentence prediction, word tokens (D2L pretrains on WikiText-2 words;
# here the built-in corpus and tinyshakespeare, which need no download). Then the built-in word-order
# classification task, fine-tuned from the built-in pretraining run and trained from scratch with the same
# model, flags and steps: the difference is what pretraining gives.
# Each pretraining run is capped by --time-limit (CPU); the steps reached are in results.json.
#   bash experiments/d2l_bert.sh            # OUT=runs/bert SHAKESPEARE=../shared/data/tinyshakespeare.txt
set -euo pipefail
OUT=${OUT:-runs/bert}
SHAKESPEARE=${SHAKESPEARE:-../shared/data/tinyshakespeare.txt}
PRE_STEPS=${PRE_STEPS:-1500}
PRE_LIMIT=${PRE_LIMIT:-300}
FT_STEPS=${FT_STEPS:-300}
COMMON="--layers 2 --d-model 128 --heads 2 --ffn 256 --seq-len 64 --batch-size 32 --no-progress"
jaxseq train mlm $COMMON --steps "$PRE_STEPS" --time-limit "$PRE_LIMIT" --eval-every 250 --log-every 50 \
  --workdir "$OUT/mlm-builtin" "$@"
jaxseq train mlm $COMMON --steps "$PRE_STEPS" --time-limit "$PRE_LIMIT" --eval-every 250 --log-every 50 \
  --data "$SHAKESPEARE" --workdir "$OUT/mlm-shakespeare" "$@"
jaxseq fill-mask --workdir "$OUT/mlm-builtin" "the <mask> statement is used to iterate over the elements of a sequence" \
  "an <mask> is raised if the key is not found"
jaxseq train classify $COMMON --init-from "$OUT/mlm-builtin" --steps "$FT_STEPS" --eval-every 100 --log-every 50 \
  --workdir "$OUT/classify-pretrained"
jaxseq train classify $COMMON --steps "$FT_STEPS" --eval-every 100 --log-every 50 --workdir "$OUT/classify-scratch"
