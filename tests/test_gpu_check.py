"""scripts/gpu_check.sh --smoke: every step of the GPU check, run on CPU (small dims, fp32 and
bf16, two gloo ranks, the CPU sync counter, the layer benchmark --quick)."""
import os
import tarfile

from conftest import run


def test_gpu_check_smoke_runs_every_step(prepared, tmp_path):
    out = tmp_path / "gc"
    p = run(["bash", "scripts/gpu_check.sh", "--smoke", "--updates", "2", "--prep-dir", prepared, "--out", out,
             "--steps", "all", "--archive", out / "gc.tgz"], check=False)
    summary = (out / "summary.md").read_text()
    assert p.returncode == 0, summary + p.stdout[-2000:]
    steps = [line.split("|")[1:3] for line in summary.splitlines()[2:]]
    assert [s.strip() for s, _ in steps] == ["versions", "prepare", "attention", "fp16", "bf16-grouped", "bf16-loop",
                                             "generate", "syncs", "syncs-bf16", "layer-bf16", "layer-fp16", "router",
                                             "ranks", "profile", "model", "model-bf16",
                                             "layer-compiled", "layer-whole"]
    assert all(status.strip() == "ok" for _, status in steps), summary
    assert "(= 1 process)" in summary and "difference 5 (target: 4 of 4 MoE layers on the loop path + 1 = 5)" in summary
    assert "difference 1 (target: 0 of 4 MoE layers on the loop path + 1 = 1)" in summary  # grouped, bf16
    for impl in ("grouped", "loop"):
        cmd = (out / f"bf16-{impl}" / "command.txt").read_text()
        assert " --bf16 " in cmd and f" --moe-expert-impl {impl} " in cmd
    assert "grouped/dense" in summary and "sparsemixer/switch" in summary and "moe2" in summary
    assert "grouped-compiled/dense" in summary  # the layer table with the compiled router
    assert "whole-compiled/dense" in summary  # the grouped layer compiled whole (it compiles on CPU)
    # on CPU both attention settings are the same computation: identical losses
    assert "fp32: largest loss difference auto - torch 0.0000 over 2 records" in summary
    assert "dense: " in summary and "ms/update" in summary  # the profile step
    assert "moe2 fp32 torch:" in summary and "moe2 bf16 auto:" in summary  # model, before/after
    assert "later None" not in summary and ("later " in summary or "no later epoch" in summary)
    with tarfile.open(out / "gc.tgz") as t:  # everything in one archive
        names = set(t.getnames())
    assert {"./summary.md", "./profile-dense.json", "./model.json", "./attention.log",
            "./attention-fp32-auto.log", "./attention-bf16-torch.log"} <= names  # each attention run's log
    assert not [n for n in names if n.endswith(".pt")]  # no checkpoint: the archive stays small


def test_gpu_check_runs_the_chosen_steps(prepared, tmp_path):
    out = tmp_path / "gc"
    p = run(["bash", "scripts/gpu_check.sh", "--smoke", "--updates", "2", "--prep-dir", prepared, "--out", out,
             "--steps", "versions syncs"], check=False)
    summary = (out / "summary.md").read_text()
    assert p.returncode == 0, summary
    assert [line.split("|")[1].strip() for line in summary.splitlines()[2:]] == ["versions", "syncs"]


def test_gpu_check_versions_cell_holds_the_versions_not_import_warnings(tmp_path):
    # a fairseq installed with pip's --no-compile (docs/benchmarks.md section 4, the lent machine's
    # command) prints SyntaxWarnings on its first import under Python 3.12: 400 characters that
    # came before the card's name in the summary's 600-character cell; here a sitecustomize prints
    # more (1,560 characters) to stderr at every start-up
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.stderr.write('SyntaxWarning: invalid escape sequence ' * 40 + '\\n')\n")
    out = tmp_path / "gc"
    p = run(["bash", "scripts/gpu_check.sh", "--smoke", "--out", out, "--steps", "versions"], check=False,
            env={"PYTHONPATH": f"{site}:{os.environ.get('PYTHONPATH', '')}"})
    row = (out / "summary.md").read_text().splitlines()[2].split("|")
    assert p.returncode == 0 and row[2].strip() == "ok", row
    assert row[4].strip().startswith("card none (CPU) torch ") and "grouped GEMM" in row[4] and "Warning" not in row[4], row
    assert "SyntaxWarning" in (out / "versions.log").read_text()  # the log keeps everything


def test_gpu_check_rejects_bad_options(tmp_path):
    p = run(["bash", "scripts/gpu_check.sh", "--updates", "0", "--out", tmp_path / "x"], check=False)
    assert p.returncode == 2 and "--updates must be >= 1" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x").exists()
    p = run(["bash", "scripts/gpu_check.sh", "--steps", "versions fast", "--out", tmp_path / "x"], check=False)
    assert p.returncode == 2 and "--steps: unknown step 'fast'" in p.stderr and not (tmp_path / "x").exists()
    p = run(["bash", "scripts/gpu_check.sh", "--budget", "7m", "--out", tmp_path / "x"], check=False)
    assert p.returncode == 2 and "--budget must be a whole number of seconds" in p.stderr and not (tmp_path / "x").exists()


def test_gpu_check_budget_skips_what_does_not_fit(prepared, tmp_path):
    # a budget already spent before the first step: every step is "skipped (budget)", and since
    # versions did not pass, the check stops there with one line
    out = tmp_path / "gc"
    p = run(["bash", "scripts/gpu_check.sh", "--smoke", "--budget", "4", "--prep-dir", prepared, "--out", out,
             "--steps", "versions syncs"], check=False)
    assert p.returncode == 2 and "the versions step failed, hung or was skipped" in p.stderr.strip().splitlines()[-1]
    rows = [line.split("|")[1:3] for line in (out / "summary.md").read_text().splitlines()[2:]]
    assert [(a.strip(), b.strip()) for a, b in rows] == [("versions", "skipped (budget)")]


def test_gpu_check_stops_when_versions_fails(prepared, tmp_path):
    # not --smoke on a machine whose torch sees no GPU: one clear line, exit 2, no later step run
    # (on a GPU machine whose torch hangs, the same stop comes after the step's 60 s limit)
    out = tmp_path / "gc"
    p = run(["bash", "scripts/gpu_check.sh", "--prep-dir", prepared, "--out", out, "--steps", "versions model",
             "--archive", tmp_path / "gc.tgz"], check=False, env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, anywhere
    assert p.returncode == 2, p.stdout + p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check.sh: error: the versions step failed") and "no other step was run" in last
    summary = (out / "summary.md").read_text()
    assert [line.split("|")[1].strip() for line in summary.splitlines()[2:]] == ["versions"]
    assert "sees no GPU here" in summary and "FAILED" in summary
    assert (tmp_path / "gc.tgz").is_file() and not (out / "model.log").exists()
