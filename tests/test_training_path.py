"""The multi-GPU training path, checked on CPU: precision choice and --bf16 without TPU, tokens
per update on any number of GPUs, --log-file written once per record, the suite kept on CPU."""
import fcntl
import logging
import os
import pty
import re
import struct
import subprocess
import termios
import threading

import pytest

from conftest import BIN, ROOT, SMALL, json_log, json_out, run
from fairseq_sparsemixer.training.batching import split_batch

USER_DIR = str(ROOT / "fairseq_sparsemixer")


@pytest.mark.parametrize("world", range(1, 9))
def test_tokens_per_update_stay_the_papers(world):
    max_tokens, update_freq = split_batch(8192, 16, world)
    total = max_tokens * update_freq * world
    assert update_freq == -(-16 // world)
    assert 131072 - world * update_freq < total <= 131072  # as close as whole tokens allow
    if 16 % world == 0:
        assert (max_tokens, total) == (8192, 131072)


def test_batching_command_lines():
    """docs/multi_node.md's `python -m ...batching TOKENS TOTAL_BATCH W` and train_wmt14.sh's
    `batching.py --machine TOKENS TOTAL_BATCH` (GPUs, threads, tensorboardX, the batch; this suite
    hides the GPUs, so W = 1)."""
    p = run(["python", "-m", "fairseq_sparsemixer.training.batching", "8192", "16", "3"])
    assert p.stdout.split() == ["7281", "6"]
    p = run(["python", ROOT / "fairseq_sparsemixer/training/batching.py", "--machine", "8192", "16"],
            env={"OMP_NUM_THREADS": "1"})
    assert p.stdout.split() == ["0", "1", "1", "8192", "16"]


def test_more_gpus_than_the_batch_splits_the_tokens():
    assert split_batch(8192, 16, 32) == (4096, 1)
    with pytest.raises(ValueError):
        split_batch(8192, 16, 0)


@pytest.mark.parametrize("arch", [["--arch", "switch_transformer_tiny"], ["--arch", "transformer"]])
def test_bf16_flag_means_bf16_not_tpu(prepared, arch):
    """fairseq maps --bf16 to tpu=True; without torch_xla the plugin undoes it (for every arch)."""
    from fairseq import options

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(prepared / "bin"), "--user-dir", USER_DIR, *arch, "--bf16", "--cpu"])
    assert args.bf16 and not args.tpu


def test_precision_flag_of_the_train_script(prepared, tmp_path):
    save = tmp_path / "bf16b"
    run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir", save,
         "--max-update", "2", "--precision", "bf16", "--", *SMALL])
    cmd = (save / "command.txt").read_text()
    assert " --bf16 " in cmd and "--fp16" not in cmd and "# 2048 tokens per update at most" in cmd
    assert [r for r in json_log(save / "train.log") if r.get("num_updates") == "2"]  # it trained
    for value, needle in (("fp16", "--precision fp16 needs a GPU"), ("fp8", "--precision must be fp16, bf16 or fp32")):
        p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin",
                 "--save-dir", tmp_path / value, "--precision", value], check=False)
        assert p.returncode != 0 and needle in p.stderr.strip().splitlines()[-1]
        assert not (tmp_path / value).exists()


def test_log_file_has_each_record_once(prepared, tmp_path):
    """3 epochs of the (small) test split: fairseq would write epoch k's records k times."""
    save = tmp_path / "epochs"
    run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir", save,
         "--", *SMALL, "--train-subset", "test", "--max-epoch", "3", "--no-save", "--max-tokens", "4096"])
    recs = json_log(save / "train.log")
    epochs = [r for r in recs if "train_loss" in r]
    valid = [r["valid_num_updates"] for r in recs if "valid_loss" in r]
    inner = [r["num_updates"] for r in recs if "num_updates" in r and "loss" in r]
    assert len(epochs) == 3 and len(valid) == 3
    assert len(set(valid)) == len(valid) and len(set(inner)) == len(inner) > 3


def test_suite_subprocesses_see_no_gpu():
    p = run(["python", "-c", "import torch; print(torch.cuda.device_count())"])
    assert p.stdout.strip() == "0"


