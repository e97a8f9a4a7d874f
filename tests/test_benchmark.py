"""The benchmark harness runs and emits its json schema (no timing assertions)."""
import json

from conftest import run


def test_benchmark_quick(tmp_path):
    out = tmp_path / "b.json"
    run(["python", "scripts/benchmark_moe.py", "--quick", "--json", out])
    r = json.loads(out.read_text())
    assert r["facts"]["tokens"] == 64 and [row["experts"] for row in r["rows"]] == [2, 4]
    for row in r["rows"]:
        for k in ("dense_ms", "sparsemixer_ms", "switch_ms", "sparsemixer_over_dense",
                  "sparsemixer_over_switch"):
            assert row[k] > 0
