#!/usr/bin/env bash
# Issue 16's settings sweep on one GPU, step-matched to 45 minutes of the project's 2-core CPU.
#
# Every run below trains for the number of steps the CPU completes in about 45 minutes with that setting
# (measured there: ~0.85 s a step for the Transformer at 128 pairs / 4,096 tokens, ~1.3 s for Bahdanau), so
# the GPU gives in minutes what the CPU gives in hours: which settings win at the CPU's budget. The runs go
# side by side on the one card (each is far too small to fill it). Same split as experiments/fra_eng_scale.sh
# (seed 0: 5,000 test and 1,000 validation pairs held out). After training the last 4 checkpoints (every 250
# steps) are averaged and the test pairs scored again. Float32 matmuls at full precision (no TF32), as on
# the CPU.
#
#   DATA=path/to/fra-eng-train.tsv OUT=out bash experiments/fra_eng_device_sweep.sh [NAME ...]
#
# EXTRA='--steps 20 ...' is appended to every run's flags (a smoke test: later flags win).
# Results: one JSON line per finished evaluation in $OUT/sweep.jsonl, log tails in $OUT/sweep_logs.txt.
# No network: missing wheels are installed from .whl/ as in benchmarks/device_check.sh.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
DATA=${DATA:-../shared/data/fra-eng-train.tsv}
OUT=${OUT:-runs/sweep}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install --quiet --no-index --no-deps --target .whl/site .whl/*.whl || echo "wheel install failed"
fi
[ -d .whl/site ] && export PYTHONPATH="$ROOT/.whl/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=3 JAX_DEFAULT_MATMUL_PRECISION=highest
jx() { "$PY" -c 'import sys; from jaxseq.cli import entry; sys.argv[0] = "jaxseq"; entry()' "$@"; }

COMMON=(--data "$DATA" --preprocess d2l --split random --seed 0 --valid-fraction 0.006168
        --test-fraction 0.0308395 --eval-every 500 --checkpoint-every 250 --keep 12 --beam 4 --examples 0
        --log-every 100 --no-progress)
BPE=(--tokens bpe --joint-vocab --tie-embeddings all --max-len 32 --batch-tokens 4096 --buckets step4)
WORD=(--max-len 24 --batch-size 128)
declare -A RUNS=(
  [word-const1e3]="--model transformer ${WORD[*]} --lr 1e-3 --warmup 500 --steps 3000"
  [bpe-const1e3]="--model transformer ${BPE[*]} --lr 1e-3 --warmup 500 --steps 3000"
  [bpe-const2e3]="--model transformer ${BPE[*]} --lr 2e-3 --warmup 500 --steps 3000"
  [bpe-rsqrt2e3]="--model transformer ${BPE[*]} --schedule rsqrt --lr 2e-3 --warmup 500 --steps 3000"
  [bpe-cosine2e3]="--model transformer ${BPE[*]} --schedule cosine --lr 2e-3 --warmup 300 --steps 3000"
  [bpe-rsqrt2e3-drop01]="--model transformer ${BPE[*]} --schedule rsqrt --lr 2e-3 --warmup 500 --dropout 0.1 --steps 3000"
  [bpe-cosine2e3-drop01]="--model transformer ${BPE[*]} --schedule cosine --lr 2e-3 --warmup 300 --dropout 0.1 --steps 3000"
  [word-bahdanau]="--model bahdanau ${WORD[*]} --steps 2000"
)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=("${!RUNS[@]}")

one() {   # NAME: train, average the last 4 checkpoints, score the test pairs again
    local name=$1 w=$WORK/$1 t0=$SECONDS
    # shellcheck disable=SC2086
    jx train translate ${RUNS[$name]} "${COMMON[@]}" ${EXTRA:-} --workdir "$w" > "$WORK/$name.log" 2>&1
    "$PY" - "$name" "$w" "$((SECONDS - t0))" >> "$OUT/sweep.jsonl" <<'PYEOF'
import json, sys
name, w, secs = sys.argv[1:]
try:
    r = json.load(open(f"{w}/results.json"))
    print(json.dumps({"run": name, "checkpoint": "latest", "seconds": int(secs), "steps": r.get("step"),
                      "valid": r.get("valid"), "test": r.get("test")}))
except Exception as exc:
    print(json.dumps({"run": name, "error": repr(exc)}))
PYEOF
    jx average --workdir "$w" --last 4 >> "$WORK/$name.log" 2>&1
    local line
    line=$(jx evaluate --workdir "$w" --split test --checkpoint averaged --beam 4 2>>"$WORK/$name.log" | tail -1)
    echo "{\"run\": \"$name\", \"checkpoint\": \"averaged-4\", \"result\": ${line:-null}}" >> "$OUT/sweep.jsonl"
    line=$(jx evaluate --workdir "$w" --split test --checkpoint averaged --beam 1 2>>"$WORK/$name.log" | tail -1)
    echo "{\"run\": \"$name\", \"checkpoint\": \"averaged-4\", \"result\": ${line:-null}}" >> "$OUT/sweep.jsonl"
}

progress() {   # every 20 s: each run's validation records so far (survives a timeout)
    while sleep 20; do
        for name in "${NAMES[@]}"; do
            echo "== $name"; grep -h '"valid"' "$WORK/$name/metrics.jsonl" 2>/dev/null | cut -c1-200
        done > "$OUT/progress.txt.new" && mv "$OUT/progress.txt.new" "$OUT/progress.txt"
    done
}

progress &
reporter=$!
pids=()
for name in "${NAMES[@]}"; do one "$name" & pids+=($!); done
wait "${pids[@]}"
kill "$reporter"
for name in "${NAMES[@]}"; do echo "== $name"; tail -n 25 "$WORK/$name.log"; done > "$OUT/sweep_logs.txt"
cat "$OUT/sweep.jsonl"
