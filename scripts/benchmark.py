#!/usr/bin/env python
"""Speed and memory of the MoE layer, the routers and the whole model, each as a ratio against a
baseline measured in the same process: the command line of
`fairseq_sparsemixer.diagnostics.benchmark`, whose docstring (and --help) says what each suite
measures.

    python scripts/benchmark.py layer|router|model|all [--json OUT] ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fairseq_sparsemixer.diagnostics.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main()
