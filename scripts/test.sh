#!/usr/bin/env bash
# README command 2: set up .venv (idempotent) and run the whole test suite (CPU, ~10 min on 2 cores).
# Extra arguments go to pytest (e.g. -m "not slow", -k routers).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
