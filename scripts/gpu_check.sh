#!/usr/bin/env bash
# The GPU check: one command for a one-GPU machine (H100/H200; no network; Python 3.12 and a CUDA
# torch preinstalled, fairseq carried as wheels: ../shared/device/README.md), about 8 minutes.
#
#   bash scripts/gpu_check.sh [--out DIR] [--updates 200] [--prep-dir work/sample_en_de] [--smoke]
#
# Steps (each logged to OUT/<step>.log; OUT/summary.md says ok/FAILED, seconds and the result):
#   versions  the card, torch, CUDA, fairseq
#   prepare   the bundled sample (scripts/prepare_wmt14.sh --sample), unless already prepared
#   fp16      switch_transformer_tiny, UPDATES updates through train_wmt14.sh --precision fp16
#   bf16      the same with --precision bf16 (fairseq's --bf16 on CUDA, not TPU)
#   generate  fairseq-generate with the fp16 checkpoint and sacreBLEU (evaluate_wmt14.sh)
#   ranks     two ranks on the one GPU (torchrun, gloo, pytorch_ddp): the per-layer keys are
#             those of a 1-process run (enc0 enc2 dec0 dec2)
#   syncs     host syncs of one base-dims micro-step, torch.cuda.set_sync_debug_mode, against
#             fairseq's dense Transformer (target: one per MoE layer + one)
#   layer     scripts/benchmark.py layer on cuda, bf16, N = 4 and 16, T = 4096 and 16384
# --smoke runs the same steps on CPU in a few minutes (tests/test_gpu_check.py): small dims and
# --updates N; fp32 instead of fp16 (which needs a GPU) and bf16 on CPU; generation of 4
# tokens; the two gloo ranks with legacy_ddp and fairseq's own init (torchrun and pytorch_ddp
# fail on CPU inside fairseq); the sync count by the CPU counter on the tiny dims; the layer
# benchmark --quick.
# Exit status: 0 when every step passed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
OUT="${OUT:-$ROOT/work/gpu_check}" UPDATES=200 SMOKE=0 PREP="$ROOT/work/sample_en_de"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?}"; shift 2 ;;
        --updates) UPDATES="${2:?}"; shift 2 ;;
        --prep-dir) PREP="${2:?}"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$UPDATES" =~ ^[1-9][0-9]*$ ]] || die "--updates must be >= 1, got '$UPDATES'"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
BIN="$PREP/bin"
SMALL=(--encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
       --encoder-attention-heads 2 --decoder-attention-heads 2 --max-tokens 1024)
if [[ $SMOKE == 1 ]]; then
    P16=fp32 P_BF=bf16 DIMS=("${SMALL[@]}") GEN=(--beam 1 -- --max-len-a 0 --max-len-b 4) SYNC_ARCH=tiny
    LAYER=(--quick --device cpu)
else
    P16=fp16 P_BF=bf16 DIMS=() GEN=() SYNC_ARCH=base
    LAYER=(--device cuda --dtype bfloat16 --experts 4 16 --tokens 4096 16384 --repeats 5 --warmup 2)
