#!/usr/bin/env bash
# Train a Switch-Transformer (or the dense baseline) on prepared WMT'14 En-De data.
#
#   bash scripts/train_wmt14.sh --router sparsemixer --experts 4 [--arch ARCH] [--data DIR]
#        [--save-dir DIR] [--seed S] [--max-update N] [--recipe paper|authors|cpu-tiny] [--dense]
#        [--precision fp16|bf16|fp32] [--profile DIR [--profile-warmup 20] [--profile-updates 5]]
#        [-- extra fairseq-train args]
#
# --experts 0 or --dense trains fairseq's own `transformer` arch of the same dims (with the
# same criterion, which is plain label-smoothed CE for a model without MoE layers).
# Recipes (fairseq flags; extra args after -- override them). All: Adam (0.9, 0.98), no
# clipping, no weight decay, inverse-sqrt, label smoothing 0.1, shared embeddings, dropout 0.1,
# balance weight alpha 0.01, jitter 0.1.
#   paper     the paper's text: lr 7e-4, 8000 warmup from 1e-7, 8192 tokens x 16 per update
#             in total (update-freq ceil(16 / #GPUs), max-tokens 131072 / (#GPUs x update-freq)),
#             arch switch_transformer_wmt_en_de, max update 100k (set --max-update);
#             attention/activation dropout 0, router without bias, balance loss token-mean:
#             effective weight 0.01 on the per-token balance loss.
#   authors   the authors' released run script (microsoft/SparseMixer example/run_moe.sh):
#             as paper, plus --attention-dropout 0.1 --activation-dropout 0.1,
#             --moe-router-bias, --moe-balance-reduction batch-sum (effective weight
#             0.01 x 6 MoE layers / ~8192 tokens per micro-batch, about 7e-6), max update
#             400k, --fp16-init-scale 4 --fp16-scale-window 256, --ddp-backend legacy_ddp
#             (their no_c10d), --skip-invalid-size-inputs-valid-test, --save-interval 10,
#             --log-interval 100, --num-workers 8. Left as ours: pads are not routed (theirs
#             are, and count in their balance loss), the router runs in fp32.
#   cpu-tiny  the quickstart's: switch_transformer_tiny, lr 3e-3, 200 warmup, 2048 tokens
#             per update, measured to learn on 2 CPU cores in minutes (README); balance loss
#             token-mean (effective weight 0.01).
# --precision (default fp16 on GPU, as the authors ran; fp32 on CPU): fp16 = fairseq's
# FP16Optimizer, one flat fp32 copy of the parameters and dynamic loss scaling; bf16 = bf16
# weights with per-parameter fp32 master copies, no loss scaling; fp32 = plain Adam.
# The router always computes in fp32. The start line and command.txt give the tokens per update.
# Multi-GPU on one machine: all visible GPUs, through fairseq's own distributed training
# (CUDA_VISIBLE_DEVICES picks them). Multi-node: see docs/multi_node.md (torchrun).
# --profile DIR: instead of training, profile updates W+1..W+K of this very command in one process
# (python -m fairseq_sparsemixer.diagnostics.profile_train: wall ms per update, GPU-busy share,
# kernels per update, top ops; DIR/summary.md, summary.json, trace.json); it stops after W+K updates.
# Without a GPU it runs on CPU, with a warning. Logs: SAVE_DIR/train.log (json), tensorboard
# in SAVE_DIR/tb, and the exact command in SAVE_DIR/command.txt. Rerunning the same command
# resumes from SAVE_DIR/checkpoint_last.pt.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "train_wmt14.sh: error: $*" >&2; exit 1; }
ROUTER=sparsemixer EXPERTS=4 ARCH="" DATA="$ROOT/work/wmt14_en_de/bin" SAVE="" SEED=1
MAXUPD="" RECIPE=paper PRECISION="" PROFILE="" PWARM=20 PUPD=5 EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --router) ROUTER="${2:?}"; shift 2 ;;
        --experts) EXPERTS="${2:?}"; shift 2 ;;
        --dense) EXPERTS=0; shift ;;
        --arch) ARCH="${2:?}"; shift 2 ;;
        --data) DATA="${2:?}"; shift 2 ;;
        --save-dir) SAVE="${2:?}"; shift 2 ;;
        --seed) SEED="${2:?}"; shift 2 ;;
        --max-update) MAXUPD="${2:?}"; shift 2 ;;
        --recipe) RECIPE="${2:?}"; shift 2 ;;
        --precision) PRECISION="${2:?}"; shift 2 ;;
        --profile) PROFILE="${2:?}"; shift 2 ;;
        --profile-warmup) PWARM="${2:?}"; shift 2 ;;
        --profile-updates) PUPD="${2:?}"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ -z "$PRECISION" || "$PRECISION" =~ ^(fp16|bf16|fp32)$ ]] || die "--precision must be fp16, bf16 or fp32, got '$PRECISION'"
