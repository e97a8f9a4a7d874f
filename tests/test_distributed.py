"""2-process CPU training (gloo) with experts that receive no token: completes, and the
replicas see identical parameters at every step.

On CPU fairseq's `pytorch_ddp` backend cannot be used (it passes device_ids=[0] to torch's DDP,
which rejects CPU modules), so this runs `legacy_ddp`. On GPU the default `pytorch_ddp` needs no
find_unused_parameters: every expert runs on every step (on an empty slice if idle)."""
import os
import socket
import subprocess

import torch

from conftest import BIN, ROOT, SMALL, json_log

PLUGIN = ROOT / "tests" / "plugins" / "forced_router"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_with_idle_experts(prepared, tmp_path):
    port = free_port()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", OMP_NUM_THREADS="1", PROBE_DIR=str(tmp_path))
    procs = []
    for rank in range(2):
        save = tmp_path / f"rank{rank}"  # each rank saves its own replica (rank 0 is the real one)
        cmd = ["fairseq-train", prepared / "bin", "--user-dir", PLUGIN, "--arch", "switch_transformer_tiny",
               *SMALL, "--moe-router", "force0", "--moe-experts", "3", "--share-all-embeddings",
               "--criterion", "moe_probe", "--optimizer", "adam", "--lr", "1e-3",
               "--max-update", "4", "--cpu", "--ddp-backend", "legacy_ddp", "--distributed-backend", "gloo",
               "--distributed-world-size", "2", "--distributed-rank", str(rank), "--distributed-no-spawn",
               "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--save-dir", save,
               "--no-save-optimizer-state", "--disable-validation", "--log-format", "json",
               "--log-file", tmp_path / f"rank{rank}.log"]
        if rank == 1:
            cmd += ["--no-save"]
        procs.append(subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    assert '"num_updates": "4"' in outs[0]
    # the per-layer keys are those of a 1-process run: the criterion sees the DDP-wrapped model,
    # whose module paths start with "module."
    layers = {k.rsplit("_e", 1)[0] for rec in json_log(tmp_path / "rank0.log") for k in rec if k.startswith("load_")}
    assert layers == {"load_enc0", "load_enc2", "load_dec0", "load_dec2"}, layers
    # every forward of both ranks saw the same parameters: the updates were synchronized
    r0 = (tmp_path / "rank0.txt").read_text().splitlines()
    r1 = (tmp_path / "rank1.txt").read_text().splitlines()
    assert len(r0) == len(r1) >= 4 and r0 == r1
    assert len(set(r0)) == len(r0)  # and the parameters did change between steps
    sd = torch.load(tmp_path / "rank0" / "checkpoint_last.pt", weights_only=False)["model"]
    assert any(".experts.2." in k for k in sd)