fi
echo "| step | status | seconds | result |" > "$OUT/summary.tmp"; echo "|---|---|---|---|" >> "$OUT/summary.tmp"
FAILED=0
step() {  # step NAME RESULT-COMMAND -- COMMAND...: run COMMAND into OUT/NAME.log, then RESULT-COMMAND for the summary
    local name="$1" result="$2"; shift 3
    local t0=$SECONDS status=ok
    echo "gpu_check.sh: $name"
    "$@" > "$OUT/$name.log" 2>&1 || status=FAILED
    local r=""; [[ $status == ok ]] && r="$(eval "$result" 2>/dev/null | tr '\n' ' ')"
    [[ $status == ok ]] || { FAILED=1; r="$(tail -n 3 "$OUT/$name.log" | tr '\n|' '  ' | cut -c1-300)"; }
    echo "| $name | $status | $((SECONDS - t0)) | $r |" >> "$OUT/summary.tmp"
}
last_valid() {  # the last validation loss of a train_wmt14.sh save dir
    python - "$1" <<'PY'
import sys
from fairseq_sparsemixer.diagnostics.logs import read_train_log
v = read_train_log(sys.argv[1] + "/train.log").valid
print(f"valid loss {v[-1]['loss']:.3f} at update {int(v[-1]['num_updates'])}" if v else "no validation")
PY
}
train() {  # train PRECISION SAVE
    bash scripts/train_wmt14.sh --recipe cpu-tiny --data "$BIN" --save-dir "$OUT/$2" --max-update "$UPDATES" \
        --precision "$1" -- --validate-interval-updates "$UPDATES" --no-epoch-checkpoints --log-interval 10 \
        ${DIMS[@]+"${DIMS[@]}"}
}
ranks() {
    local port=$((20000 + RANDOM % 20000)) common=(fairseq-train "$BIN" --user-dir "$ROOT/fairseq_sparsemixer"
        --arch switch_transformer_tiny --moe-experts 4 --share-all-embeddings --criterion moe_label_smoothed_cross_entropy
        --label-smoothing 0.1 --optimizer adam --lr 1e-3 --max-update 6 --log-format json --log-interval 1
        --disable-validation --no-save --log-file "$OUT/ranks.json" --distributed-world-size 2 --distributed-backend gloo ${DIMS[@]+"${DIMS[@]}"})
    if [[ $SMOKE == 1 ]]; then
        local pids=()
        for r in 0 1; do
            "${common[@]}" --cpu --ddp-backend legacy_ddp --distributed-no-spawn --distributed-rank $r \
                --distributed-init-method "tcp://127.0.0.1:$port" > "$OUT/ranks.$r.log" 2>&1 & pids+=($!)
        done
        wait "${pids[0]}" && wait "${pids[1]}" && cat "$OUT/ranks.0.log"
    else
        python -m torch.distributed.run --nproc_per_node 2 --master_port "$port" -m fairseq_cli.train "${common[@]:1}" --fp16 \
            --ddp-backend pytorch_ddp
    fi
}
layer_keys() {  # the per-layer load keys of a --log-file (json)
    python - "$1" <<'PY'
import sys
from fairseq_sparsemixer.diagnostics.logs import json_records
keys = sorted({k.rsplit("_e", 1)[0] for r in json_records(sys.argv[1]) for k in r if k.startswith("load_")})
want = ["load_dec0", "load_dec2", "load_enc0", "load_enc2"]
print("per-layer keys " + " ".join(keys) + (" (= 1 process)" if keys == want else " (WRONG)"))
sys.exit(0 if keys == want else 1)
PY
}

step versions "cat $OUT/versions.log" -- python -c '
import torch, fairseq, sacrebleu
print("card", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)")
print("torch", torch.__version__, "CUDA", torch.version.cuda, "fairseq", fairseq.__version__, "sacrebleu", sacrebleu.__version__)'
step prepare "echo $BIN" -- bash scripts/prepare_wmt14.sh --sample --out "$PREP"
step fp16 "last_valid $OUT/fp16" -- train "$P16" fp16
step bf16 "last_valid $OUT/bf16" -- train "$P_BF" bf16
step generate "python -c 'import json; r = json.load(open(\"$OUT/fp16/eval_test.json\")); print(r[\"sacrebleu_text\"])'" -- \
    bash scripts/evaluate_wmt14.sh --save-dir "$OUT/fp16" --prep-dir "$PREP" --checkpoint checkpoint_last.pt ${GEN[@]+"${GEN[@]}"}
rm -f "$OUT/ranks.json"
step ranks "layer_keys $OUT/ranks.json" -- ranks
[[ $(grep -c '| ranks | ok' "$OUT/summary.tmp") == 1 ]] && { layer_keys "$OUT/ranks.json" > /dev/null || {
    FAILED=1; sed -i 's/^| ranks | ok |/| ranks | FAILED (keys) |/' "$OUT/summary.tmp"; }; }
step syncs "tail -n 1 $OUT/syncs.log" -- python -m fairseq_sparsemixer.diagnostics.host_syncs --data "$BIN" \
    --arch "$SYNC_ARCH" --json "$OUT/syncs.json" $([[ $SMOKE == 1 ]] && echo --device cpu)
[[ -f "$OUT/syncs.json" ]] && python -c "import json,sys; r=json.load(open('$OUT/syncs.json')); sys.exit(r['difference'] != r['target'])" \
    || { FAILED=1; sed -i 's/^| syncs | ok |/| syncs | FAILED (count) |/' "$OUT/summary.tmp"; }
step layer "grep -E '^ *(4|16) ' $OUT/layer.log | awk '{print \"N=\" \$1 \" T=\" \$2 \" ours/dense \" \$7 \";\"}'" -- \
    python scripts/benchmark.py layer "${LAYER[@]}" --json "$OUT/layer.json"
mv "$OUT/summary.tmp" "$OUT/summary.md"
cat "$OUT/summary.md"
exit $FAILED
