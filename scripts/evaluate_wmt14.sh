#!/usr/bin/env bash
# Translate a test set with a trained model and report BLEU.
#
#   bash scripts/evaluate_wmt14.sh --save-dir DIR [--prep-dir DIR] [--average K | --checkpoint NAME]
#        [--subset test] [--beam 4] [--lenpen 0.6] [--max-tokens 8000] [-- extra fairseq-generate args]
#
# --prep-dir is the output of prepare_wmt14.sh (default work/wmt14_en_de): its bin/ is the
# data, raw/<subset>.de the references. With --average K > 1 the last K checkpoints are
# averaged into SAVE_DIR/averaged_last<K>.pt; with --checkpoint NAME, SAVE_DIR/NAME is used
# (e.g. checkpoint_last.pt); else checkpoint_best.pt (checkpoint_last.pt if there is no best).
# Reports (a) detokenized sacreBLEU with its signature and (b) tokenized BLEU with compound
# splitting (the paper's number), and writes SAVE_DIR/eval_<subset>.json with the checkpoint's
# update (num_updates) and its files relative to SAVE_DIR: the translations hyp_<subset>.de and
# a copy of the references ref_<subset>.de, so that a moved or linked SAVE_DIR still compares.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "evaluate_wmt14.sh: error: $*" >&2; exit 1; }
SAVE="" PREP="$ROOT/work/wmt14_en_de" AVG=1 CKNAME="" SUBSET=test BEAM=4 LENPEN=0.6 MAXTOK=8000 EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --save-dir) SAVE="${2:?}"; shift 2 ;;
        --prep-dir) PREP="${2:?}"; shift 2 ;;
        --average) AVG="${2:?}"; shift 2 ;;
        --checkpoint) CKNAME="${2:?}"; shift 2 ;;
        --subset) SUBSET="${2:?}"; shift 2 ;;
        --beam) BEAM="${2:?}"; shift 2 ;;
        --lenpen) LENPEN="${2:?}"; shift 2 ;;
        --max-tokens) MAXTOK="${2:?}"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ -n "$SAVE" ]] || die "--save-dir is required"
[[ -d "$SAVE" ]] || die "--save-dir $SAVE does not exist"
[[ -f "$PREP/bin/dict.en.txt" ]] || die "$PREP/bin is not a prepared data dir (run scripts/prepare_wmt14.sh)"
REF="$PREP/raw/$SUBSET.de"
[[ -f "$REF" ]] || die "reference $REF not found"
command -v fairseq-generate >/dev/null || die "fairseq-generate not found; run 'bash scripts/setup.sh' and 'source .venv/bin/activate'"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$AVG" -gt 1 ]]; then
    CKPT="$SAVE/averaged_last$AVG.pt"
    python "$ROOT/fairseq_sparsemixer/pipeline/average_checkpoints.py" --save-dir "$SAVE" --last "$AVG" --out "$CKPT"
elif [[ -n "$CKNAME" ]]; then CKPT="$SAVE/$CKNAME"; [[ -f "$CKPT" ]] || die "--checkpoint: $CKPT not found"
elif [[ -f "$SAVE/checkpoint_best.pt" ]]; then CKPT="$SAVE/checkpoint_best.pt"
elif [[ -f "$SAVE/checkpoint_last.pt" ]]; then CKPT="$SAVE/checkpoint_last.pt"
else die "no checkpoint_best.pt or checkpoint_last.pt in $SAVE"; fi

GEN="$SAVE/generate_$SUBSET.txt"
# (fairseq-generate runs on the GPU where torch sees one, else on the CPU: no --cpu needed)
echo "evaluate_wmt14.sh: translating $SUBSET with $CKPT (beam $BEAM, lenpen $LENPEN)"
fairseq-generate "$PREP/bin" --user-dir "$ROOT/fairseq_sparsemixer" --path "$CKPT" \
    --gen-subset "$SUBSET" --source-lang en --target-lang de --beam "$BEAM" --lenpen "$LENPEN" \
    --max-tokens "$MAXTOK" --required-batch-size-multiple 1 --remove-bpe sentencepiece \
    ${EXTRA[@]+"${EXTRA[@]}"} > "$GEN.tmp" 2> "$SAVE/generate_$SUBSET.log" \
    || { tail -n 5 "$SAVE/generate_$SUBSET.log" >&2; die "fairseq-generate failed (log: $SAVE/generate_$SUBSET.log)"; }
mv "$GEN.tmp" "$GEN"
HYP="$SAVE/hyp_$SUBSET.de"
grep -P '^H-\d+\t' "$GEN" | sed 's/^H-//' | sort -n -k1,1 -t $'\t' | cut -f3 > "$HYP.tmp"
n_hyp=$(wc -l < "$HYP.tmp"); n_ref=$(wc -l < "$REF")
[[ "$n_hyp" == "$n_ref" ]] || die "$n_hyp hypotheses for $n_ref references: fairseq-generate skipped sentences (see $GEN)"
mv "$HYP.tmp" "$HYP"
REFCOPY="$SAVE/ref_$SUBSET.de"
cp "$REF" "$REFCOPY.tmp" && mv "$REFCOPY.tmp" "$REFCOPY"
# the pipeline's helpers run as files: `python -m` would import the plugin, and fairseq (~6 s)
python "$ROOT/fairseq_sparsemixer/pipeline/bleu.py" --hyp "$HYP" --ref "$REFCOPY" --json "$SAVE/eval_$SUBSET.json.part"
python - "$SAVE" "$SUBSET" "$CKPT" "$BEAM" "$LENPEN" "$REF" <<'PY'
import json, os, sys
import torch
save, subset, ckpt, beam, lenpen, ref = sys.argv[1:]
out = os.path.join(save, f"eval_{subset}.json")
rel = lambda p: os.path.relpath(os.path.realpath(p), os.path.realpath(save))  # relative to the run dir
state = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=False)  # trusted: our own run
r = json.load(open(out + ".part"))
r.update(checkpoint=rel(ckpt), num_updates=int(state["optimizer_history"][-1]["num_updates"]), beam=int(beam),
         lenpen=float(lenpen), hypotheses=f"hyp_{subset}.de", reference=f"ref_{subset}.de",
         reference_source=os.path.abspath(ref))
json.dump(r, open(out + ".tmp", "w"), indent=2)
os.replace(out + ".tmp", out)
os.remove(out + ".part")
PY
echo "evaluate_wmt14.sh: wrote $SAVE/eval_$SUBSET.json"
