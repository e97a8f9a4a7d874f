#!/usr/bin/env bash
# Does SparseMixer beat Switch? Train dense / switch / sparsemixer (or any routers) with
# identical settings and several seeds, translate the test set with each final model, and
# summarize: validation loss vs updates (PNG, mean and spread over seeds), the updates
# SparseMixer needs to reach Switch's best validation loss (the paper's speed-up metric),
# final BLEU, expert-load heatmaps and collapse warnings (OUT/summary.md, OUT/summary.json).
#
#   bash scripts/compare_routers.sh [--prep-dir DIR | --data BIN] [--out DIR]
#        [--routers "dense switch sparsemixer"] [--seeds "1 2 3"] [--experts 4]
#        [--max-update 1200] [--validate-interval 50] [--recipe cpu-tiny] [--threads 1] [--no-bleu]
#        [-- extra fairseq-train args, the same for every run]
#   bash scripts/compare_routers.sh --from-logs DIR [--out DIR]     summarize existing runs only
#
# --prep-dir: an output of prepare_wmt14.sh (bin/ + raw/ references); default the bundled
#   sample, prepared on first use (work/sample_en_de). --data BIN: any binarized fairseq
#   data dir with a joined dictionary (BLEU is skipped: there are no raw references).
# Runs go to OUT/runs/<router>-s<seed>/ (default OUT: work/compare-e<experts>), each through
# scripts/train_wmt14.sh; "dense" is fairseq's transformer of the same dims. Rerunning the
# same command skips finished runs and evaluations and resumes an interrupted one.
# --threads N: CPU threads per run (OMP_NUM_THREADS and MKL_NUM_THREADS, default 1). CPU
#   training is bit-reproducible only at a fixed thread count, so every run that is compared
#   uses the same one; it is recorded in each run's command.txt and in the summary. Two
#   comparisons side by side at one thread each run about as fast as one alone on 2 cores.
# --from-logs DIR summarizes DIR/runs/*/ (or DIR/*/) whose names are <label>-s<seed> and
# which hold a fairseq json log train.log; for logs laid out otherwise call
#   python -m fairseq_sparsemixer.diagnostics.compare LABEL=PATH ... --out DIR
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "compare_routers.sh: error: $*" >&2; exit 1; }
log() { echo "compare_routers.sh: $*"; }
PREP="" DATA="" OUT="" ROUTERS="dense switch sparsemixer" SEEDS="1 2 3" EXPERTS=4 MAXUPD=1200
VALINT=50 RECIPE=cpu-tiny BLEU=1 FROM="" THREADS=1 EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prep-dir) PREP="${2:?}"; shift 2 ;;
        --data) DATA="${2:?}"; shift 2 ;;
        --out) OUT="${2:?}"; shift 2 ;;
        --routers) ROUTERS="${2:?}"; shift 2 ;;
        --seeds) SEEDS="${2:?}"; shift 2 ;;
        --experts) EXPERTS="${2:?}"; shift 2 ;;
        --max-update) MAXUPD="${2:?}"; shift 2 ;;
        --validate-interval) VALINT="${2:?}"; shift 2 ;;
        --recipe) RECIPE="${2:?}"; shift 2 ;;
        --threads) THREADS="${2:?}"; shift 2 ;;
        --no-bleu) BLEU=0; shift ;;
        --from-logs) FROM="${2:?}"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
command -v fairseq-train >/dev/null || die "fairseq-train not found; run 'bash scripts/setup.sh' and 'source .venv/bin/activate'"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
summarize() {  # $1: OUT, then the run directories
    local out="$1"; shift
    python -m fairseq_sparsemixer.diagnostics.compare "$@" --out "$out"
}

