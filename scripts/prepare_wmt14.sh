#!/usr/bin/env bash
# Prepare WMT'14 En-De (or the bundled sample) for fairseq: clean, joint sentencepiece BPE,
# encode, binarize with a joined dictionary.
#
#   bash scripts/prepare_wmt14.sh --sample [--out DIR]          bundled data/ende-libreoffice, offline
#   bash scripts/prepare_wmt14.sh --raw-dir DIR [--out DIR]     WMT'14 files you already have
#   bash scripts/prepare_wmt14.sh [--out DIR]                   download from statmt.org
# Options: --vocab-size N (32000; 8000 with --sample)  --workers N (2)  --force (redo all)
#          --checksums FILE (sha256sum file for the downloaded archives; see below)
#
# --raw-dir layout (as the statmt.org archives unpack; only read, never modified):
#   europarl-v7.de-en.{en,de}  commoncrawl.de-en.{en,de}  training/news-commentary-v9.de-en.{en,de}
#   dev/newstest2013.{en,de}   test-full/newstest2014-deen-{src.en,ref.de}.sgm
# (files are looked up anywhere below DIR by name).
#
# Resumable and atomic: each step writes to a temporary name and renames when complete, then
# leaves OUT/.done/STEP; a rerun skips finished steps. Outputs: OUT/spm.model, OUT/bin (fairseq),
# OUT/raw/{train,valid,test}.{en,de} (cleaned text; test references untouched but whitespace).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
die() { echo "prepare_wmt14.sh: error: $*" >&2; exit 1; }
log() { echo "prepare_wmt14.sh: $*"; }

SAMPLE=0 RAW="" OUT="" VOCAB="" WORKERS=2 FORCE=0 CHECKSUMS=""
BASE_URL="${WMT14_BASE_URL:-http://statmt.org}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --sample) SAMPLE=1; shift ;;
        --raw-dir) RAW="${2:?--raw-dir needs a directory}"; shift 2 ;;
        --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
        --vocab-size) VOCAB="${2:?}"; shift 2 ;;
        --workers) WORKERS="${2:?}"; shift 2 ;;
        --checksums) CHECKSUMS="${2:?}"; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $SAMPLE == 1 && -n "$RAW" ]] && die "--sample and --raw-dir exclude each other"
if [[ $SAMPLE == 1 ]]; then OUT="${OUT:-$ROOT/work/sample_en_de}"; VOCAB="${VOCAB:-8000}"
else OUT="${OUT:-$ROOT/work/wmt14_en_de}"; VOCAB="${VOCAB:-32000}"; fi
[[ "$VOCAB" =~ ^[0-9]+$ ]] || die "--vocab-size must be a number, got '$VOCAB'"

PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || die "python not found; run 'bash scripts/setup.sh' and 'source .venv/bin/activate'"
command -v fairseq-preprocess >/dev/null || die "fairseq-preprocess not found; run 'bash scripts/setup.sh' and 'source .venv/bin/activate'"
"$PY" -c 'import sentencepiece' 2>/dev/null || die "sentencepiece is not installed; run 'bash scripts/setup.sh'"
prep() { PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m fairseq_sparsemixer.prep "$@"; }

[[ $FORCE == 1 ]] && rm -rf "$OUT/.done"
mkdir -p "$OUT/.done" "$OUT/raw"
done_() { [[ -f "$OUT/.done/$1" ]]; }
mark() { touch "$OUT/.done/$1"; log "step $1 done"; }

# 1. sources: where the raw files are
find_one() {  # find_one NAME -> path of a file called NAME below $RAW
    local f; f="$(find "$RAW" -name "$1" -type f 2>/dev/null | head -n 1)"
    [[ -n "$f" ]] || die "$1 not found below $RAW (see --help for the expected files)"
    echo "$f"
}
ARCHIVES=(wmt13/training-parallel-europarl-v7.tgz wmt13/training-parallel-commoncrawl.tgz
          wmt14/training-parallel-nc-v9.tgz wmt14/dev.tgz wmt14/test-full.tgz)
