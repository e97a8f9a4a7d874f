"""Average the model weights of the last K checkpoints (as fairseq's scripts/average_checkpoints.py,
which the fairseq wheels do not ship).

    python -m fairseq_sparsemixer.pipeline.average_checkpoints --save-dir DIR --last K --out FILE

"Last" = highest update number of checkpoint_*_<updates>.pt files, else highest epoch of
checkpoint<epoch>.pt files. The output is written to a temporary name and renamed.
Only load checkpoints you trust: they are pickles.
"""
import argparse
import collections
import os
import re
import sys

import torch


def last_checkpoints(save_dir, k):
    names = os.listdir(save_dir)
    by_update = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint_\d+_(\d+)\.pt", n))]
    by_epoch = [(int(m.group(1)), n) for n in names if (m := re.fullmatch(r"checkpoint(\d+)\.pt", n))]
    found = sorted(by_update or by_epoch, reverse=True)[:k]
    return [os.path.join(save_dir, n) for _, n in found]


def average(paths):
    """The mean of the checkpoints' weights, in the first (the newest) one's state: its update
    count, config and optimizer history, as fairseq's script keeps them."""
    avg, first = collections.OrderedDict(), None
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=False)
        first = first or state
        for name, t in state["model"].items():
            t = t.float() if t.is_floating_point() else t
            if name not in avg:
                avg[name] = t.clone()
            elif t.is_floating_point():
                avg[name] += t
    for name, t in avg.items():
        if t.is_floating_point():
            t.div_(len(paths))
    first["model"] = avg
    return first


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.pipeline.average_checkpoints")
    p.add_argument("--save-dir", required=True)
    p.add_argument("--last", type=int, required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    paths = last_checkpoints(a.save_dir, a.last)
    if len(paths) < a.last:
        sys.exit(f"average_checkpoints: error: asked for the last {a.last} checkpoints but "
                 f"{a.save_dir} has {len(paths)} (keep them with --keep-last-epochs/--save-interval-updates)")
    tmp = a.out + ".tmp"
    torch.save(average(paths), tmp)
    os.replace(tmp, a.out)
    print(f"average_checkpoints: {a.out} = mean of {', '.join(os.path.basename(x) for x in paths)}")


if __name__ == "__main__":
    main()
