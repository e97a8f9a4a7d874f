#!/usr/bin/env bash
# For a GPU machine with no network: put into DIR (default .whl/, ignored by git) the wheels that
# `bash scripts/setup.sh --offline DIR` installs there next to the machine's own CUDA torch.
# Run it on any Linux machine that reaches the package index (its own Python does not matter).
#
#   bash scripts/gpu_wheels.sh [--python 3.12] [DIR]
#
# What: ve-fairseq (hash-checked, requirements/fairseq.txt) and every pin of
# requirements/lock-py3XX.txt that fairseq and this project need, as CPython 3.12 (or 3.11)
# manylinux x86_64 wheels (antlr4-python3-runtime, an sdist only, is built into a wheel here).
# Not torch nor what torch needs (nvidia-*, triton, cuda-*, sympy, networkx, ...): the machine's
# torch brings those. About 120 MB. Copy DIR along with the checkout, then on the GPU machine:
#   bash scripts/setup.sh --offline DIR && source .venv/bin/activate
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER=3.12 OUTDIR=
die() { echo "gpu_wheels.sh: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) [[ $# -ge 2 ]] || die "--python needs 3.11 or 3.12"; PYVER="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1'" ;;
        *) OUTDIR="$1"; shift ;;
    esac
done
[[ "$PYVER" == 3.11 || "$PYVER" == 3.12 ]] || die "--python $PYVER: only 3.11 and 3.12 (ve-fairseq has no other wheels)"
LOCK="$ROOT/requirements/lock-py${PYVER/./}.txt"
OUTDIR="${OUTDIR:-$ROOT/.whl}"
mkdir -p "$OUTDIR"; OUTDIR="$(cd "$OUTDIR" && pwd)"
PY="${PYTHON:-python3}"
pip=("$PY" -m pip --disable-pip-version-check -q)
target=(--only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}"
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

# torch's own stack stays out; antlr4 (sdist only) is built below
torch_stack='^(torch|triton|nvidia-|cuda-|setuptools|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing.extensions)'
pins="$(mktemp)"; tmp="$(mktemp -d)"; trap 'rm -rf "$pins" "$tmp"' EXIT
grep -E '^[A-Za-z0-9]' "$LOCK" | grep -viE "$torch_stack" | grep -vi '^antlr4-python3-runtime==' > "$pins"
antlr="$(grep -i '^antlr4-python3-runtime==' "$LOCK")"

echo "gpu_wheels.sh: CPython $PYVER manylinux x86_64 wheels into $OUTDIR ($(wc -l < "$pins") pins of ${LOCK#"$ROOT"/} + ve-fairseq + $antlr)"
"${pip[@]}" download --no-deps "${target[@]}" -d "$OUTDIR" --require-hashes -r "$ROOT/requirements/fairseq.txt"
"${pip[@]}" download --no-deps "${target[@]}" -d "$OUTDIR" -r "$pins"
if ! ls "$OUTDIR"/antlr4_python3_runtime-"${antlr#*==}"-*.whl >/dev/null 2>&1; then
    "${pip[@]}" download --no-deps --no-binary=:all: -d "$tmp" "$antlr"
    "${pip[@]}" wheel --no-deps -w "$OUTDIR" "$tmp"/antlr4*
fi
echo "gpu_wheels.sh: $(ls "$OUTDIR"/*.whl | wc -l) wheels, $(du -sh "$OUTDIR" | cut -f1); on the GPU machine: bash scripts/setup.sh --offline ${OUTDIR#"$ROOT"/}"
