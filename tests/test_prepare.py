"""scripts/prepare_wmt14.sh: resumable, atomic, checks its inputs; the download path against a
local file server on 127.0.0.1 (archives in the statmt.org layout)."""
import filecmp
import hashlib
import http.server
import os
import signal
import subprocess
import tarfile
import threading
import time

import pytest

from conftest import BIN, ROOT, run

SAMPLE = ROOT / "data" / "ende-libreoffice"


def lines(path, n=None, start=0):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()[start:None if n is None else start + n]


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def sgm(path, rows):
    write(path, ['<srcset setid="newstest2014" srclang="any">', '<doc docid="x" origlang="en">']
          + [f'<seg id="{i + 1}">{r.replace("&", "&amp;").replace("<", "&lt;")}</seg>' for i, r in enumerate(rows)]
          + ["</doc>", "</srcset>"])


def wmt_layout(root):
    """Small archives with the statmt.org names and inner paths, from the bundled sample."""
    files = {
        "training-parallel-europarl-v7.tgz": {"training/europarl-v7.de-en.": 0},
        "training-parallel-commoncrawl.tgz": {"commoncrawl.de-en.": 800},
        "training-parallel-nc-v9.tgz": {"training/news-commentary-v9.de-en.": 1600},
    }
    src = root / "src"
    for archive, members in files.items():
        for prefix, start in members.items():
            for lang in ("en", "de"):
                write(src / archive / (prefix + lang), lines(SAMPLE / f"train.{lang}", 800, start))
    for lang in ("en", "de"):
        write(src / "dev.tgz" / f"dev/newstest2013.{lang}", lines(SAMPLE / f"valid.{lang}", 200))
    sgm(src / "test-full.tgz" / "test-full/newstest2014-deen-src.en.sgm", lines(SAMPLE / "test.en", 300))
    sgm(src / "test-full.tgz" / "test-full/newstest2014-deen-ref.de.sgm", lines(SAMPLE / "test.de", 300))
    serve = root / "serve"
    paths = {"training-parallel-europarl-v7.tgz": "wmt13", "training-parallel-commoncrawl.tgz": "wmt13",
             "training-parallel-nc-v9.tgz": "wmt14", "dev.tgz": "wmt19/translation-task",
             "test-full.tgz": "wmt14"}
    sums = []
    for archive, sub in paths.items():
        out = serve / sub / archive
        out.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(out, "w:gz") as t:
            for f in sorted((src / archive).rglob("*")):
                if f.is_file():
                    t.add(f, arcname=str(f.relative_to(src / archive)))
        sums.append(f"sha256:{hashlib.sha256(out.read_bytes()).hexdigest()}  {archive}")
    write(root / "checksums.txt", sums)
    return serve, root / "checksums.txt"


@pytest.fixture
def server(tmp_path):
    serve, sums = wmt_layout(tmp_path)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(serve), **k)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.RequestHandlerClass.log_message = lambda *a: None
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", serve, sums
    httpd.shutdown()


def test_download_path_local_server(server, tmp_path):
    url, _, sums = server
    out = tmp_path / "wmt"
    run(["bash", "scripts/prepare_wmt14.sh", "--out", out, "--checksums", sums, "--vocab-size", "1000"],
        env={"WMT14_MIRROR": url})
    assert (out / "bin" / "train.en-de.de.bin").is_file()
    assert len(lines(out / "raw" / "test.de")) == 300 and len(lines(out / "raw" / "valid.en")) == 200
    assert lines(out / "raw" / "test.de")[:3] == [" ".join(r.split()) for r in lines(SAMPLE / "test.de", 3)]
    n = len(lines(out / "raw" / "train.en"))
    assert 2000 < n <= 2400  # 3 corpora x 800 pairs, cleaned and de-duplicated


def test_corrupted_archive_is_rejected(server, tmp_path):
    url, serve, sums = server
    bad = serve / "wmt14" / "training-parallel-nc-v9.tgz"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    out = tmp_path / "wmt"
    p = run(["bash", "scripts/prepare_wmt14.sh", "--out", out, "--checksums", sums, "--vocab-size", "1000"],
            env={"WMT14_MIRROR": url}, check=False)
    assert p.returncode != 0
    assert "training-parallel-nc-v9.tgz" in p.stderr and "does not match its checksum" in p.stderr
    dl = out / "download"
    assert not (dl / "training-parallel-nc-v9.tgz").exists() and not list(dl.glob("*.part"))
    assert not (out / ".done" / "download").exists() and not (out / "bin").exists()


def test_raw_dir_line_count_mismatch_names_file(tmp_path):
    raw = tmp_path / "raw"
    write(raw / "europarl-v7.de-en.en", ["a b", "c d", "e f"])
    write(raw / "europarl-v7.de-en.de", ["a b", "c d"])
    before = sorted(p.name for p in raw.iterdir())
    p = run(["bash", "scripts/prepare_wmt14.sh", "--raw-dir", raw, "--out", tmp_path / "o"], check=False)
    assert p.returncode != 0
    msg = p.stderr.strip().splitlines()[-1]
    assert "europarl-v7.de-en.en has 3 lines" in msg and "has 2" in msg
    assert sorted(p.name for p in raw.iterdir()) == before  # the user's raw files are untouched
    assert not (tmp_path / "o" / "bin").exists() and not (tmp_path / "o" / ".done" / "clean").exists()


def test_missing_raw_file_is_named(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    p = run(["bash", "scripts/prepare_wmt14.sh", "--raw-dir", raw, "--out", tmp_path / "o"], check=False)
    assert p.returncode != 0 and "europarl-v7.de-en.en not found below" in p.stderr


def test_interrupted_prepare_resumes_to_identical_outputs(prepared, tmp_path):
    """Kill prepare (SIGKILL, whole process group) in each step, rerun: the same outputs as the
    uninterrupted run of the `prepared` fixture, and no leftover temporary file."""
    out = tmp_path / "sample"
    cmd = ["bash", "scripts/prepare_wmt14.sh", "--sample", "--out", str(out), "--vocab-size", "4000"]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    # kill in the middle of each step: clean (its temp dir exists), then spm, encode, binarize
    for started in ("raw.tmp", ".done/clean", ".done/spm", ".done/encode"):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 300
        while not (out / started).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / ".done" / "binarize").exists()
    p = run(cmd)
    assert "step binarize done" in p.stdout
    for rel in ["spm.model", "raw/train.en", "raw/test.de", "spm_text/train.de", "bin/dict.en.txt",
                "bin/train.en-de.en.bin", "bin/train.en-de.de.idx", "bin/test.en-de.de.bin"]:
        assert filecmp.cmp(out / rel, prepared / rel, shallow=False), rel
    assert not list(out.rglob("*.tmp*")) and not (out / "bin.tmp").exists()
