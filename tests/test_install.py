"""Installing: scripts/setup.sh on Python 3.11 and 3.12 (anything else refused), the Python 3.12
check (set up, preprocess, train 2 updates, generate), and a GPU machine's paths run on CPU with
Python 3.12: `setup.sh --system-torch` / `--offline DIR` (a venv made with --system-site-packages
whose "system" torch is the 3.12 venv's, seen through PYTHONUSERBASE) with the wheels of
scripts/gpu_wheels.sh and no package index. Also: README, docs and scripts point only at files of
the repository.

The 3.12 venv is kept at .venv-py312 (PY312_VENV=path for another), so a rerun skips its setup;
python3.12 is looked up on PATH, then under pyenv (PYTHON312=path to name one). Without it these
tests skip, except under CI (CI=true), where they fail."""
import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, SMALL, run

SETUP = ["bash", "scripts/setup.sh"]


def find_python(ver):
    """A python{ver} that runs: $PYTHON3xx, then PATH (pyenv shims that refuse are skipped), then pyenv."""
    cands = [os.environ.get(f"PYTHON{ver.replace('.', '')}"), shutil.which(f"python{ver}")]
    pyenv = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    cands += sorted(glob.glob(f"{pyenv}/versions/{ver}.*/bin/python{ver}"), reverse=True)
    for c in filter(None, cands):
        p = subprocess.run([c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip() == ver:
            return c
    return None


def need_python(ver):
    py = find_python(ver)
    if py is None:
        why = f"python{ver} not found on PATH or under pyenv (set PYTHON{ver.replace('.', '')}=/path/to/python{ver})"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI runs the Python {ver} check")
        pytest.skip(why)
    return py


def env_for(venv, **extra):
    """The environment of a command run with VENV's python and fairseq-* first on PATH (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{venv}/bin:{os.environ['PATH']}", PYTHONUNBUFFERED="1", **extra)
    return env


def sh(cmd, env, check=True, cwd=ROOT):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def setup(*args, check=False, **env):
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e.update({k: str(v) for k, v in env.items()})
    return sh(SETUP + list(args), e, check=check)


# ---------------------------------------------------------------- cheap: what setup.sh refuses

def python_stub(tmp_path, ver):
    stub = tmp_path / "python"
    stub.write_text(f"#!/bin/sh\necho {ver}\n")  # answers setup.sh's version query only
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize("ver", ["3.10", "3.13", "3.14"])
def test_setup_refuses_other_pythons_with_the_reason(tmp_path, ver):
    stub = python_stub(tmp_path, ver)
    p = setup(PYTHON=stub, VENV=tmp_path / "v")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"Python {ver}" in p.stderr and "use Python 3.11 or 3.12" in p.stderr, p.stderr
    assert "ve-fairseq 0.12.3" in p.stderr and not (tmp_path / "v").exists()


def test_setup_refuses_real_python313(tmp_path):
    py = find_python("3.13")
    if py is None:
        pytest.skip("python3.13 not found (set PYTHON313=/path/to/python3.13)")
    p = setup(PYTHON=py, VENV=tmp_path / "v")
    assert p.returncode == 1 and "Python 3.13" in p.stderr and "not supported" in p.stderr, p.stderr
    assert not (tmp_path / "v").exists()


def test_setup_arguments(tmp_path):
    stub = python_stub(tmp_path, "3.9")  # whatever happens, nothing is installed
    p = setup("--bogus", VENV=tmp_path / "v", PYTHON=stub)
    assert p.returncode == 1 and "unknown argument '--bogus'" in p.stderr
    p = setup("--offline", tmp_path / "nowhere", VENV=tmp_path / "v", PYTHON=stub)
    assert p.returncode == 1 and "no such folder" in p.stderr
    p = setup("--offline", VENV=tmp_path / "v", PYTHON=stub)
    assert p.returncode == 1 and "needs a folder of wheels" in p.stderr
    p = setup("--help", PYTHON=stub)
    assert p.returncode == 0 and "--system-torch" in p.stdout and "--offline DIR" in p.stdout
    assert not (tmp_path / "v").exists()


def test_setup_refuses_a_venv_of_another_python_or_kind(tmp_path):
    py312, py311 = need_python("3.12"), need_python("3.11")
    v311 = tmp_path / "v311"
    subprocess.run([py311, "-m", "venv", "--without-pip", v311], check=True)
    p = setup(PYTHON=py312, VENV=v311)
    assert p.returncode == 1 and "has Python 3.11, not 3.12" in p.stderr, p.stderr
    plain = tmp_path / "plain"
    subprocess.run([py312, "-m", "venv", "--without-pip", plain], check=True)
    p = setup("--system-torch", PYTHON=py312, VENV=plain)
    assert p.returncode == 1 and "made without --system-site-packages" in p.stderr, p.stderr


def test_system_torch_needs_a_system_torch(tmp_path):
    py312 = need_python("3.12")
    p = setup("--system-torch", PYTHON=py312, VENV=tmp_path / "v", PYTHONUSERBASE=tmp_path / "nothing")
    assert p.returncode == 1 and "no torch visible" in p.stderr, p.stdout + p.stderr
    assert not list((tmp_path / "v").glob("lib/python3.12/site-packages/torch"))  # nothing installed


# ---------------------------------------------------------------- Python 3.12: the CI check

@pytest.fixture(scope="module")
def venv312():
    """.venv-py312 made by `PYTHON=python3.12 bash scripts/setup.sh` (torch 2.13.0 from the index)."""
    py = need_python("3.12")
    venv = Path(os.environ.get("PY312_VENV", ROOT / ".venv-py312"))
    p = setup(PYTHON=py, VENV=venv)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def prep312(venv312, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep312") / "sample"
    sh(["bash", "scripts/prepare_wmt14.sh", "--sample", "--out", out, "--vocab-size", "4000"], env_for(venv312))
    return out


def train_2(env, prep, save):
    return sh(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prep / "bin", "--save-dir", save,
               "--max-update", "2", "--", *SMALL], env)


@pytest.mark.slow
def test_py312_setup_prepare_train_generate(venv312, prep312, tmp_path):
    env = env_for(venv312)
    info = json.loads(sh([venv312 / "bin/python", "-W", "ignore", "-c",
                          "import json, sys, torch, fairseq, fairseq_sparsemixer, numpy; print(json.dumps("
                          "[sys.version_info[:2], torch.__version__, fairseq.__file__, numpy.__version__]))"],
                         env, cwd=tmp_path).stdout)
    assert info[0] == [3, 12] and info[1].startswith("2.13.0") and info[3] == "1.26.4", info
    assert info[2].startswith(str(venv312)), info  # ve-fairseq's cp312 wheel, in the venv
    assert (prep312 / "bin" / "train.en-de.en.bin").is_file()
    save = tmp_path / "ckpt"
    p = train_2(env, prep312, save)
    assert "num_updates" in p.stdout + p.stderr and (save / "checkpoint_last.pt").is_file()
    sh(["bash", "scripts/evaluate_wmt14.sh", "--save-dir", save, "--prep-dir", prep312, "--checkpoint",
        "checkpoint_last.pt", "--beam", "1", "--", "--max-len-a", "0", "--max-len-b", "4"], env)
    res = json.loads((save / "eval_test.json").read_text())
    assert res["sentences"] == 1000 and 0 <= res["sacrebleu"] <= 100


# ---------------------------------------------------------------- a GPU machine's install, on CPU

CLOSURE = r"""
import importlib.metadata as md, json, re, sys
from packaging.requirements import Requirement
# argv: "names" or "tops", then the roots; "-name" skips a distribution
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
what, roots = sys.argv[1], [norm(a) for a in sys.argv[2:] if not a.startswith("-")]
skip = {norm(a[1:]) for a in sys.argv[2:] if a.startswith("-")}
seen, todo = {}, list(roots)
while todo:
    n = norm(todo.pop())
    if n in seen or n in skip:
        continue
    seen[n] = d = md.distribution(n)
    for r in d.requires or []:
        r = Requirement(r)
        if not r.marker or r.marker.evaluate({"extra": ""}):
            todo.append(r.name)
tops = {f.parts[0] for d in seen.values() for f in d.files or []}
tops = sorted(t for t in tops if t not in ("..", "__pycache__") and not t.endswith(".pth"))
print(json.dumps(sorted(seen) if what == "names" else tops))
"""


def closure(venv, what, *roots):
    """The distributions (what="names") or site-packages entries ("tops") of roots and their requirements."""
    return json.loads(sh([venv / "bin/python", "-c", CLOSURE, what, *roots], env_for(venv)).stdout)


@pytest.fixture(scope="module")
def fake_system(venv312, tmp_path_factory):
    """A PYTHONUSERBASE whose site-packages hold (links to) the 3.12 venv's torch and what torch
    needs, nothing else: what a venv made with --system-site-packages sees on a GPU machine."""
    base = tmp_path_factory.mktemp("system")
    site = base / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    src = Path(sh([venv312 / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                  env_for(venv312)).stdout.strip())
    for top in closure(venv312, "tops", "torch"):
        (site / top).symlink_to(src / top)
    assert (site / "torch").exists() and not (site / "numpy").exists() and not (site / "fairseq").exists()
    return base


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    p = run(["bash", "scripts/gpu_wheels.sh", out])
    assert "wheels" in p.stdout
    return out


def dist_name(wheel):
    return re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()


@pytest.mark.slow
def test_gpu_wheels_are_fairseqs_needs_for_cp312(wheels, venv312):
    whl = sorted(wheels.glob("*.whl"))
    names = {dist_name(w) for w in whl}
    for w in whl:  # CPython 3.12 or pure, Linux x86_64 or any
        py, abi, plat = w.name[:-4].split("-")[-3:]
        stable = abi == "abi3" and re.fullmatch(r"cp3(\d+)", py) and int(py[3:]) <= 12  # e.g. cp310-abi3
        assert ("cp312" in py and abi == "cp312") or (py.startswith("py") and abi == "none") or stable, w.name
        assert plat == "any" or "x86_64" in plat, w.name
    assert "ve-fairseq" in names and "antlr4-python3-runtime" in names and "hydra-core" in names
    assert not {n for n in names if re.match(r"(torch|triton|nvidia-|cuda-)", n)}, names
    # exactly what base.txt and ve-fairseq need (the closure in the tested 3.12 venv), torch's stack aside
    base = [line.split("==")[0] for line in (ROOT / "requirements/base.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    need = closure(venv312, "names", "ve-fairseq", *base, "-torch", "-torchaudio")
    assert names == set(need), (names ^ set(need))


@pytest.mark.slow
def test_offline_setup_uses_the_system_torch_and_the_carried_wheels(wheels, fake_system, prep312, tmp_path):
    py312 = need_python("3.12")
    venv = tmp_path / "gpu-venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL")}
    # no pip configuration, no index that answers: what is installed comes from the wheel folder
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PYTHONUSERBASE=str(fake_system),
               PYTHON=py312, VENV=str(venv))
    p = sh(SETUP + ["--offline", wheels], env)
    assert f"from {fake_system}" in p.stdout, p.stdout  # the "system" torch, kept
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert not list(venv.glob("lib/python3.12/site-packages/torch")) and not list(venv.glob("lib/*/site-packages/nvidia"))
    run_env = env_for(venv, PYTHONUSERBASE=str(fake_system))
    info = json.loads(sh([venv / "bin/python", "-W", "ignore", "-c",
                          "import json, torch, fairseq, fairseq_sparsemixer, numpy; print(json.dumps("
                          "[torch.__file__, fairseq.__file__, fairseq_sparsemixer.__file__, numpy.__version__]))"],
                         run_env, cwd=tmp_path).stdout)
    assert info[0].startswith(str(fake_system)) and info[1].startswith(str(venv)), info
    assert info[2].startswith(str(ROOT)) and info[3] == "1.26.4", info
    save = tmp_path / "ckpt"
    p = train_2(run_env, prep312, save)
    assert (save / "checkpoint_last.pt").is_file()
    # the rerun is a no-op
    assert "is up to date" in sh(SETUP + ["--offline", wheels], env).stdout


# ---------------------------------------------------------------- docs: nothing outside the repository

# scripts/gpu_check.sh's header is being rewritten elsewhere; it joins this list when it no longer
# points outside the repository
NOT_YET = set()


def test_docs_and_scripts_point_only_inside_the_repository():
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("scripts/*.sh"), *ROOT.glob("scripts/*.py")]
    bad = [str(f.relative_to(ROOT)) for f in files
           if str(f.relative_to(ROOT)) not in NOT_YET and "../shared" in f.read_text()]
    assert not bad, f"these send the reader to a file outside the repository: {bad}"
    readme = (ROOT / "README.md").read_text()
    for path in sorted(set(re.findall(r"`(?:bash )?((?:scripts|docs|requirements)/[\w./-]+\.(?:sh|md|txt|py))", readme))):
        assert (ROOT / path).is_file(), f"README names {path}, which the repository does not have"