[[ "$PWARM" =~ ^[0-9]+$ && "$PUPD" =~ ^[1-9][0-9]*$ ]] || die "--profile-warmup must be >= 0 and --profile-updates >= 1, got '$PWARM' and '$PUPD'"
[[ "$EXPERTS" =~ ^[0-9]+$ ]] || die "--experts must be a number >= 0, got '$EXPERTS'"
[[ -d "$DATA" ]] || die "--data $DATA does not exist (run scripts/prepare_wmt14.sh first, or point --data at its bin/)"
[[ -f "$DATA/dict.en.txt" && -f "$DATA/dict.de.txt" ]] || die "--data $DATA is not a binarized data dir: no dict.en.txt/dict.de.txt (run scripts/prepare_wmt14.sh first)"
for split in train valid; do
    for l in en de; do
        [[ -f "$DATA/$split.en-de.$l.bin" && -f "$DATA/$split.en-de.$l.idx" ]] \
            || die "--data $DATA has no $split split ($split.en-de.$l.bin/.idx missing); rerun scripts/prepare_wmt14.sh"
    done
done
cmp -s "$DATA/dict.en.txt" "$DATA/dict.de.txt" \
    || die "$DATA/dict.en.txt and dict.de.txt differ, but shared embeddings need one joined dictionary (fairseq-preprocess --joined-dictionary, as prepare_wmt14.sh does)"
command -v fairseq-train >/dev/null || die "fairseq-train not found; run 'bash scripts/setup.sh' and 'source .venv/bin/activate'"

RECIPE_ARGS=() MOE_RECIPE_ARGS=() GPU_RECIPE_ARGS=() LOGINT=50
case "$RECIPE" in
    paper)
        ARCH="${ARCH:-switch_transformer_wmt_en_de}"; MAXUPD="${MAXUPD:-100000}"
        LR=7e-4 WARMUP=8000 TOKENS=8192 TOTAL_BATCH=16 ;;
    authors)
        ARCH="${ARCH:-switch_transformer_wmt_en_de}"; MAXUPD="${MAXUPD:-400000}"
        LR=7e-4 WARMUP=8000 TOKENS=8192 TOTAL_BATCH=16 LOGINT=100
        RECIPE_ARGS=(--attention-dropout 0.1 --activation-dropout 0.1 --ddp-backend legacy_ddp
                     --skip-invalid-size-inputs-valid-test --best-checkpoint-metric loss
                     --save-interval 10 --num-workers 8 --moe-balance-reduction batch-sum)
        MOE_RECIPE_ARGS=(--moe-router-bias)
        GPU_RECIPE_ARGS=(--fp16-init-scale 4 --fp16-scale-window 256) ;;
    cpu-tiny)
        ARCH="${ARCH:-switch_transformer_tiny}"; MAXUPD="${MAXUPD:-100000}"
        LR=3e-3 WARMUP=200 TOKENS=2048 TOTAL_BATCH=1 ;;
    *) die "--recipe must be paper, authors or cpu-tiny, got '$RECIPE'" ;;
esac
if [[ "$EXPERTS" == 0 ]]; then
    MODEL=(--arch "${ARCH/switch_transformer/transformer}")  # fairseq's dense arch, same dims
    [[ "$ARCH" == switch_transformer_tiny ]] && MODEL=(--arch transformer --encoder-embed-dim 128
        --encoder-ffn-embed-dim 512 --encoder-attention-heads 4 --encoder-layers 3 --decoder-embed-dim 128
        --decoder-ffn-embed-dim 512 --decoder-attention-heads 4 --decoder-layers 3
        --encoder-normalize-before --decoder-normalize-before)
    NAME="dense"
else
    MODEL=(--arch "$ARCH" --moe-experts "$EXPERTS" --moe-router "$ROUTER" --moe-jitter-eps 0.1
           ${MOE_RECIPE_ARGS[@]+"${MOE_RECIPE_ARGS[@]}"})
    NAME="$ROUTER-e$EXPERTS"
