#!/usr/bin/env python
"""Forward+backward time of MoEFeedForward vs a dense FFN of the same d and d_ff, and of
SparseMixer vs Switch routing, measured side by side in one process.

Each figure is a ratio of medians over interleaved repeats (after warm-up) against a
baseline timed in the same loop, so machine noise mostly cancels. No assertions.

    python scripts/benchmark_moe.py                 # N in 2 4 8 16, T=4096, d=512, d_ff=2048
    python scripts/benchmark_moe.py --quick --json out.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fairseq_sparsemixer.modules import MoEFeedForward  # noqa: E402


def step_fn(module, x):
    def step():
        module.zero_grad(set_to_none=True)
        module(x).float().sum().backward()
    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def compare(fns, device, warmup, repeats):
    """Median seconds of each fn, timed interleaved (round-robin) after warm-up."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            times[k].append(timed(f, device))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--ffn-dim", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (harness check)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.quick:
        a.experts, a.tokens, a.dim, a.ffn_dim, a.warmup, a.repeats = [2, 4], 64, 16, 32, 1, 2
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    torch.manual_seed(0)
    facts = {"torch": torch.__version__, "device": a.device, "dtype": a.dtype,
             "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
             "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
             "tokens": a.tokens, "dim": a.dim, "ffn_dim": a.ffn_dim, "repeats": a.repeats}
    print("  ".join(f"{k}={v}" for k, v in facts.items()))
    x = torch.randn(a.tokens, a.dim, device=device, dtype=dtype)
    dense = nn.Sequential(nn.Linear(a.dim, a.ffn_dim), nn.ReLU(), nn.Linear(a.ffn_dim, a.dim)).to(device, dtype)
    rows = []
    print(f"{'N':>3} {'dense ms':>9} {'sparsemixer ms':>15} {'switch ms':>10} {'sm/dense':>9} {'sm/switch':>10}")
    for n in a.experts:
        sm = MoEFeedForward(a.dim, a.ffn_dim, n, router="sparsemixer").to(device, dtype).train()
        sw = MoEFeedForward(a.dim, a.ffn_dim, n, router="switch").to(device, dtype).train()
        t = compare({"dense": step_fn(dense, x), "sparsemixer": step_fn(sm, x), "switch": step_fn(sw, x)},
                    device, a.warmup, a.repeats)
        row = {"experts": n, **{f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()},
               "sparsemixer_over_dense": round(t["sparsemixer"] / t["dense"], 3),
               "switch_over_dense": round(t["switch"] / t["dense"], 3),
               "sparsemixer_over_switch": round(t["sparsemixer"] / t["switch"], 3)}
        rows.append(row)
        print(f"{n:>3} {row['dense_ms']:>9.2f} {row['sparsemixer_ms']:>15.2f} {row['switch_ms']:>10.2f} "
              f"{row['sparsemixer_over_dense']:>9.3f} {row['sparsemixer_over_switch']:>10.3f}")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump({"facts": facts, "rows": rows}, f, indent=2)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
