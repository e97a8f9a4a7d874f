"""The multi-GPU training path, checked on CPU: precision choice and --bf16 without TPU, tokens
per update on any number of GPUs, --log-file written once per record, the suite kept on CPU."""
import pytest

from conftest import ROOT, SMALL, json_log, json_out, run
from fairseq_sparsemixer.batching import split_batch

USER_DIR = str(ROOT / "fairseq_sparsemixer")


@pytest.mark.parametrize("world", range(1, 9))
def test_tokens_per_update_stay_the_papers(world):
    max_tokens, update_freq = split_batch(8192, 16, world)
    total = max_tokens * update_freq * world
    assert update_freq == -(-16 // world)
    assert 131072 - world * update_freq < total <= 131072  # as close as whole tokens allow
    if 16 % world == 0:
        assert (max_tokens, total) == (8192, 131072)


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
    from fairseq_sparsemixer.progress_log import condense_loads

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