fi
SAVE="${SAVE:-$ROOT/checkpoints/$NAME-$ARCH-s$SEED}"

# one Python start reads the GPUs, torch's threads and tensorboardX, and splits the batch over the
# workers (each start costs seconds); not `read < <(python ...)`: under set -e that read exits at
# end of input before any message
FACTS="$(python "$ROOT/fairseq_sparsemixer/training/batching.py" --machine "$TOKENS" "$TOTAL_BATCH")" \
    || die "could not compute the batch or read the machine (python fairseq_sparsemixer/training/batching.py --machine, which imports torch and tensorboardX, failed: message above)"
read -r NGPU NTHREADS HAVE_TB MAXTOK UPDATE_FREQ _ <<< "$FACTS"
[[ "${NGPU:-}" =~ ^[0-9]+$ && "${HAVE_TB:-}" =~ ^[01]$ && "${MAXTOK:-}" =~ ^[1-9][0-9]*$ && "${UPDATE_FREQ:-}" =~ ^[1-9][0-9]*$ ]] \
    || die "could not compute the batch or read the machine (python fairseq_sparsemixer/training/batching.py --machine printed '${FACTS//$'\n'/ | }')"
if [[ "$NGPU" -gt 0 ]]; then
    PRECISION="${PRECISION:-fp16}"; DEV=(--distributed-world-size "$NGPU"); WORLD=$NGPU
else
    echo "train_wmt14.sh: warning: no GPU found, training on CPU (fine for the sample, far too slow for WMT'14)" >&2
    PRECISION="${PRECISION:-fp32}"; DEV=(--cpu); WORLD=1
    [[ "$PRECISION" != fp16 ]] || die "--precision fp16 needs a GPU (on CPU use bf16 or fp32)"
fi
case "$PRECISION" in
    fp16) DEV+=(--fp16 ${GPU_RECIPE_ARGS[@]+"${GPU_RECIPE_ARGS[@]}"}) ;;
    bf16) DEV+=(--bf16) ;;  # the plugin keeps fairseq from reading it as TPU (training/precision.py)
esac
BATCH_NOTE="$((MAXTOK * UPDATE_FREQ * WORLD)) tokens per update at most (max-tokens $MAXTOK x update-freq $UPDATE_FREQ x $WORLD worker(s)), $PRECISION"
TB=()
[[ "$HAVE_TB" == 1 ]] && TB=(--tensorboard-logdir "$SAVE/tb")

CMD=(fairseq-train "$DATA" --user-dir "$ROOT/fairseq_sparsemixer" "${MODEL[@]}"
     --task translation --source-lang en --target-lang de --share-all-embeddings
     --optimizer adam --adam-betas '(0.9, 0.98)' --clip-norm 0.0
     --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
     --dropout 0.1 --weight-decay 0.0 --criterion moe_label_smoothed_cross_entropy
     --label-smoothing 0.1 --moe-balance-weight 0.01
     --max-tokens "$MAXTOK" --update-freq "$UPDATE_FREQ" --max-update "$MAXUPD" --seed "$SEED"
     --save-dir "$SAVE" --log-format json --log-interval "$LOGINT" --log-file "$SAVE/train.log"
     ${RECIPE_ARGS[@]+"${RECIPE_ARGS[@]}"} "${DEV[@]}" ${TB[@]+"${TB[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})
# parse the flags as fairseq-train will (arch defaults and --moe-* checks included) before
# anything is written to SAVE_DIR: a bad value stops here with one line
python -c 'import sys; from fairseq import options; options.parse_args_and_arch(options.get_training_parser(), sys.argv[1:])' \
    "${CMD[@]:1}" || die "fairseq-train rejected the arguments (message above)"
mkdir -p "$SAVE"
THREADS_NOTE="torch threads $NTHREADS (OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset})"
{ printf '%q ' "${CMD[@]}"; echo; echo "# $BATCH_NOTE"; echo "# $THREADS_NOTE"; } > "$SAVE/command.txt"
echo "train_wmt14.sh: $NAME $ARCH on $DATA -> $SAVE ($NGPU GPU(s); $BATCH_NOTE)"
if [[ -n "$PROFILE" ]]; then
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    exec python -m fairseq_sparsemixer.diagnostics.profile_train --warmup "$PWARM" --updates "$PUPD" \
        --out "$PROFILE" -- "${CMD[@]:1}"
fi
exec "${CMD[@]}"
