"""Expert load over training: heatmaps from the logged `load_<layer>_e<j>` metrics, and
collapse detection (an expert receiving < 1% of the tokens for many steps).

The criterion logs load_<layer>_e<j> = the fraction of the layer's non-pad tokens whose first
choice is expert j, averaged over each --log-interval. During training,
`training.collapse.CollapseMonitor` watches the same counts batch by batch and warns in the
training log; this module reads the logs afterwards.

    python -m fairseq_sparsemixer.diagnostics.expert_usage SAVE_DIR/train.log --out load.png
"""
import argparse
import re
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ._io import save_figure, setup_logging
from .logs import find_log, read_train_log

_LOAD = re.compile(r"^load_(.+)_e(\d+)$")


def _layer_order(name):
    """'enc0' < 'enc2' < 'dec0' < 'dec10': encoder first, then by layer number."""
    m = re.match(r"^(\D*)(\d*)$", name)
    side, num = (m.group(1), m.group(2)) if m else (name, "")
    return ({"enc": 0, "dec": 1}.get(side, 2), side, int(num) if num else -1)


def load_matrices(inner: Sequence[dict]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """(updates (U,), {layer: loads (E, U)}) from train_inner records (NaN where not logged)."""
    updates = np.array([r["num_updates"] for r in inner], dtype=float)
    experts = defaultdict(int)
    for r in inner:
        for k in r:
            m = _LOAD.match(k)
            if m:
                experts[m.group(1)] = max(experts[m.group(1)], int(m.group(2)) + 1)
    mats = {}
    for layer in sorted(experts, key=_layer_order):
        a = np.full((experts[layer], len(inner)), np.nan)
        for u, r in enumerate(inner):
            for e in range(experts[layer]):
                a[e, u] = r.get(f"load_{layer}_e{e}", np.nan)
        mats[layer] = a
    return updates, mats


def find_collapse(updates, mats, threshold=0.01, min_records=4) -> List[dict]:
    """Stretches of at least `min_records` consecutive log records in which an expert's load
    was below `threshold`: [{layer, expert, from_update, to_update, records, mean_load}]."""
    found = []
    for layer, a in mats.items():
        for e, row in enumerate(a):
            low = np.nan_to_num(row, nan=1.0) < threshold
            start = None
            for i, flag in enumerate(list(low) + [False]):
                if flag and start is None:
                    start = i
                elif not flag and start is not None:
                    if i - start >= min_records:
                        found.append(dict(layer=layer, expert=e, from_update=int(updates[start]),
                                          to_update=int(updates[i - 1]), records=i - start,
                                          mean_load=float(np.mean(row[start:i]))))
                    start = None
    return found


def plot_heatmaps(updates, mats, path, title=""):
    """One panel per MoE layer: experts (rows) x updates (columns), color = fraction of tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(mats)
    if not layers:
        raise ValueError("no load_<layer>_e<j> metrics in the log (dense model, or --moe-no-load-log)")
    fig, axes = plt.subplots(len(layers), 1, figsize=(8, 1.0 + 1.1 * len(layers)), squeeze=False,
                             sharex=True)
    vmax = max(float(np.nanmax(a)) for a in mats.values())
    for ax, layer in zip(axes[:, 0], layers):
        a = mats[layer]
        im = ax.imshow(a, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=vmax,
                       extent=(updates[0], updates[-1], a.shape[0] - 0.5, -0.5))
        ax.set_ylabel(f"{layer}\nexpert")
        n = a.shape[0]
        ax.set_yticks(range(0, n, 1 if n <= 8 else 4 if n <= 32 else max(1, n // 8)))
    axes[-1, 0].set_xlabel("updates")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="fraction of tokens")
    fig.suptitle(title or "expert load")
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.diagnostics.expert_usage",
                                description="Expert-load heatmaps and collapse report from a fairseq json log.")
    p.add_argument("log", help="SAVE_DIR or SAVE_DIR/train.log")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--threshold", type=float, default=0.01)
    p.add_argument("--min-records", type=int, default=4,
                   help="consecutive log records below the threshold that count as a collapse")
    a = p.parse_args(argv)
    setup_logging()
    try:
        log = read_train_log(find_log(a.log))
        updates, mats = load_matrices(log.inner)
        plot_heatmaps(updates, mats, a.out, title=str(a.log))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"expert_usage: error: {e}")
    for c in find_collapse(updates, mats, a.threshold, a.min_records):
        print(f"collapse: {c['layer']} expert {c['expert']} below {a.threshold:.0%} from update "
              f"{c['from_update']} to {c['to_update']} (mean load {c['mean_load']:.2%})")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
