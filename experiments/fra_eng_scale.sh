#!/usr/bin/env bash
# Issue 16's features on all 162,130 fra-eng pairs: a seeded random split holds out 5,000 test pairs and 1,000
# validation pairs (--seed 0; the fractions give exactly those counts), the Transformer trains on the rest with
# token-budget batches (--batch-tokens, --buckets step4: 80% of the batch tokens are real), the output
# projection tied to the target embedding, label smoothing 0.1, Adam 1e-3 with 500 warmup steps, validation
# BLEU every 500 steps (checkpoints/best, --patience), then the last 5 checkpoints are averaged and the test
# pairs scored (BLEU and chrF, greedy and beam 4) with the latest, averaged and best checkpoints.
# Extra arguments go to `jaxseq train` (e.g. --time-limit 2700 --epochs 10, or --model bahdanau
# --tie-embeddings none for the comparison).
set -euo pipefail
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
W=${WORKDIR:-runs/fra-eng-scale}
jaxseq train translate --model transformer --data "$DATA" --preprocess d2l --split random --seed 0 \
  --valid-fraction 0.006168 --test-fraction 0.0308395 --max-len 24 --buckets step4 --batch-tokens 4096 \
  --tie-embeddings output --label-smoothing 0.1 --optimizer adam --lr 0.001 --warmup 500 --clip 1 \
  --epochs 10 --time-limit 2700 --eval-every 500 --checkpoint-every 500 --keep 10 --keep-best \
  --best-metric bleu --patience 8 --beam 4 --length-penalty 0.6 --examples 8 --workdir "$W" "$@"
jaxseq average --workdir "$W" --last "${AVERAGE:-5}"
for checkpoint in latest averaged best; do
  for beam in 1 4; do
    echo "$checkpoint, beam $beam: $(jaxseq evaluate --workdir "$W" --split test --checkpoint $checkpoint \
      --beam $beam | tail -1)"
  done
done