if [[ -n "$FROM" ]]; then
    [[ -d "$FROM" ]] || die "--from-logs $FROM does not exist"
    parent="$FROM"; [[ -d "$FROM/runs" ]] && parent="$FROM/runs"
    runs=()
    for d in "$parent"/*/; do [[ -f "$d/train.log" ]] && runs+=("${d%/}"); done
    [[ ${#runs[@]} -gt 0 ]] || die "no run directories with a train.log under $parent"
    summarize "${OUT:-$FROM}" "${runs[@]}"
    exit 0
fi

# check every value before anything is written
[[ -z "$PREP" || -z "$DATA" ]] || die "--prep-dir and --data exclude each other"
[[ "$EXPERTS" =~ ^[1-9][0-9]*$ ]] || die "--experts must be >= 1, got '$EXPERTS'"
[[ "$MAXUPD" =~ ^[1-9][0-9]*$ ]] || die "--max-update must be >= 1, got '$MAXUPD'"
[[ "$VALINT" =~ ^[1-9][0-9]*$ ]] || die "--validate-interval must be >= 1, got '$VALINT'"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be >= 1, got '$THREADS'"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
read -r -a SEED_LIST <<< "$SEEDS"
read -r -a ROUTER_LIST <<< "$ROUTERS"
[[ ${#SEED_LIST[@]} -ge 1 && ${#ROUTER_LIST[@]} -ge 1 ]] || die "--routers and --seeds must not be empty"
for s in "${SEED_LIST[@]}"; do [[ "$s" =~ ^[0-9]+$ ]] || die "--seeds: '$s' is not a number"; done
valid="$(python -c 'from fairseq_sparsemixer.routers import ROUTERS; print(" ".join(ROUTERS))')"
for r in "${ROUTER_LIST[@]}"; do
    [[ "$r" == dense || " $valid " == *" $r "* ]] || die "--routers: unknown router '$r'; valid: dense $valid"
done
if [[ -n "$DATA" ]]; then
    BIN="$DATA"; BLEU=0
    [[ -f "$BIN/dict.en.txt" ]] || die "--data $BIN is not a binarized data dir (no dict.en.txt)"
else
    if [[ -z "$PREP" ]]; then
        PREP="$ROOT/work/sample_en_de"
        bash "$ROOT/scripts/prepare_wmt14.sh" --sample --out "$PREP"
    fi
    BIN="$PREP/bin"
    [[ -f "$BIN/dict.en.txt" ]] || die "--prep-dir $PREP has no bin/ (run scripts/prepare_wmt14.sh --out $PREP)"
fi
OUT="${OUT:-$ROOT/work/compare-e$EXPERTS}"
mkdir -p "$OUT/runs"

RUNS=()
for seed in "${SEED_LIST[@]}"; do  # seed-major: a partial comparison already has every router
    for r in "${ROUTER_LIST[@]}"; do
        name="$r-s$seed" save="$OUT/runs/$r-s$seed"
        RUNS+=("$save")
        want="updates=$MAXUPD experts=$EXPERTS recipe=$RECIPE valint=$VALINT threads=$THREADS extra=${EXTRA[*]:-}"
        if [[ "$(cat "$save/.trained" 2>/dev/null)" != "$want" ]]; then
            if [[ -f "$save/checkpoint_last.pt" ]]; then  # resuming: only at the thread count it began with
                had="$(sed -n 's/^# torch threads \([0-9][0-9]*\) .*/\1/p' "$save/command.txt" 2>/dev/null | tail -n 1)"
                [[ "$had" == "$THREADS" ]] || die "$save has a checkpoint trained at ${had:-an unknown number of} thread(s), not --threads $THREADS: resume it with --threads ${had:-K}, or remove $save to train it anew (CPU results depend on the thread count)"
            fi
            rm -f "$save/.trained" "$save/eval_test.json"
            log "training $name ($want)"
            kind=(--router "$r" --experts "$EXPERTS"); [[ "$r" == dense ]] && kind=(--dense)
            bash "$ROOT/scripts/train_wmt14.sh" --recipe "$RECIPE" "${kind[@]}" --data "$BIN" \
                --save-dir "$save" --seed "$seed" --max-update "$MAXUPD" -- \
                --validate-interval-updates "$VALINT" --no-epoch-checkpoints --no-progress-bar \
                ${EXTRA[@]+"${EXTRA[@]}"} > "$save.stdout" 2>&1 \
                || { tail -n 5 "$save.stdout" >&2; die "training $name failed (log: $save.stdout)"; }
            mv "$save.stdout" "$save/stdout.log"
            echo "$want" > "$save/.trained"
        fi
        if [[ $BLEU == 1 && ! -f "$save/eval_test.json" ]]; then
            log "translating the test set with $name"
            bash "$ROOT/scripts/evaluate_wmt14.sh" --save-dir "$save" --prep-dir "$PREP" \
                --checkpoint checkpoint_last.pt > /dev/null
        fi
    done
done
summarize "$OUT" "${RUNS[@]}"  # the runs of this command (others under OUT/runs: --from-logs OUT)