def test_console_shows_least_loaded_expert_and_file_keeps_every_load(prepared, tmp_path):
    from fairseq_sparsemixer.training.progress_log import condense_loads

    assert condense_loads({"loss": "1", "load_enc0_e0": "0.7", "load_enc0_e1": "0.3", "valid_load_dec2_e0": "0.2",
                           "valid_load_dec2_e1": "0.8", "ppl": "2"}) == {
        "loss": "1", "load_min_enc0": "0.3", "valid_load_min_dec2": "0.2", "ppl": "2"}
    save = tmp_path / "console"
    p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir", save,
             "--max-update", "2", "--", *SMALL, "--no-save"])
    console = [r for r in json_out(p.stdout) if "num_updates" in r and "loss" in r]
    logged = [r for r in json_log(save / "train.log") if "num_updates" in r and "loss" in r]
    assert console and logged and len(console) == len(logged)
    assert {k for k in console[0] if "load" in k} == {"load_min_enc0", "load_min_enc2", "load_min_dec0", "load_min_dec2"}
    assert {f"load_{layer}_e{e}" for layer in ("enc0", "enc2", "dec0", "dec2") for e in range(4)} <= set(logged[0])
    assert float(console[0]["load_min_enc0"]) == min(float(logged[0][f"load_enc0_e{e}"]) for e in range(4))



@pytest.mark.parametrize("precision", [["--fp16", "--fp16-no-flatten-grads"], ["--bf16"]])
def test_default_moe_ema_is_float32_in_half_precision_training(prepared, tmp_path, precision):
    """fairseq-train --fp16 / --bf16 cast the whole model, buffers included (on CPU here; fp16
    without flattened grads, whose flat master copy is CUDA-only), and fairseq saves every tensor
    as float32: an EMA kept in half precision shows as values that all round-trip through it."""
    import torch

    save = tmp_path / "dm"
    run(["fairseq-train", prepared / "bin", "--user-dir", USER_DIR, "--arch", "switch_transformer_tiny", *SMALL,
         "--moe-router", "default-moe", "--share-all-embeddings", "--criterion", "moe_label_smoothed_cross_entropy",
         "--optimizer", "adam", "--lr", "1e-3", "--max-update", "2", "--cpu", "--save-dir", save,
         "--no-epoch-checkpoints", *precision])
    half = torch.float16 if precision[0] == "--fp16" else torch.bfloat16
    model = torch.load(save / "checkpoint_last.pt", weights_only=False)["model"]
    w = model["encoder.layers.0.fc1.experts.0.fc1.weight"]
    assert torch.equal(w.to(half).float(), w)  # the weights were half
    ema = {k: v for k, v in model.items() if k.endswith("router.defaults")}
    assert len(ema) == 4
    for k, v in ema.items():
        assert v.dtype == torch.float32 and torch.isfinite(v).all() and v.abs().max() > 0, k
        assert not torch.equal(v.to(half).float(), v), k  # computed in float32


LOADS = [f"load_{layer}_e{e}" for layer in ("enc0", "enc2", "dec0", "dec2") for e in range(4)]
MINS = [f"load_min_{layer}" for layer in ("enc0", "enc2", "dec0", "dec2")]


def test_console_condensed_in_simple_format_with_the_quickstarts_flags(prepared, tmp_path):
    """scripts/quickstart.sh trains with --log-format simple: the console's `k=v, ...` lines and
    its end-of-epoch/validation `k v | ...` lines show load_min_<layer>; --log-file keeps all."""
    save = tmp_path / "quick"
    p = run(["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir", save,
             "--max-update", "2", "--", *SMALL, "--log-format", "simple", "--log-interval", "1",
             "--no-epoch-checkpoints"])
    logged = (save / "train.log").read_text()
    for text, want, absent in ((p.stdout, MINS, LOADS), (logged, LOADS, MINS)):
        inner = [x for x in text.splitlines() if re.search(r"\d+ / \d+ loss=", x)]
        valid = [x for x in text.splitlines() if "valid on 'valid' subset" in x]
        assert len(inner) == 2 and len(valid) == 1, text[-2000:]
        for x, eq in [(inner[-1], "="), (valid[0], " ")]:
            assert all(f"{k}{eq}" in x for k in want) and not any(f"{k}{eq}" in x for k in absent), x
    from fairseq_sparsemixer.training.progress_log import condense_line

    line = "epoch 001:      2 / 33 loss=1, load_enc0_e0=0.7, load_enc0_e1=0.3, valid_load_dec2_e0=0.2, ppl=2"
    assert condense_line(line) == "epoch 001:      2 / 33 loss=1, load_min_enc0=0.3, valid_load_min_dec2=0.2, ppl=2"
    line = "epoch 001 | valid on 'valid' subset | loss 1 | load_enc0_e0 0.7 | load_enc0_e1 0.3 | wps 5"
    assert condense_line(line) == "epoch 001 | valid on 'valid' subset | loss 1 | load_min_enc0 0.3 | wps 5"


