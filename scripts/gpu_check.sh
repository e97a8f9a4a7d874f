#!/usr/bin/env bash
# The GPU check: one command for a one-GPU machine (e.g. H100/H200 with Python 3.12 and a CUDA
# torch installed system-wide). Install first, in the checkout, keeping that torch:
#   bash scripts/setup.sh --system-torch && source .venv/bin/activate   (the machine reaches PyPI)
#   bash scripts/setup.sh --offline .whl && source .venv/bin/activate   (no network; .whl/ made
#       beforehand by `bash scripts/gpu_wheels.sh .whl` and copied along with the checkout)
# (README, "Install on a GPU machine").
#
#   bash scripts/gpu_check.sh [--out DIR] [--work DIR] [--archive FILE] [--steps "STEP ..."|all]
#        [--updates 200] [--prep-dir work/sample_en_de] [--budget SECONDS] [--smoke]
#
# --work: where the training runs (checkpoints, profiler traces) go, default OUT; OUT keeps the
# logs, the json results and summary.md. --archive FILE: OUT packed into one .tgz after every step
# (to copy the results off the machine in one file; a cut-off run keeps the
# finished steps). --budget S: the whole check within S seconds (a lent machine's call limit): each
# step is stopped at what is left of S (FAILED), the steps after it are "skipped (budget)"; 0 (the
# default): only the steps' own limits. --steps: the steps to run, in the order below (default: versions prepare
# attention ranks profile model, about 8 minutes by estimate; "all" = every step).
# Each step is logged to OUT/<step>.log and stopped after its time limit; OUT/summary.md,
# rewritten after every step, says ok/FAILED, seconds and the result.
#   versions      the card, torch, CUDA, fairseq, whether torch has a grouped GEMM
#   prepare       the bundled sample (scripts/prepare_wmt14.sh --sample), unless already prepared
#   attention     the same training (cpu-tiny recipe, N = 4, 60 updates) with --attention-backend auto
#                 and torch, fp16 and bf16: the largest difference of the logged losses and the two
#                 validation losses (they should agree to fp16/bf16 rounding)
#   fp16          switch_transformer_tiny, UPDATES updates through train_wmt14.sh --precision fp16
#   bf16-grouped  the same with --precision bf16 (fairseq's --bf16 on CUDA, not TPU) and
#                 --moe-expert-impl grouped
#   bf16-loop     the same with --moe-expert-impl loop (the two validation losses side by side)
#   generate      fairseq-generate with the fp16 checkpoint and sacreBLEU (evaluate_wmt14.sh)
#   syncs         host syncs of one base-dims micro-step, torch.cuda.set_sync_debug_mode, against
#                 fairseq's dense Transformer, bf16 autocast (target: one per MoE layer + one)
#   syncs-bf16    the same with bf16 weights and the grouped GEMM (target: one, the criterion's)
#   layer-bf16    scripts/benchmark.py layer on cuda, bf16, N = 4 and 16, T = 4096 and 16384,
#                 with the grouped GEMM's relative error against the loop
#   layer-fp16    the same in fp16
#   router        scripts/benchmark.py router: sparsemixer / switch training step (bf16 autocast)
#   ranks         two ranks on the one GPU (torchrun, gloo, pytorch_ddp): the per-layer keys are
#                 those of a 1-process run (enc0 enc2 dec0 dec2)
#   profile       profile_train (train_wmt14.sh --profile) of updates 21-25, paper dims, fp16,
#                 8192 tokens per update: dense and N = 4 (wall ms, GPU-busy share, kernels per update)
#   model         scripts/benchmark.py model --model-recipe paper: fairseq-train words/s of
#                 switch_transformer_wmt_en_de (N = 4, 16) / transformer_wmt_en_de, fp16, 8192
#                 tokens per update, 120 updates, --attention-backend auto and torch (before/after),
#                 the first epoch apart from the later ones
#   model-bf16    the same in bf16, --attention-backend auto
#   layer-compiled  the layer-bf16 table for the designs dense, ours (the loop), grouped, compiled
#                 and grouped-compiled (--moe-compile-router: routers/compiled.py), kernels per step
#   layer-whole   the same for N = 4 with the grouped layer under torch.compile, its grouped
#                 GEMMs left to torch (whole-compiled), or the error inductor gives for it
# --smoke runs the same steps on CPU in a few minutes (tests/test_gpu_check.py), without time
# limits: small dims and --updates N; fp32 instead of fp16 (which needs a GPU) and bf16 on CPU;
# generation of 4 tokens; the two gloo ranks with legacy_ddp and fairseq's own init (torchrun
# and pytorch_ddp fail on CPU inside fairseq); the sync counts by the CPU counter on the tiny
# dims; the benchmarks --quick; the profile of update 2 of the tiny dense model.
# Exit status: 0 when every step passed.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }
OUT="${OUT:-$ROOT/work/gpu_check}" WORK="" UPDATES=200 SMOKE=0 PREP="$ROOT/work/sample_en_de" ARCHIVE="" BUDGET=0
ALL_STEPS="versions prepare attention fp16 bf16-grouped bf16-loop generate syncs syncs-bf16 layer-bf16 layer-fp16 router ranks profile model model-bf16 layer-compiled layer-whole"
STEPS="versions prepare attention ranks profile model"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="${2:?}"; shift 2 ;;
        --work) WORK="${2:?}"; shift 2 ;;
        --updates) UPDATES="${2:?}"; shift 2 ;;
        --prep-dir) PREP="${2:?}"; shift 2 ;;
        --archive) ARCHIVE="${2:?}"; shift 2 ;;
        --budget) BUDGET="${2:?}"; shift 2 ;;
        --steps) STEPS="${2:?}"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ "$UPDATES" =~ ^[1-9][0-9]*$ ]] || die "--updates must be >= 1, got '$UPDATES'"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "--budget must be a whole number of seconds (0: none), got '$BUDGET'"
