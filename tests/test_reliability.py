"""Failure paths: bad data, interrupted runs, extreme routing loads (issue 7's matrix; the flag
errors are in test_fairseq_cli.py, router numerics in test_routers.py, the download and
line-count checks in test_prepare.py)."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import BIN, ROOT, SMALL, json_log, losses, run, train
from fairseq_sparsemixer.pipeline import prep

PLUGIN = ROOT / "tests" / "plugins" / "forced_router"


def test_clean_drops_bad_training_pairs_and_keeps_every_test_line(tmp_path, capsys):
    src, tgt = tmp_path / "x.en", tmp_path / "x.de"
    src.write_bytes(b"good line\n\nbad \xff byte\ndup\ndup\nfine  spaced\ttext\n")
    tgt.write_bytes(b"gute Zeile\nleer links\nkaputt\nd\nd\nfein\n")
    prep.clean(src, tgt, tmp_path / "t.en", tmp_path / "t.de", train=True)
    assert (tmp_path / "t.en").read_text().splitlines() == ["good line", "dup"]  # ratio drops the last
    assert "1 pair(s)" in capsys.readouterr().err
    prep.clean(src, tgt, tmp_path / "v.en", tmp_path / "v.de", train=False)
    v = (tmp_path / "v.en").read_text(encoding="utf-8").splitlines()
    assert len(v) == 6 and v[1] == "" and v[2] == "bad \ufffd byte" and v[5] == "fine spaced text"


def test_prepare_never_writes_into_a_foreign_directory(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    p = run(["bash", "scripts/prepare_wmt14.sh", "--sample", "--out", out], check=False)
    assert p.returncode != 0 and "pass --force" in p.stderr.strip().splitlines()[-1]
    assert sorted(x.name for x in out.iterdir()) == ["notes.txt"]


def test_train_script_data_errors(prepared, tmp_path):
    def check(data, needle):
        p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", data,
                 "--save-dir", tmp_path / "save"], check=False)
        last = p.stderr.strip().splitlines()[-1]
        assert p.returncode != 0 and last.startswith("train_wmt14.sh: error:") and needle in last, p.stderr
        assert not (tmp_path / "save").exists()

    check(tmp_path / "nope", "does not exist")
    broken = tmp_path / "bin"
    shutil.copytree(prepared / "bin", broken)
    for f in broken.glob("valid.*"):
        f.unlink()
    check(broken, "has no valid split")
    shutil.rmtree(broken)
    shutil.copytree(prepared / "bin", broken)
    with open(broken / "dict.de.txt", "a") as f:
        f.write("extra 1\n")
    check(broken, "differ")


@pytest.mark.parametrize("fake", ["echo 'Traceback: boom' >&2; exit 1", "exit 0"])
def test_train_script_says_when_the_batch_cannot_be_computed(prepared, tmp_path, fake):
    """A failing (or silent) `python fairseq_sparsemixer/training/batching.py --machine` ends the script
    with its one error line, not a bare exit status 1 (a `read < <(...)` at end of input under
    set -e)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "python").write_text(f"""#!/bin/sh
case "$1" in */fairseq_sparsemixer/training/batching.py) {fake};; esac
exec {sys.executable} "$@"
""")
    (shim / "python").chmod(0o755)
    p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin",
             "--save-dir", tmp_path / "save"], check=False, env={"PATH": f"{shim}:{BIN}:{os.environ['PATH']}"})
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode != 0 and last.startswith("train_wmt14.sh: error: could not compute the batch"), p.stderr
    assert not (tmp_path / "save").exists()


def test_killed_training_resumes_like_an_uninterrupted_run(prepared, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    every = ("--save-interval-updates", "2", "--keep-interval-updates", "10")
    train(prepared, full, *every, updates="8")
    cmd = ["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin",
           "--save-dir", killed, "--max-update", "8", "--", *SMALL, *every]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not list(killed.glob("checkpoint_*_4.pt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "checkpoint_1_8.pt").exists(), "killed before the end"
    p = train(prepared, killed, *every, updates="8")
    assert "Loaded checkpoint" in p.stdout + p.stderr
    a, b = losses(full), losses(killed)
    assert b["8"] == a["8"] and b["7"] == a["7"], (a, b)


def test_one_expert_gets_every_token_single_process(prepared, tmp_path):
    save = tmp_path / "forced"
    save.mkdir()  # fairseq opens --log-file before it creates --save-dir
    run(["fairseq-train", prepared / "bin", "--user-dir", PLUGIN, "--arch", "switch_transformer_tiny", *SMALL,
         "--moe-router", "force0", "--moe-experts", "3", "--share-all-embeddings", "--criterion",
         "moe_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3", "--max-update", "3",
         "--cpu", "--save-dir", save, "--log-format", "json", "--log-file", save / "train.log"])
    last = [r for r in json_log(save / "train.log") if "train_load_enc0_e0" in r][-1]
    assert float(last["train_load_enc0_e0"]) == 1.0 and float(last["train_load_dec2_e2"]) == 0.0


def test_checkpoint_copies_are_atomic(tmp_path, monkeypatch):
    """A copy that dies half-way (here: the disk fills up) leaves the old checkpoint intact."""
    import shutil

    import fairseq_sparsemixer  # noqa: F401  (installs the atomic copy)
    from fairseq.file_io import PathManager

    src, dst = tmp_path / "checkpoint_1_4.pt", tmp_path / "checkpoint_last.pt"
    src.write_bytes(b"new" * 1000)
    dst.write_bytes(b"old checkpoint")
    real = shutil.copyfile

    def dying_copy(a, b, *args, **kw):
        with open(b, "wb") as f:
            f.write(b"ne")  # a partial write, then the failure
        raise OSError("No space left on device")

    monkeypatch.setattr(shutil, "copyfile", dying_copy)
    try:
        PathManager.copy(str(src), str(dst), overwrite=True)
    except OSError:
        pass
    assert dst.read_bytes() == b"old checkpoint"
    monkeypatch.setattr(shutil, "copyfile", real)
    assert PathManager.copy(str(src), str(dst), overwrite=True)
    assert dst.read_bytes() == src.read_bytes()
