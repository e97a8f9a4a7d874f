#!/usr/bin/env bash
# README command 1: on a fresh machine (Python 3.11 or 3.12 + pip, offline except package registries)
#   set up .venv -> sentencepiece + binarize the bundled En-De sample -> train
#   switch_transformer_tiny with SparseMixer on CPU -> fairseq-generate the sample's test set
#   -> sacreBLEU with its signature.
# Rerunning resumes (finished steps are skipped; training continues from checkpoint_last.pt).
# QUICKSTART_UPDATES (default 1200) sets the training length. Training runs on one CPU thread
# (OMP_NUM_THREADS, default 1): CPU training is bit-reproducible only at a fixed thread count, and
# the README's numbers were measured at one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UPDATES="${QUICKSTART_UPDATES:-1200}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-${OMP_NUM_THREADS:-1}}"
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate
bash scripts/prepare_wmt14.sh --sample --out work/sample_en_de
bash scripts/train_wmt14.sh --recipe cpu-tiny --router sparsemixer --experts 4 \
    --data work/sample_en_de/bin --save-dir work/quickstart --max-update "$UPDATES" \
    -- --log-format simple --log-interval 50 --no-epoch-checkpoints
bash scripts/evaluate_wmt14.sh --save-dir work/quickstart --prep-dir work/sample_en_de
python - <<'PY'
import json
r = json.load(open("work/quickstart/eval_test.json"))
print(f"\nquickstart: {r['sacrebleu_text']}")
print(f"quickstart: tokenized BLEU with compound splitting {r['tok_bleu_compound_split']} "
      f"on {r['sentences']} test sentences (work/quickstart/eval_test.json)")
PY
