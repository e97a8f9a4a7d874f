#!/usr/bin/env bash
# Prepare WMT'14 En-De (or the bundled sample) for fairseq: clean, joint sentencepiece BPE,
# encode, binarize with a joined dictionary.
#
#   bash scripts/prepare_wmt14.sh --sample [--out DIR]          bundled data/ende-libreoffice, offline
#   bash scripts/prepare_wmt14.sh --raw-dir DIR [--out DIR]     WMT'14 files you already have
#   bash scripts/prepare_wmt14.sh [--out DIR]                   download from statmt.org
# Options: --vocab-size N (32000; 8000 with --sample)  --workers N (2)
#          --force (redo every step; also allows an --out that is not ours)
#          --checksums FILE ('sha256:HEX  NAME' or 'md5:HEX  NAME' lines replacing the built-in
#          checksums of the downloaded archives; with WMT14_MIRROR=http://host:port for mirrors)
#
# --raw-dir layout (as the statmt.org archives unpack; only read, never modified):
#   europarl-v7.de-en.{en,de}  commoncrawl.de-en.{en,de}  training/news-commentary-v9.de-en.{en,de}
#   newstest2013.{en,de}       test-full/newstest2014-deen-{src.en,ref.de}.sgm
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
# run as a file, not with -m: -m would import the plugin and with it fairseq (~6 s per call)
prep() { "$PY" "$ROOT/fairseq_sparsemixer/pipeline/prep.py" "$@"; }

# never write into a directory this script did not create, unless --force
if [[ -d "$OUT" && ! -d "$OUT/.done" && -n "$(ls -A "$OUT")" && $FORCE == 0 ]]; then
    die "--out $OUT exists and is not a prepare_wmt14.sh output; choose another --out or pass --force"
fi
[[ $FORCE == 1 ]] && rm -rf "$OUT/.done"
mkdir -p "$OUT/.done" "$OUT/raw"
# leftovers of an interrupted run (never taken for finished outputs): remove them
find "$OUT" -depth \( -name '*.tmp.*' -o -name '*.part' -o -name raw.tmp -o -name bin.tmp \) -exec rm -rf {} +
done_() { [[ -f "$OUT/.done/$1" ]]; }
mark() { touch "$OUT/.done/$1"; log "step $1 done"; }

# 1. sources: where the raw files are
find_one() {  # find_one NAME -> path of a file called NAME below $RAW
    local f; f="$(find "$RAW" -name "$1" -type f 2>/dev/null | head -n 1)"
    [[ -n "$f" ]] || die "$1 not found below $RAW (see --help for the expected files)"
    echo "$f"
}
# name | URL | checksum (sha256 of the training archives and of WMT'19's dev.tgz as listed by
# TensorFlow Datasets' url_checksums/wmt14_translate.txt; md5 of test-full.tgz as listed by
# sacreBLEU's dataset table). WMT14_MIRROR=http://host:port replaces scheme and host.
ARCHIVES=(
  "training-parallel-europarl-v7.tgz|http://www.statmt.org/wmt13/training-parallel-europarl-v7.tgz|sha256:0224c7c710c8a063dfd893b0cc0830202d61f4c75c17eb8e31836103d27d96e7"
  "training-parallel-commoncrawl.tgz|http://www.statmt.org/wmt13/training-parallel-commoncrawl.tgz|sha256:c7a74e2ea01ac6c920123108627e35278d4ccb5701e15428ffa34de86fa3a9e5"
  "training-parallel-nc-v9.tgz|http://www.statmt.org/wmt14/training-parallel-nc-v9.tgz|sha256:cb8953f292298e6877ae433c98912b927cb0766b303f4540512ddd286c748485"
  "dev.tgz|http://data.statmt.org/wmt19/translation-task/dev.tgz|sha256:7a7deccf82ebb05ba508dba5eb21356492224e8f630ec4f992132b029b4b25e7"
  "test-full.tgz|http://www.statmt.org/wmt14/test-full.tgz|md5:a8cd784e006feb32ac6f3d9ec7eb389a"
)
checksum_of() {  # checksum_of NAME -> algo:hash (the --checksums file, 'algo:hash  NAME' lines, wins)
    local name="$1" entry line
    if [[ -n "$CHECKSUMS" ]]; then
        line="$(awk -v n="$name" '$2 == n {print $1}' "$CHECKSUMS")"
        [[ -n "$line" ]] || die "$CHECKSUMS has no checksum for $name"
        echo "$line"; return
    fi
    for entry in "${ARCHIVES[@]}"; do [[ "${entry%%|*}" == "$name" ]] && { echo "${entry##*|}"; return; }; done
}
verify() {  # verify FILE NAME: 0 when the file matches its recorded checksum
    local want algo got; want="$(checksum_of "$2")"; algo="${want%%:*}"
    got="$("${algo}sum" "$1" | cut -d' ' -f1)"
    [[ "$got" == "${want#*:}" ]]
}
if [[ $SAMPLE == 0 && -z "$RAW" ]]; then
    RAW="$OUT/download"
    if ! done_ download; then
        command -v curl >/dev/null || die "curl not found (needed to download); or pass --raw-dir"
        [[ -z "$CHECKSUMS" || -f "$CHECKSUMS" ]] || die "--checksums $CHECKSUMS not found"
        mkdir -p "$RAW"
        for entry in "${ARCHIVES[@]}"; do
            IFS='|' read -r name url _ <<< "$entry"
            [[ -n "${WMT14_MIRROR:-}" ]] && url="$WMT14_MIRROR/${url#*://*/}"
            f="$RAW/$name"
            if [[ ! -f "$f" ]]; then
                log "downloading $url"
                curl -fsSL --retry 3 -o "$f.part" "$url" || { rm -f "$f.part"; die "download of $url failed"; }
                verify "$f.part" "$name" || { rm -f "$f.part"; die "$name from $url does not match its checksum $(checksum_of "$name") (removed; rerun to download again)"; }
                mv "$f.part" "$f"
            fi
            if [[ ! -f "$RAW/.unpacked.$name" ]]; then
                tar -xzf "$f" -C "$RAW" || { rm -f "$f"; die "$name is not a valid .tgz (removed; rerun to download again)"; }
                touch "$RAW/.unpacked.$name"
            fi
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
