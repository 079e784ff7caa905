#!/usr/bin/env bash
# Held-out perplexity of minGRU / minLSTM / GRU / LSTM character models at an equal
# wall-clock budget (about 110 s of training each, compile included, on the project's
# 2-core CPU). Step counts were set from each model's measured time per step of
# 32 x 128 tokens so that the runs take about the same time; the machine was shared,
# so the achieved times differ by up to ~20% (see experiments/README.md).
#
#   bash experiments/minrnn_equal_time.sh [DATA] [OUT] [EXTRA FLAGS...]
#   DATA: builtin (default) or a text file, e.g. ../shared/data/tinyshakespeare.txt
#   OUT:  where the work directories go (default runs/minrnn)
#   EXTRA FLAGS: passed to every run (e.g. --eval-context window, the protocol of the recorded table)
set -euo pipefail
DATA=${1:-builtin}
OUT=${2:-runs/minrnn}
EXTRA=("${@:3}")
NAME=$(basename "$DATA" .txt)
COMMON=(--data "$DATA" --seq-len 128 --batch-size 32 --eval-every 0 --checkpoint-every 0
        --log-every 25 --no-progress --no-baseline)
MIN=(--hidden 192 --layers 2 --mlp-ratio 1)
if [ "$NAME" = builtin ]; then
  STEPS=(gru 500 lstm 400 mingru 300 minlstm 290)
else
  STEPS=(gru 600 lstm 400 mingru 220 minlstm 210)
fi
for ((i = 0; i < ${#STEPS[@]}; i += 2)); do
  model=${STEPS[i]} steps=${STEPS[i+1]}
  case $model in
    gru|lstm) flags=(--hidden 256) ;;
    *) flags=("${MIN[@]}") ;;
  esac
  jaxseq train lm --model "$model" --steps "$steps" "${flags[@]}" "${COMMON[@]}" "${EXTRA[@]}" --workdir "$OUT/$NAME-$model"
done
