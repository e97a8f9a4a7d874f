#!/usr/bin/env bash
# README command 2 (and CI's .ci/run): set up .venv (idempotent) and run the whole test suite on CPU.
# It includes the Python 3.12 check (tests/test_install.py: .venv-py312 set up with python3.12, then
# preprocess, 2 updates, generate; a GPU machine's --system-torch/--offline install on CPU), which
# skips where no python3.12 is found, except under CI=true, where it fails. Its first run downloads
# PyPI's torch for 3.12 (several GB); later runs reuse .venv-py312.
# The test files run side by side on min(cores, 4) pytest-xdist workers, a file's tests on one
# worker (--dist loadfile: a module's fixtures, like the 3.12 venv, are made once), the slowest
# files first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order);
# TEST_WORKERS=K sets K (0: all in this process).
# Extra arguments go to pytest (e.g. -m "not slow", -k routers; --pdb and -s need TEST_WORKERS=0).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
cores=$(nproc 2>/dev/null || echo 1)
workers=${TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}
[[ "$workers" =~ ^(0|[1-9][0-9]*)$ ]] || { echo "test.sh: TEST_WORKERS must be a number >= 0, got '$workers'" >&2; exit 2; }
(( workers == 1 )) && workers=0  # one worker is this process, without xdist's start-up
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
