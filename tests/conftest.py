import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fairseq_sparsemixer.diagnostics.logs import json_records as json_log  # noqa: F401 (used by tests)
from fairseq_sparsemixer.diagnostics.logs import json_records_of_lines


def json_out(text):
    """The json records of a command's console output."""
    return json_records_of_lines(text.splitlines())

# the suite runs on CPU wherever it runs: train_wmt14.sh would switch to fp16 on a visible GPU
# (and the bit-exact resume tests would flake); every subprocess inherits this
os.environ["CUDA_VISIBLE_DEVICES"] = ""
# pytest-xdist (scripts/test.sh runs the files on up to 4 workers): one thread per worker and per
# subprocess, as OpenMP threads beyond the cores spin and slow every process several times over
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's fairseq-* and sacrebleu
# a model small enough for a few updates in seconds (dims override the recipe's arch); validation
# on the first 5 batches of the valid set (fairseq stops after batch --max-valid-steps; the whole
# set took most of a 2-update run's time)
SMALL = ["--encoder-embed-dim", "64", "--decoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
         "--decoder-ffn-embed-dim", "128", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
         "--max-tokens", "1024", "--log-interval", "1", "--no-progress-bar", "--max-valid-steps", "4"]


def run(cmd, check=True, **kw):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    env.update(kw.pop("env", {}))
    p = subprocess.run([str(c) for c in cmd], cwd=kw.pop("cwd", ROOT), env=env, capture_output=True,
                       text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# the files that start many trainings first, the longest first (their summed test time, alone,
# 2026-11-29): with scripts/test.sh's workers (--dist loadfile --no-loadscope-reorder) the long
# files start at once instead of last, and the rest fill in beside them
_SLOW_FIRST = ["test_gpu_check.py", "test_fairseq_cli.py", "test_training_path.py", "test_install.py",
               "test_diagnostics.py", "test_reliability.py", "test_benchmark.py", "test_attention_profile.py",
               "test_prepare.py", "test_distributed.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order kept


def shared(tmp_path_factory, name, make):
    """A read-only session fixture made once per run, also across pytest-xdist workers: the first
    worker makes it (make(dir)) under a lock in the run's common temporary folder, the others wait
    and reuse it. A failed make leaves no done-mark, and the next worker tries anew."""
    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    out, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(out, ignore_errors=True)
            make(out)
            done.touch()
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """The bundled sample, prepared by the real script (sentencepiece + fairseq-preprocess); tests
    read it and never write into it."""
    return shared(tmp_path_factory, "prep", lambda d: run(
        ["bash", "scripts/prepare_wmt14.sh", "--sample", "--out", d / "sample", "--vocab-size", "4000"])) / "sample"


def train(prepared, save_dir, *extra, router="sparsemixer", experts="4", updates="6", check=True,
          small=True):
    dims = SMALL if small else ["--max-tokens", "1024", "--no-progress-bar"]
    return run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin",
                "--save-dir", save_dir, "--router", router, "--experts", experts, "--max-update", updates,
                "--", *dims, *extra], check=check)


@pytest.fixture(scope="session")
def trained(prepared, tmp_path_factory):
    """A switch_transformer (SparseMixer) trained for 6 updates through scripts/train_wmt14.sh."""
    save = tmp_path_factory.mktemp("ckpt") / "sm"
    train(prepared, save, "--save-interval-updates", "3", "--keep-interval-updates", "5")
    return save


def losses(save):
    """{num_updates: loss} of the per-update records of a train_wmt14.sh json log."""
    return {r["num_updates"]: r["loss"] for r in json_log(save / "train.log") if "num_updates" in r and "loss" in r}