[[ "$STEPS" == all ]] && STEPS="$ALL_STEPS"
for s in $STEPS; do [[ " $ALL_STEPS " == *" $s "* ]] || die "--steps: unknown step '$s'; valid: $ALL_STEPS (or all)"; done
[[ -z "$ARCHIVE" || "$ARCHIVE" == *.tgz ]] || die "--archive must name a .tgz file, got '$ARCHIVE'"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
WORK="${WORK:-$OUT}"
mkdir -p "$OUT" "$WORK"
BIN="$PREP/bin"
SMALL=(--encoder-embed-dim 64 --decoder-embed-dim 64 --encoder-ffn-embed-dim 128 --decoder-ffn-embed-dim 128
       --encoder-attention-heads 2 --decoder-attention-heads 2 --max-tokens 1024)
if [[ $SMOKE == 1 ]]; then
    # validation on 5 batches (fairseq stops after batch --max-valid-steps): the whole valid set
    # took ~3/4 of each 2-update CPU run
    P16=fp32 P_BF=bf16 DIMS=("${SMALL[@]}" --max-valid-steps 4) GEN=(--beam 1 -- --max-len-a 0 --max-len-b 4) SYNC=(--arch tiny --device cpu)
    LAYER=(--quick --device cpu) WHOLE_N=() ROUTER=(--quick --device cpu) MODEL=(--quick --no-generate)
    AUPD=$UPDATES PROFILE=(--recipe cpu-tiny --profile-warmup 1 --profile-updates 1) PROFDIMS=("${SMALL[@]}") RANKDIMS=("${SMALL[@]}")
else
    P16=fp16 P_BF=bf16 DIMS=() GEN=() SYNC=(--arch base --device cuda)
    LAYER=(--device cuda --experts 4 16 --tokens 4096 16384 --repeats 5 --warmup 2) WHOLE_N=(--experts 4)
    ROUTER=(--device cuda --dtype bfloat16 --repeats 10 --warmup 3)
    MODEL=(--model-recipe paper --no-generate --model-experts 4 16 --updates 120 --model-repeats 1 --log-interval 10)
    AUPD=60
    PROFILE=(--recipe paper --precision fp16) PROFDIMS=(--max-tokens 8192 --update-freq 1) RANKDIMS=(--max-tokens 2048)
