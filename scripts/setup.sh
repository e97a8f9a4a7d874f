#!/usr/bin/env bash
# Create a venv (idempotent) and install the pinned stack, for Python 3.11 or 3.12.
#
#   bash scripts/setup.sh                  .venv with its own torch: torch==2.13.0 from the
#                                          package index, or the torch already in the venv
#   bash scripts/setup.sh --system-torch   a venv made with --system-site-packages that uses the
#                                          torch installed system-wide (a GPU machine's CUDA
#                                          torch); never installs a torch
#   bash scripts/setup.sh --offline DIR    the same with no network: the rest from the wheels in
#                                          DIR (made by `bash scripts/gpu_wheels.sh DIR`), --no-index
#
# Environment: PYTHON (default python3; 3.11 or 3.12, anything else is refused: ve-fairseq
# 0.12.3 has wheels for CPython 3.11 and 3.12 only), VENV (default .venv).
# Order, so that nothing replaces the torch that is there:
#   1. torch: kept if the venv sees one (its own, or the system's with --system-torch/--offline),
#      else torch==2.13.0 under requirements/lock-py3XX.txt (PyPI has the CUDA build for Linux
#      x86_64; put PyTorch's CPU build into the venv first to avoid that download).
#   2. requirements/base.txt under constraints: the torch that is installed and the transitive
#      pins of requirements/lock-py3XX.txt (py311 or py312, by the Python).
#   3. ve-fairseq, hash-checked (one hash per wheel: cp311, cp312), --no-deps (its torchaudio
#      requirement is never installed).
#   4. this package, editable, --no-deps (offline without setuptools: a .pth file).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"
die() { echo "setup.sh: $*" >&2; exit 1; }

MODE=own WHEELS=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --system-torch) MODE=system; shift ;;
        --offline) [[ $# -ge 2 ]] || die "--offline needs a folder of wheels (bash scripts/gpu_wheels.sh DIR)"
                   MODE=offline; WHEELS="$(cd "$2" 2>/dev/null && pwd)" || die "--offline $2: no such folder"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see: bash scripts/setup.sh --help)" ;;
    esac
done

pyver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || die "cannot run PYTHON=$PY; set PYTHON=/path/to/python3.12 (or 3.11)"
case "$pyver" in
    3.11|3.12) ;;
    *) die "Python $pyver ($PY) is not supported: use Python 3.11 or 3.12, e.g. PYTHON=python3.12 (ve-fairseq 0.12.3, the fairseq wheel, exists for CPython 3.11 and 3.12 only)" ;;
esac
LOCK="$ROOT/requirements/lock-py${pyver/./}.txt"
[[ -f "$LOCK" ]] || die "missing $LOCK"

syssite=false; [[ "$MODE" == own ]] || syssite=true
stamp="$VENV/.sparsemixer-setup"
want="$( { cat "$ROOT"/requirements/*.txt "$ROOT/pyproject.toml"; echo "$pyver $MODE"; } | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup.sh: $VENV is up to date"; exit 0
fi

if [[ -x "$VENV/bin/python" ]]; then
    have="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [[ "$have" == "$pyver" ]] || die "$VENV has Python $have, not $pyver ($PY): remove it (rm -rf $VENV) or set VENV=another/path"
    grep -qiE "^include-system-site-packages *= *$syssite" "$VENV/pyvenv.cfg" \
        || die "$VENV was made $([[ $syssite == true ]] && echo without || echo with) --system-site-packages; for this mode remove it (rm -rf $VENV) or set VENV=another/path"
else
    echo "setup.sh: creating $VENV (Python $pyver$([[ $syssite == true ]] && echo ', --system-site-packages'))"
    if [[ $syssite == true ]]; then "$PY" -m venv --system-site-packages "$VENV"; else "$PY" -m venv "$VENV"; fi
fi
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
idx=(); [[ "$MODE" == offline ]] && idx=(--no-index --find-links "$WHEELS")

if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    [[ "$MODE" == own ]] || die "no torch visible from $PY ('$PY -c \"import torch\"' fails): --system-torch and --offline use the torch installed system-wide; install it there, or run plain 'bash scripts/setup.sh'"
    echo "setup.sh: installing torch==$TORCH_VERSION"
    "${pip[@]}" install -c "$LOCK" "torch==$TORCH_VERSION"
fi
installed_torch="$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])')"
echo "setup.sh: torch $("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__, "from", torch.__file__.rsplit("/", 2)[0])')"
cons="$(mktemp)"; trap 'rm -f "$cons"' EXIT
echo "torch==$installed_torch" > "$cons"
grep -v '^torch==' "$LOCK" >> "$cons"
echo "setup.sh: installing requirements (torch kept at $installed_torch; pins: ${LOCK#"$ROOT"/})"
"${pip[@]}" install "${idx[@]}" -c "$cons" -r "$ROOT/requirements/base.txt"
echo "setup.sh: installing ve-fairseq (hash-checked, --no-deps)"
"${pip[@]}" install "${idx[@]}" --no-deps --require-hashes -r "$ROOT/requirements/fairseq.txt"
if ! "${pip[@]}" install "${idx[@]}" --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null; then
    if [[ "$MODE" == offline ]]; then  # no setuptools to build the editable install with: a .pth does the same
        site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        echo "$ROOT" > "$site/fairseq_sparsemixer_root.pth"
    else
        "${pip[@]}" install --no-deps -e "$ROOT"
    fi
fi
"$VENV/bin/python" -c 'import fairseq, fairseq_sparsemixer' \
    || die "install finished but 'import fairseq_sparsemixer' fails (see above)"
echo "$want" > "$stamp"
echo "setup.sh: ready: source $VENV/bin/activate"