if [[ $SAMPLE == 0 && -z "$RAW" ]]; then
    RAW="$OUT/download"
    if ! done_ download; then
        command -v curl >/dev/null || die "curl not found (needed to download); or pass --raw-dir"
        mkdir -p "$RAW"
        for a in "${ARCHIVES[@]}"; do
            f="$RAW/$(basename "$a")"
            if [[ ! -f "$f" ]]; then
                log "downloading $BASE_URL/$a"
                curl -fsSL --retry 3 -o "$f.part" "$BASE_URL/$a" || die "download of $BASE_URL/$a failed"
                mv "$f.part" "$f"
            fi
        done
        if [[ -n "$CHECKSUMS" ]]; then
            (cd "$RAW" && sha256sum --quiet -c "$(realpath "$CHECKSUMS")") \
                || { for a in "${ARCHIVES[@]}"; do rm -f "$RAW/$(basename "$a")"; done
                     die "checksum mismatch (listed above); the archives were removed, rerun to download again"; }
        fi
        for a in "${ARCHIVES[@]}"; do
            f="$RAW/$(basename "$a")"
            tar -xzf "$f" -C "$RAW" 2>/dev/null || { rm -f "$f"; die "$(basename "$a") is not a valid .tgz (removed; rerun to download again)"; }
        done
        mark download
    fi
fi

# 2. clean into OUT/raw
if ! done_ clean; then
    tmp="$OUT/raw.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
    if [[ $SAMPLE == 1 ]]; then
        D="$ROOT/data/ende-libreoffice"
        [[ -f "$D/train.en" ]] || die "bundled sample $D is missing"
        prep clean "$D/train.en" "$D/train.de" "$tmp/train.en" "$tmp/train.de" --train
        for s in valid test; do prep clean "$D/$s.en" "$D/$s.de" "$tmp/$s.en" "$tmp/$s.de"; done
    else
        [[ -d "$RAW" ]] || die "--raw-dir $RAW is not a directory"
        for c in europarl-v7.de-en commoncrawl.de-en news-commentary-v9.de-en; do
            prep clean "$(find_one "$c.en")" "$(find_one "$c.de")" "$tmp/$c.en" "$tmp/$c.de" --train
        done
        for l in en de; do
            cat "$tmp"/{europarl-v7,commoncrawl,news-commentary-v9}.de-en.$l > "$tmp/train.all.$l"
        done
        # de-duplicate across corpora too
        prep clean "$tmp/train.all.en" "$tmp/train.all.de" "$tmp/train.en" "$tmp/train.de" --train
        prep clean "$(find_one newstest2013.en)" "$(find_one newstest2013.de)" "$tmp/valid.en" "$tmp/valid.de"
        prep sgm "$(find_one newstest2014-deen-src.en.sgm)" "$tmp/test.src.en"
        prep sgm "$(find_one newstest2014-deen-ref.de.sgm)" "$tmp/test.ref.de"
        prep clean "$tmp/test.src.en" "$tmp/test.ref.de" "$tmp/test.en" "$tmp/test.de"
    fi
    for s in train valid test; do for l in en de; do mv "$tmp/$s.$l" "$OUT/raw/$s.$l"; done; done
    rm -rf "$tmp"
    mark clean
fi

# 3. joint sentencepiece BPE
if ! done_ spm; then
    log "training joint sentencepiece BPE ($VOCAB) on $(wc -l < "$OUT/raw/train.en") pairs"
    prep spm-train "$OUT/spm" "$VOCAB" "$OUT/raw/train.en" "$OUT/raw/train.de"
    mark spm
fi

# 4. encode
if ! done_ encode; then
    mkdir -p "$OUT/spm_text"
    for s in train valid test; do for l in en de; do
        prep spm-encode "$OUT/spm.model" "$OUT/raw/$s.$l" "$OUT/spm_text/$s.$l"
    done; done
    mark encode
fi

# 5. binarize
if ! done_ binarize; then
    rm -rf "$OUT/bin.tmp" "$OUT/bin"
    fairseq-preprocess --source-lang en --target-lang de --joined-dictionary \
        --trainpref "$OUT/spm_text/train" --validpref "$OUT/spm_text/valid" --testpref "$OUT/spm_text/test" \
        --destdir "$OUT/bin.tmp" --workers "$WORKERS" > "$OUT/preprocess.log" 2>&1 \
        || { tail -n 5 "$OUT/preprocess.log" >&2; die "fairseq-preprocess failed (log: $OUT/preprocess.log)"; }
    mv "$OUT/bin.tmp" "$OUT/bin"
    mark binarize
fi
log "ready: $OUT/bin (sentencepiece model $OUT/spm.model)"
