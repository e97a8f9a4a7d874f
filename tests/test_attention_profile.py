"""The attention backend switch (--attention-backend) and profile_train, on CPU: what a GPU run
does with them is checked by scripts/gpu_check.sh (steps attention, profile)."""
import json

import pytest
import torch

from conftest import ROOT, SMALL, run, train
from fairseq_sparsemixer.diagnostics import profile_train
from fairseq_sparsemixer.diagnostics.profile_train import _union_us, split_argv
from fairseq_sparsemixer.modules.attention import configure_attention


@pytest.fixture
def cudnn_sdp():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_auto_turns_cudnn_attention_off_on_cuda_only(cudnn_sdp):
    line = configure_attention("auto", cuda=False)
    assert "CPU" in line and torch.backends.cuda.cudnn_sdp_enabled()  # nothing changed off CUDA
    line = configure_attention("torch", cuda=True)
    assert "cuDNN attention on" in line and torch.backends.cuda.cudnn_sdp_enabled()
    line = configure_attention("auto", cuda=True)
    assert line.startswith("attention: cuDNN SDPA off") and not torch.backends.cuda.cudnn_sdp_enabled()
    # the other backends stay as torch has them
    assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    with pytest.raises(ValueError, match="--attention-backend 'cudnn' is unknown; valid: auto, torch"):
        configure_attention("cudnn", cuda=True)


def test_training_says_which_attention_and_refuses_bad_values(prepared, tmp_path):
    p = train(prepared, tmp_path / "a", "--attention-backend", "torch", updates="1")
    assert "attention: torch's SDPA backends on CPU" in p.stdout + p.stderr
    p = train(prepared, tmp_path / "b", "--attention-backend", "cudnn", updates="1", check=False)
    assert p.returncode != 0 and "--attention-backend: invalid choice: 'cudnn'" in p.stderr
    assert not (tmp_path / "b").exists()


def test_union_of_intervals():
    assert _union_us([(5, 6), (0, 2), (1, 3)]) == 4
    assert _union_us([(0, 10), (2, 3)]) == 10
    assert _union_us([]) == 0


class _Event:  # a kineto event as profile_train reads it
    def __init__(self, name, device, start, end, kind="kernel", annotation=False):
        from torch.autograd import DeviceType

        self._v = (name, getattr(DeviceType, device), start, end, kind, annotation)

    def name(self): return self._v[0]
    def device_type(self): return self._v[1]
    def start_ns(self): return self._v[2]
    def end_ns(self): return self._v[3]
    def activity_type(self): return self._v[4]
    def is_user_annotation(self): return self._v[5]


def test_gpu_figures_count_kernels_inside_the_updates_only():
    """Two 1 ms kernels and a memcpy in a 10 ms update; the GPU-side spans of record_function
    ranges (user annotations) and a kernel after the update (validation) are not GPU work of it."""
    ms = 1_000_000
    events = [_Event("update_21", "CPU", 0, 10 * ms, "cpu_op"),
              _Event("update_21", "CUDA", 0, 10 * ms, "gpu_user_annotation", annotation=True),
              _Event("forward", "CUDA", 0, 5 * ms, "gpu_user_annotation", annotation=True),
              _Event("k1", "CUDA", 1 * ms, 2 * ms), _Event("k2", "CUDA", 5 * ms, 6 * ms),
              _Event("Memcpy HtoD", "CUDA", 5 * ms, 7 * ms, "gpu_memcpy"),
              _Event("valid_kernel", "CUDA", 12 * ms, 14 * ms)]

    class Prof:
        class profiler:
            class kineto_results:
                events = staticmethod(lambda: events)

        key_averages = staticmethod(lambda: [])

    res = profile_train.summarize(Prof, [0.010], 1)
    assert res["kernels_per_update"] == 2 and res["memcpy_memset_per_update"] == 1
    assert res["kernel_ms_per_update"] == pytest.approx(2.0)
    assert res["gpu_busy_share"] == pytest.approx(0.3)  # [1, 2] and [5, 7] ms of 10


def test_split_argv_needs_the_separator():
    assert split_argv(["--updates", "2", "--", "DATA", "--cpu"]) == (["--updates", "2"], ["DATA", "--cpu"])
    with pytest.raises(SystemExit, match="give the fairseq-train arguments after '--'"):
        split_argv(["--updates", "2"])


def test_profile_train_through_train_wmt14(prepared, tmp_path):
    out = tmp_path / "prof"
    p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir",
             tmp_path / "save", "--experts", "4", "--max-update", "100", "--profile", out, "--profile-warmup", "1",
             "--profile-updates", "2", "--", *SMALL, "--disable-validation", "--no-save"])
    assert "wall ms per update" in p.stdout and "Top ops by self CPU time" in p.stdout
    res = json.loads((out / "summary.json").read_text())
    assert res["updates"] == 2 and res["warmup"] == 1 and len(res["wall_ms_per_update"]) == 2
    assert res["device"] == "cpu" and "gpu_busy_share" not in res
    assert res["aten_ops_per_update"] > 100 and res["top_cpu_ops"][0]["ms"] > 0
    # it stopped after warmup + updates, not at --max-update 100
    assert "Stopping training due to num_updates: 3 >= max_update: 3" in p.stdout + p.stderr
    trace = json.loads((out / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"update_2", "update_3"} <= names and "update_1" not in names and "update_4" not in names
    assert (out / "summary.md").read_text().startswith("profile_train: 2 updates on cpu")


def test_profile_train_rejects_bad_values(tmp_path):
    p = run(["python", "-m", "fairseq_sparsemixer.diagnostics.profile_train", "--updates", "0", "--out",
             tmp_path / "p", "--", "x"], check=False)
    assert p.returncode == 2 and "need --warmup >= 0, --updates >= 1" in p.stderr
    p = run(["bash", "scripts/train_wmt14.sh", "--data", ROOT / "nowhere", "--profile", tmp_path / "p",
             "--profile-updates", "0"], check=False)
    assert p.returncode == 1 and "--profile-updates >= 1" in p.stderr
    assert not (tmp_path / "p").exists()
