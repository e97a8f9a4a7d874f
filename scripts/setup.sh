#!/usr/bin/env bash
# Create .venv (idempotent) and install the pinned stack in an order that never pulls a
# CUDA torch by accident:
#   1. torch: kept if the venv already has one (GPU users: install your CUDA build of
#      torch into .venv first), else torch==2.13.0 (the CPU build).
#   2. requirements/base.txt under constraints: the torch that is installed and the
#      transitive pins of requirements/lock.txt.
#   3. ve-fairseq, hash-checked, --no-deps (its torchaudio requirement is never installed).
#   4. this package, editable, --no-deps.
# Usage: bash scripts/setup.sh            (VENV=path to use another location)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
    echo "setup.sh: need Python 3.11 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }

stamp="$VENV/.sparsemixer-setup"
want="$(cat "$ROOT"/requirements/*.txt "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup.sh: $VENV is up to date"; exit 0
fi

[[ -x "$VENV/bin/python" ]] || { echo "setup.sh: creating $VENV"; "$PY" -m venv "$VENV"; }
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "setup.sh: installing torch==$TORCH_VERSION (CPU build where available)"
    "${pip[@]}" install "torch==$TORCH_VERSION"
fi
installed_torch="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==$installed_torch" > "$cons"
echo "setup.sh: installing requirements (torch kept at $installed_torch)"
cat "$ROOT/requirements/lock.txt" >> "$cons"
"${pip[@]}" install -c "$cons" -r "$ROOT/requirements/base.txt"
echo "setup.sh: installing ve-fairseq (hash-checked, --no-deps)"
"${pip[@]}" install --no-deps --require-hashes -r "$ROOT/requirements/fairseq.txt"
"${pip[@]}" install --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null \
    || "${pip[@]}" install --no-deps -e "$ROOT"
"$VENV/bin/python" -c 'import fairseq, fairseq_sparsemixer' \
    || { echo "setup.sh: install finished but 'import fairseq_sparsemixer' fails (see above)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup.sh: ready: source $VENV/bin/activate"