def test_console_condensed_and_hydra_log_file_whole(prepared, tmp_path):
    """fairseq-hydra-train (no --log-file: hydra_train.log is the run's only log, written by the
    root handler after the console's): the console is condensed, the file keeps every load, and
    expert_usage reads them from it."""
    out = tmp_path / "hydra_out"
    p = run(["fairseq-hydra-train", "--config-dir", ROOT / "configs", "--config-name", "tiny_cpu",
             f"task.data={prepared / 'bin'}", f"checkpoint.save_dir={tmp_path / 'save'}",
             f"common.user_dir={USER_DIR}", f"hydra.run.dir={out}", "optimization.max_update=2",
             "common.log_format=json", "common.log_interval=1", "checkpoint.no_save=true",
             "dataset.max_tokens=1024"])
    console = [r for r in json_out(p.stdout) if "num_updates" in r and "loss" in r]
    logged = [r for r in json_log(out / "hydra_train.log") if "num_updates" in r and "loss" in r]
    assert len(console) == len(logged) == 2
    assert set(MINS) <= set(console[0]) and not set(LOADS) & set(console[0])
    assert set(LOADS) <= set(logged[0]) and not set(MINS) & set(logged[0])
    h = run(["python", "-m", "fairseq_sparsemixer.diagnostics.expert_usage", out / "hydra_train.log",
             "--out", tmp_path / "load.png"])
    assert (tmp_path / "load.png").is_file(), h.stdout + h.stderr


def test_console_condensed_in_tqdms_bar(prepared, tmp_path):
    """With a terminal on stderr fairseq draws tqdm's bar, whose postfix shows every logged field."""
    save = tmp_path / "tqdm"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 5000, 0, 0))  # wide: no truncated postfix
    cmd = ["bash", "scripts/train_wmt14.sh", "--recipe", "cpu-tiny", "--data", prepared / "bin", "--save-dir", save,
           "--max-update", "3", "--", *[a for a in SMALL if a != "--no-progress-bar"], "--log-format", "tqdm",
           "--no-save"]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave,
                            stdin=subprocess.DEVNULL, text=True)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=900)
    reader.join(timeout=60)
    os.close(master)
    bar = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, bar[-2000:]
    assert "load_min_enc0=" in bar and "loss=" in bar, bar[-2000:]
    assert not any(f"{k}=" in bar for k in LOADS), bar[-2000:]
    # tqdm's per-update fields reach no log file (fairseq's choice); its validation line, in
    # `k v | ...` form, is condensed on the console and whole in --log-file
    for text, want, absent in ((out, MINS, LOADS), ((save / "train.log").read_text(), LOADS, MINS)):
        (valid,) = [x for x in text.splitlines() if "valid on 'valid' subset" in x]
        assert all(f"| {k} " in valid for k in want) and not any(f"| {k} " in valid for k in absent), valid


def test_log_file_deleted_and_recreated_gets_the_records(tmp_path):
    """fairseq adds a --log-file handler per progress bar and the plugin keeps one per file: the
    newest, so that a log file deleted (and recreated) meanwhile is written, not the deleted one."""
    import fairseq_sparsemixer  # noqa: F401  (installs the wrapper)
    from fairseq.logging import progress_bar as pb

    log = tmp_path / "train.log"
    before = list(pb.logger.handlers)
    level = pb.logger.level
    pb.logger.setLevel(logging.INFO)
    try:
        pb.progress_bar([1], log_format="none", log_file=str(log))
        pb.logger.info("first record")
        log.unlink()
        log.write_text("")  # recreated, e.g. by a user's log rotation
        pb.progress_bar([1], log_format="none", log_file=str(log))
        pb.progress_bar([1], log_format="none", log_file=str(log))
        pb.logger.info("second record")
        files = [h for h in pb.logger.handlers if isinstance(h, logging.FileHandler)]
        assert len(files) == 1
        files[0].flush()
        assert log.read_text().splitlines() == ["second record"]
    finally:
        for h in list(pb.logger.handlers):
            if h not in before:
                pb.logger.removeHandler(h)
                h.close()
        pb.logger.setLevel(level)
