#!/usr/bin/env bash
# README command 2 (and CI's .ci/run): set up .venv (idempotent) and run the whole test suite on CPU.
# It includes the Python 3.12 check (tests/test_install.py: .venv-py312 set up with python3.12, then
# preprocess, 2 updates, generate; a GPU machine's --system-torch/--offline install on CPU), which
# skips where no python3.12 is found, except under CI=true, where it fails. Its first run downloads
# PyPI's torch for 3.12 (several GB); later runs reuse .venv-py312.
# Extra arguments go to pytest (e.g. -m "not slow", -k routers).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