fi
echo "| step | status | seconds | result |" > "$OUT/summary.tmp"; echo "|---|---|---|---|" >> "$OUT/summary.tmp"
FAILED=0 LIMIT=0 DEADLINE=0
# step NAME SECONDS RESULT-COMMAND -- COMMAND...: run COMMAND into OUT/NAME.log, stopped (with every
# process it started) after SECONDS (not in --smoke), then RESULT-COMMAND for the summary. A
# shell function as COMMAND stops its runs at the step's deadline itself (see limited).
step() {
    local name="$1" result="$3"; LIMIT=$2; [[ $SMOKE == 1 ]] && LIMIT=0; shift 4
    [[ " $STEPS " == *" $name "* ]] || return 0
    local t0=$SECONDS status=ok
    if (( BUDGET > 0 )); then  # the whole check within --budget: a step gets at most what is left
        local left=$((BUDGET - SECONDS))
        if (( left < 5 )); then
            FAILED=1; echo "gpu_check.sh: $name skipped (--budget $BUDGET s spent)"
            echo "| $name | skipped (budget) | 0 | --budget $BUDGET s spent before this step |" >> "$OUT/summary.tmp"
            publish; return 0
        fi
        (( LIMIT == 0 || LIMIT > left )) && LIMIT=$left
    fi
    DEADLINE=$((SECONDS + LIMIT))
    echo "gpu_check.sh: $name"
    if declare -F "$1" > /dev/null; then "$@"; else limited "$@"; fi > "$OUT/$name.log" 2>&1 || status=FAILED
    local r=""
    if [[ $status == ok ]]; then  # a result that cannot be read fails the step, with its message
        r="$(eval "$result" 2> "$OUT/$name.result.log")" || { status="FAILED (result)"; r="$(tail -n 2 "$OUT/$name.result.log")"; }
        r="$(echo "$r" | tr '\n' ' ' | cut -c1-600)"
    else
        r="$(tail -n 3 "$OUT/$name.log" | tr '\n|' '  ' | cut -c1-300)"
    fi
    [[ $status == ok ]] || FAILED=1
    echo "| $name | $status | $((SECONDS - t0)) | $r |" >> "$OUT/summary.tmp"
    publish
}
publish() {  # the summary so far, readable at once if a later step is cut off, and the archive
    cp "$OUT/summary.tmp" "$OUT/summary.md"; pack
}
pack() {  # OUT as one archive (written outside OUT, since tar fails on a directory that changes
    # while it reads it, then moved into place: never half-written); checkpoints are left out
    # (with WORK = OUT they made it ~100 MB, re-packed after every step)
    [[ -z "$ARCHIVE" ]] && return 0
    local tmp rc=0; tmp="$(mktemp "${TMPDIR:-/tmp}/gpu_check.XXXXXX")" || return 1
    tar czf "$tmp" --exclude "$(basename "$ARCHIVE")*" --exclude "*.pt" -C "$OUT" . && cp --no-preserve=mode "$tmp" "$ARCHIVE.tmp" \
        && mv "$ARCHIVE.tmp" "$ARCHIVE" || { rc=1; echo "gpu_check.sh: warning: could not write $ARCHIVE" >&2; }
    rm -f "$tmp"
    return $rc
}
limited() {  # COMMAND stopped at the step's deadline (LIMIT s after it began; LIMIT 0: none), so
    # that the runs of a step that makes several share its limit
    (( LIMIT == 0 )) && { "$@"; return; }
    local t=$((DEADLINE - SECONDS)); (( t < 1 )) && t=1
    timeout -k 10 "$t" "$@"
}
last_valid() {  # the last validation loss of a train_wmt14.sh save dir
    python - "$1" <<'PY'
import sys
from fairseq_sparsemixer.diagnostics.logs import read_train_log
v = read_train_log(sys.argv[1] + "/train.log").valid
print(f"valid loss {v[-1]['loss']:.3f} at update {int(v[-1]['num_updates'])}" if v else "no validation")
PY
}
train() {  # train PRECISION SAVE [extra fairseq args]
    local extra=("${@:3}") upd="${TRAIN_UPDATES:-$UPDATES}"
    limited bash scripts/train_wmt14.sh --recipe cpu-tiny --data "$BIN" --save-dir "$WORK/$2" --max-update "$upd" \
        --precision "$1" -- --validate-interval-updates "$upd" --no-epoch-checkpoints --log-interval 10 \
        ${DIMS[@]+"${DIMS[@]}"} ${extra[@]+"${extra[@]}"}
}
ranks() {
    local port=$((20000 + RANDOM % 20000)) common=(fairseq-train "$BIN" --user-dir "$ROOT/fairseq_sparsemixer"
        --arch switch_transformer_tiny --moe-experts 4 --share-all-embeddings --criterion moe_label_smoothed_cross_entropy
        --label-smoothing 0.1 --optimizer adam --lr 1e-3 --max-update 6 --log-format json --log-interval 1
        --disable-validation --no-save --log-file "$OUT/ranks.json" --distributed-world-size 2 --distributed-backend gloo "${RANKDIMS[@]}")
    if [[ $SMOKE == 1 ]]; then
        local pids=()
        for r in 0 1; do
            "${common[@]}" --cpu --ddp-backend legacy_ddp --distributed-no-spawn --distributed-rank $r \
                --distributed-init-method "tcp://127.0.0.1:$port" > "$OUT/ranks.$r.log" 2>&1 & pids+=($!)
        done
        wait "${pids[0]}" && wait "${pids[1]}" && cat "$OUT/ranks.0.log"
    else
        limited python -m torch.distributed.run --nproc_per_node 2 --master_port "$port" -m fairseq_cli.train "${common[@]:1}" --fp16 \
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

# the result is the three lines printed below, not the whole log: a first import of a fairseq installed
# with --no-compile (the lent machine's command, docs/benchmarks.md section 4) prints SyntaxWarnings
# on Python 3.12, which filled the summary's cell before the card's name
step versions 60 "grep -E '^(card|torch|grouped GEMM) ' $OUT/versions.log" -- python -c '
import sys, torch, torch.nn.functional as F, fairseq, sacrebleu
if sys.argv[1] == "0" and not torch.cuda.is_available():
    sys.exit("torch " + torch.__version__ + " sees no GPU here (on a CPU machine use --smoke)")
print("card", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)")
print("torch", torch.__version__, "CUDA", torch.version.cuda, "fairseq", fairseq.__version__, "sacrebleu", sacrebleu.__version__)
print("grouped GEMM", "F.grouped_mm" if hasattr(F, "grouped_mm") else "torch._grouped_mm" if hasattr(torch, "_grouped_mm") else "none")' "$SMOKE"
if [[ " $STEPS " == *" versions "* ]] && ! grep -q '^| versions | ok' "$OUT/summary.tmp"; then
    # every later step needs torch, the GPU and fairseq: stop now rather than run each into its limit
    publish; cat "$OUT/summary.md"
    die "the versions step failed, hung or was skipped (torch, the GPU or fairseq is not usable here, or --budget is too small; $OUT/summary.md and versions.log say which): no other step was run"
fi
step prepare 300 "echo $BIN" -- bash scripts/prepare_wmt14.sh --sample --out "$PREP"
attention_runs() {  # the same run with --attention-backend auto and torch, in fp16 and bf16: the four
    # side by side (a correctness check, not a timing), each logged to OUT/attention-<p>-<b>.log;
    # the step's log ends with the failed runs' last lines, each under its name
    local pids=() names=() i rc=0
    for p in "$P16" "$P_BF"; do for b in auto torch; do
        TRAIN_UPDATES=$AUPD train "$p" "attention-$p-$b" --attention-backend "$b" --log-interval 1 \
            > "$OUT/attention-$p-$b.log" 2>&1 & pids+=($!); names+=("attention-$p-$b")
    done; done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" && continue
        rc=1; echo "${names[$i]} FAILED: $(tail -n 2 "$OUT/${names[$i]}.log" | tr '\n|' '  ')"
    done
    return $rc
}
attention_result() {  # per precision: the largest |loss difference| over the updates, valid losses
    python - "$WORK" "$P16" "$P_BF" <<'PY'
import sys
from fairseq_sparsemixer.diagnostics.logs import read_train_log
work, precisions = sys.argv[1], sys.argv[2:]
for p in precisions:
    logs = {b: read_train_log(f"{work}/attention-{p}-{b}/train.log") for b in ("auto", "torch")}
    loss = {b: {r["num_updates"]: float(r["loss"]) for r in log.inner} for b, log in logs.items()}
    common = sorted(set(loss["auto"]) & set(loss["torch"]), key=int)
    if not common:
        sys.exit(f"{p}: no training records in common")
    diff = max(abs(loss["auto"][u] - loss["torch"][u]) for u in common)
    valid = {b: float(log.valid[-1]["loss"]) for b, log in logs.items()}
    print(f"{p}: largest loss difference auto - torch {diff:.4f} over {len(common)} records; valid loss auto "
          f"{valid['auto']:.3f} torch {valid['torch']:.3f};")
PY
}
step attention 100 "attention_result" -- attention_runs
step fp16 150 "last_valid $WORK/fp16" -- train "$P16" fp16
step bf16-grouped 150 "last_valid $WORK/bf16-grouped" -- train "$P_BF" bf16-grouped --moe-expert-impl grouped
step bf16-loop 150 "last_valid $WORK/bf16-loop" -- train "$P_BF" bf16-loop --moe-expert-impl loop
step generate 120 "python -c 'import json; r = json.load(open(\"$WORK/fp16/eval_test.json\")); print(r[\"sacrebleu_text\"])'" -- \
    bash scripts/evaluate_wmt14.sh --save-dir "$WORK/fp16" --prep-dir "$PREP" --checkpoint checkpoint_last.pt ${GEN[@]+"${GEN[@]}"}
syncs() {  # syncs NAME [host_syncs args]: the count, and a failed step unless it meets its target
    local name="$1"; shift
    [[ " $STEPS " == *" $name "* ]] || return 0
    step "$name" 150 "grep '^host syncs' $OUT/$name.log" -- python -m fairseq_sparsemixer.diagnostics.host_syncs --data "$BIN" \
        "${SYNC[@]}" --json "$OUT/$name.json" "$@"
    [[ -f "$OUT/$name.json" ]] && python -c "import json,sys; r=json.load(open('$OUT/$name.json')); sys.exit(r['difference'] != r['target'])" \
        || { FAILED=1; sed -i "s/^| $name | ok |/| $name | FAILED (count) |/" "$OUT/summary.tmp"; }
}
syncs syncs
syncs syncs-bf16 --precision bf16 --expert-impl grouped
layer_result() {  # the layer table's ratios, one line per configuration
    python - "$1" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["layer"]:
    g = f", grouped/dense {r['grouped_over_dense']:.3f} (rel. err {r['grouped_rel_err']:.0e})" if "grouped_over_dense" in r else ""
    extra = ("compiled", "grouped-compiled", "whole-compiled")
    g += "".join(f", {d}/dense {r[d + '_over_dense']:.3f}" for d in extra if d + "_over_dense" in r)
    g += "".join(f", {d} skipped ({why})" for d, why in r.get("skipped", {}).items())
    k = ("; kernels per step " + ", ".join(f"{d} {r[d + '_kernels']:.0f}" for d in ("dense", "ours", "grouped") + extra
                                         if d + "_kernels" in r) if "dense_kernels" in r else "")
    print(f"N={r['experts']} T={r['tokens']}: ours/dense {r['ours_over_dense']:.3f}{g}{k};")
PY
}
step layer-bf16 150 "layer_result $OUT/layer-bf16.json" -- python scripts/benchmark.py layer "${LAYER[@]}" --dtype bfloat16 --json "$OUT/layer-bf16.json"
step layer-fp16 150 "layer_result $OUT/layer-fp16.json" -- python scripts/benchmark.py layer "${LAYER[@]}" --dtype float16 --json "$OUT/layer-fp16.json"
step router 120 "python -c 'import json; [print(r[\"arch\"], \"sparsemixer/switch\", r[\"sparsemixer_over_switch\"], end=\"; \") for r in json.load(open(\"$OUT/router.json\"))[\"router\"]]'" -- \
    python scripts/benchmark.py router "${ROUTER[@]}" --json "$OUT/router.json"
rm -f "$OUT/ranks.json"
step ranks 90 "layer_keys $OUT/ranks.json" -- ranks
[[ $(grep -c '| ranks | ok' "$OUT/summary.tmp") == 1 ]] && { layer_keys "$OUT/ranks.json" > /dev/null || {
    FAILED=1; sed -i 's/^| ranks | ok |/| ranks | FAILED (keys) |/' "$OUT/summary.tmp"; }; }
profile_runs() {  # profile_train of the dense model and of N = 4 (summaries into OUT, traces in WORK)
    for k in dense 4; do
        local kind=(--experts "$k"); [[ $k == dense ]] && kind=(--dense)
        limited bash scripts/train_wmt14.sh "${PROFILE[@]}" "${kind[@]}" --data "$BIN" --save-dir "$WORK/profile-$k" \
            --max-update 1000 --profile "$WORK/profile-$k/prof" -- --disable-validation --no-save --log-interval 5 \
            "${PROFDIMS[@]}" || return 1
        cp "$WORK/profile-$k/prof/summary.md" "$OUT/profile-$k.md"; cp "$WORK/profile-$k/prof/summary.json" "$OUT/profile-$k.json"
    done
}
profile_result() {
    python - "$OUT" <<'PY'
import json, sys
for k in ("dense", "4"):
    r = json.load(open(f"{sys.argv[1]}/profile-{k}.json"))
    gpu = (f", GPU busy {r['gpu_busy_share']:.1%}, {r['kernels_per_update']:.0f} kernels, "
           f"{r['kernel_ms_per_update']:.1f} kernel ms" if "gpu_busy_share" in r else "")
    print(f"{'dense' if k == 'dense' else 'N=' + k}: {r['wall_ms_mean']:.1f} ms/update{gpu};")
PY
}
model_result() {
    python - "$1" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["model"]:
    later = r["train_wps_later_epochs"]
    later = "no later epoch" if later is None else f"later {later:.0f}"
    print(f"{r['model']} {r['precision']} {r['attention']}: {r['train_wps']:.0f} words/s (epoch 1 "
          f"{r['train_wps_first_epoch']:.0f}, {later}), /dense {r['train_over_dense']:.3f};")
PY
}
step profile 120 "profile_result" -- profile_runs
step model 330 "model_result $OUT/model.json" -- \
    python scripts/benchmark.py model "${MODEL[@]}" --model-precision "$P16" --model-attention auto torch --prep-dir "$PREP" --json "$OUT/model.json"
step model-bf16 120 "model_result $OUT/model-bf16.json" -- \
    python scripts/benchmark.py model "${MODEL[@]}" --model-precision "$P_BF" --model-attention auto --prep-dir "$PREP" --json "$OUT/model-bf16.json"
# issue 21's layer table with the compiled router (the first warm-up step of each size compiles)
step layer-compiled 200 "layer_result $OUT/layer-compiled.json" -- python scripts/benchmark.py layer "${LAYER[@]}" \
    --dtype bfloat16 --designs dense ours grouped compiled grouped-compiled --json "$OUT/layer-compiled.json"
# the grouped layer under torch.compile around its grouped GEMMs, N = 4: timed where inductor compiles it, else its error
step layer-whole 200 "layer_result $OUT/layer-whole.json" -- python scripts/benchmark.py layer "${LAYER[@]}" \
    --dtype bfloat16 --designs dense ours grouped whole-compiled "${WHOLE_N[@]}" --json "$OUT/layer-whole.json"
mv "$OUT/summary.tmp" "$OUT/summary.md"
pack
cat "$OUT/summary.md"
exit $FAILED
