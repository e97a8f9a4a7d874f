"""The plugin through fairseq's real CLI on the bundled sample: preprocess -> train -> checkpoint ->
generate -> sacreBLEU; hydra; resume; incremental decoding; bad flags; parameter counts."""
import json
import re

import pytest
import torch

from conftest import ROOT, SMALL, json_log, losses, run, train

USER_DIR = str(ROOT / "fairseq_sparsemixer")


def test_prepare_outputs_and_rerun_does_no_work(prepared):
    for s in ("train", "valid", "test"):
        assert (prepared / "bin" / f"{s}.en-de.en.bin").is_file()
    n = sum(1 for _ in open(prepared / "raw" / "test.de"))
    assert n == 1000  # references are never filtered
    p = run(["bash", "scripts/prepare_wmt14.sh", "--sample", "--out", prepared, "--vocab-size", "4000"])
    assert "step" not in p.stdout and "ready" in p.stdout


def test_train_generate_bleu(trained, prepared):
    assert (trained / "checkpoint_last.pt").is_file() and (trained / "command.txt").is_file()
    recs = json_log(trained / "train.log")
    inner = [r for r in recs if "train_moe_balance" in r or "moe_balance" in r]
    assert inner, "the MoE metrics are logged"
    keys = set().union(*inner)
    for k in ("moe_balance", "moe_entropy", "moe_non_argmax", "moe_one_kept", "load_enc0_e0", "load_dec0_e3"):
        assert any(k in key for key in keys), k
    # evaluate: average the last 2 checkpoints, translate every test line, sacreBLEU + tok BLEU
    run(["bash", "scripts/evaluate_wmt14.sh", "--save-dir", trained, "--prep-dir", prepared,
         "--average", "2", "--beam", "2", "--", "--max-len-a", "0", "--max-len-b", "6"])
    res = json.loads((trained / "eval_test.json").read_text())
    assert res["sentences"] == 1000
    assert res["sacrebleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert 0 <= res["sacrebleu"] <= 100 and res["checkpoint"] == "averaged_last2.pt"
    assert res["num_updates"] == 6  # the average's state is the newest checkpoint's, as fairseq's script keeps it
    hyps = (trained / "hyp_test.de").read_text().splitlines()
    assert len(hyps) == 1000 and not any("▁" in h for h in hyps)  # sentencepiece decoded


def test_evaluate_detects_missing_hypotheses(trained, prepared):
    # --max-tokens so small that fairseq skips the longest test sentences
    p = run(["bash", "scripts/evaluate_wmt14.sh", "--save-dir", trained, "--prep-dir", prepared,
             "--beam", "1", "--", "--max-len-a", "0", "--max-len-b", "2", "--max-source-positions", "8",
             "--skip-invalid-size-inputs-valid-test"], check=False)
    assert p.returncode != 0 and "hypotheses for 1000 references" in p.stderr


def test_resume_matches_uninterrupted_run(prepared, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(prepared, full, updates="6")
    train(prepared, part, updates="3")
    p = train(prepared, part, updates="6")
    assert "Loaded checkpoint" in p.stdout + p.stderr
    last, resumed = losses(full), losses(part)
    for u in ("5", "6"):
        assert resumed[u] == last[u], (u, resumed, last)


def test_hydra_train_gives_same_model(prepared, tmp_path):
    save = tmp_path / "hydra"
    run(["fairseq-hydra-train", "--config-dir", ROOT / "configs", "--config-name", "tiny_cpu",
         f"task.data={prepared / 'bin'}", f"checkpoint.save_dir={save}", f"common.user_dir={USER_DIR}",
         f"hydra.run.dir={tmp_path / 'hydra_out'}", "optimization.max_update=2",
         "model.moe_experts=3", "model.moe_router=switch", "model.moe_freq=1"])
    argp = tmp_path / "argparse"
    train(prepared, argp, "--moe-freq", "1", router="switch", experts="3", updates="2", small=False)
    a = torch.load(save / "checkpoint_last.pt", weights_only=False)
    b = torch.load(argp / "checkpoint_last.pt", weights_only=False)
    for ck in (a, b):
        m = ck["cfg"]["model"]
        m = m if isinstance(m, dict) else vars(m)
        assert (m["moe_experts"], m["moe_router"], m["moe_freq"], m["moe_jitter_eps"]) == (3, "switch", 1, 0.1)
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes(a["model"]) == shapes(b["model"])  # tiny_cpu.yaml == --recipe cpu-tiny
    assert sum(k.endswith("experts.2.fc1.weight") for k in a["model"]) == 6


@pytest.mark.parametrize("flags,needle", [
    (["--moe-router", "nope"], "--moe-router 'nope'"),
    (["--moe-experts", "0"], "--moe-experts 0"),
    (["--moe-experts", "-2"], "--moe-experts -2"),
    (["--moe-top-k", "5"], "--moe-top-k 5"),
    (["--moe-top-k", "2"], "--moe-top-k 2"),  # sparsemixer is top-1 only
    (["--moe-jitter-eps", "-0.1"], "--moe-jitter-eps -0.1"),
    (["--moe-freq", "0"], "--moe-freq 0"),
    (["--moe-capacity-factor", "-1"], "--moe-capacity-factor -1"),
    (["--moe-min-kept", "5"], "--moe-min-kept 5 is invalid; allowed: 1..4"),
    (["--moe-balance-probs", "dense"], "--moe-balance-probs 'dense' is invalid"),
    (["--moe-router", "switch", "--moe-min-kept", "2"], "do not apply to --moe-router switch"),
    # they act on the mask: with --moe-no-mask they would be accepted and do nothing
    (["--moe-no-mask", "--moe-min-kept", "2"], "--moe-min-kept and --moe-balance-probs full act on the mask"),
    (["--moe-no-mask", "--moe-balance-probs", "full"], "--moe-min-kept and --moe-balance-probs full act on"),
    (["--moe-router", "default-moe", "--moe-no-gate-scaling"], "--moe-no-gate-scaling does not apply to --moe-router default-moe"),
    (["--moe-expert-impl", "fast"], "--moe-expert-impl 'fast' is invalid; valid: auto, loop, grouped"),
    (["--moe-expert-impl", "grouped", "--moe-capacity-factor", "1"], "--moe-expert-impl grouped is dropless only"),
    # fairseq's activation checkpointing would silently drop the aux losses' gradient
    (["--checkpoint-activations"], "--checkpoint-activations/--offload-activations are not supported"),
    (["--offload-activations"], "--checkpoint-activations/--offload-activations are not supported"),
])
def test_bad_flags_one_line_nothing_written(prepared, tmp_path, flags, needle):
    save = tmp_path / "save"
    p = run(["fairseq-train", prepared / "bin", "--user-dir", USER_DIR, "--arch", "switch_transformer_tiny",
             "--save-dir", save, "--cpu", *flags], check=False)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("switch_transformer: error:") and needle in last, p.stderr[-500:]
    assert "Traceback" not in p.stderr and not save.exists()


def test_help_says_where_min_kept_applies():
    """The flags' help, as argparse prints it for the model's arguments (fairseq-train --help
    prints its own before it adds an architecture's)."""
    import argparse

    from fairseq_sparsemixer.models.switch_transformer import SwitchTransformerModel

    parser = argparse.ArgumentParser()
    SwitchTransformerModel.add_args(parser)
    text = " ".join(parser.format_help().split())
    assert "it applies to both stages (the second keeps the K best remaining experts" in text
    assert "refused with --moe-no-mask" in text


def test_unknown_arch_fails_cleanly(prepared, tmp_path):
    p = run(["bash", "scripts/train_wmt14.sh", "--data", prepared / "bin", "--save-dir", tmp_path / "s",
             "--arch", "switch_transformer_nope"], check=False)
    assert p.returncode != 0 and "invalid choice" in p.stderr and not (tmp_path / "s").exists()


def _build(prepared, arch_args):
    from fairseq import options, tasks

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(prepared / "bin"), "--user-dir", USER_DIR,
                                                "--share-all-embeddings", *arch_args])
    task = tasks.setup_task(args)
    return task, task.build_model(args)


def test_dense_and_switch_equal_non_ffn_params(prepared):
    _, dense = _build(prepared, ["--arch", "transformer_wmt_en_de"])
    _, moe = _build(prepared, ["--arch", "switch_transformer_wmt_en_de", "--moe-experts", "4"])
    ffn = re.compile(r"\.(fc1|fc2)\.")
    count = lambda m: sum(p.numel() for n, p in m.named_parameters() if not ffn.search(n))
    assert count(dense) == count(moe) > 0
    # dense layers of the MoE model are fairseq's own, with no router parameters
    names = [n for n, _ in moe.named_parameters()]
    assert any(n.startswith("encoder.layers.0.fc1.router") for n in names)
    assert not any(n.startswith("encoder.layers.1.fc1.router") for n in names)
    assert sum(".experts." in n for n in names) == 6 * 4 * 4  # 6 MoE layers x 4 experts x (w, b) x 2


def test_incremental_decoding_equals_full_forward(trained, prepared):
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(trained / "checkpoint_last.pt")], arg_overrides={"data": str(prepared / "bin")})
    model = models[0].eval()
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(4)])
    with torch.no_grad():
        enc = model.encoder(batch["net_input"]["src_tokens"], src_lengths=batch["net_input"]["src_lengths"])
        prev = batch["net_input"]["prev_output_tokens"]
        full, _ = model.decoder(prev, encoder_out=enc)
        state, steps = {}, []
        for t in range(prev.size(1)):
            out, _ = model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)
            steps.append(out)
        inc = torch.cat(steps, 1)
    mask = prev.ne(task.target_dictionary.pad())
    torch.testing.assert_close(inc[mask], full[mask], atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # inference is deterministic
        again, _ = model.decoder(prev, encoder_out=model.encoder(
            batch["net_input"]["src_tokens"], src_lengths=batch["net_input"]["src_lengths"]))
    assert torch.equal(again, full)


def test_checkpoint_without_expert_impl_loads_and_grouped_gemm_gives_the_same_model(trained, prepared, tmp_path):
    """A checkpoint from before --moe-expert-impl (no such key in its args) loads, and the same
    weights run through the grouped GEMM give the loop's outputs (same state-dict keys)."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(trained / "checkpoint_last.pt"))
    delattr(state["cfg"]["model"], "moe_expert_impl")  # the model's args are a Namespace
    old = tmp_path / "old.pt"
    torch.save(state, old)
    outs = {}
    for impl in ("loop", "grouped"):
        models, _, task = checkpoint_utils.load_model_ensemble_and_task(
            [str(old)], arg_overrides={"data": str(prepared / "bin"), "moe_expert_impl": impl})
        model = models[0].eval()
        task.load_dataset("valid")
        ds = task.dataset("valid")
        batch = ds.collater([ds[i] for i in range(4)])
        with torch.no_grad():
            outs[impl] = model(**batch["net_input"])[0]
        assert {m.last_impl for m in model.modules() if hasattr(m, "last_impl")} == {impl}
    torch.testing.assert_close(outs["grouped"], outs["loop"])


def test_hub_loading_translates(trained, prepared):
    from fairseq_sparsemixer.models.switch_transformer import SwitchTransformerModel

    hub = SwitchTransformerModel.from_pretrained(
        str(trained), checkpoint_file="checkpoint_last.pt", data_name_or_path=str(prepared / "bin"),
        bpe="sentencepiece", sentencepiece_model=str(prepared / "spm.model"), beam=1, max_len_b=5)
    out = hub.translate("Click the OK button.")
    assert isinstance(out, str)


def test_criterion_works_without_moe_model(prepared, tmp_path):
    save = tmp_path / "dense"
    run(["fairseq-train", prepared / "bin", "--user-dir", USER_DIR, "--arch", "transformer", *SMALL,
         "--encoder-layers", "1", "--decoder-layers", "1", "--criterion", "moe_label_smoothed_cross_entropy",
         "--optimizer", "adam", "--lr", "1e-3", "--max-update", "2", "--save-dir", save, "--cpu",
         "--share-all-embeddings"])
    assert (save / "checkpoint_last.pt").is_file()


def test_tiny_model_under_low_precision_autocast_keeps_router_fp32(prepared):
    """The tiny model trained a step under CPU bf16 autocast (what fp16/bf16 training does to the
    matmuls): router logits, gates and aux losses stay float32 and finite."""
    from fairseq_sparsemixer.modules import moe_layers

    task, model = _build(prepared, ["--arch", "switch_transformer_tiny"])
    task.load_dataset("valid")
    ds = task.dataset("valid")
    batch = ds.collater([ds[i] for i in range(8)])
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(**batch["net_input"])
    assert out.dtype == torch.bfloat16
    loss = out.float().logsumexp(-1).mean()
    for m in moe_layers(model):
        r = m.last
        assert r.gate.dtype == r.probs.dtype == r.balance_loss.dtype == torch.float32
        loss = loss + r.balance_loss + r.z_loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(m.router.proj.weight.grad).all() for m in moe_layers(model))


# the authors' run script (microsoft/SparseMixer example/run_moe.sh) as fairseq flags -> hydra keys
AUTHORS = {"--attention-dropout": ("model.attention_dropout", 0.1),
           "--activation-dropout": ("model.activation_dropout", 0.1), "--dropout": ("model.dropout", 0.1),
           "--moe-router-bias": ("model.moe_router_bias", True), "--moe-jitter-eps": ("model.moe_jitter_eps", 0.1),
           "--moe-balance-reduction": ("criterion.moe_balance_reduction", "batch-sum"),
           "--moe-balance-weight": ("criterion.moe_balance_weight", 0.01),
           "--label-smoothing": ("criterion.label_smoothing", 0.1), "--lr": ("optimization.lr", [0.0007]),
           "--warmup-updates": ("lr_scheduler.warmup_updates", 8000),
           "--warmup-init-lr": ("lr_scheduler.warmup_init_lr", 1e-07), "--clip-norm": ("optimization.clip_norm", 0.0),
           "--ddp-backend": ("distributed_training.ddp_backend", "legacy_ddp"),
           "--skip-invalid-size-inputs-valid-test": ("dataset.skip_invalid_size_inputs_valid_test", True),
           "--save-interval": ("checkpoint.save_interval", 10), "--num-workers": ("dataset.num_workers", 8),
           "--best-checkpoint-metric": ("checkpoint.best_checkpoint_metric", "loss"),
           "--log-interval": ("common.log_interval", 100)}


def test_authors_recipe_script_and_hydra_config_agree(prepared, tmp_path):
    """--recipe authors sets every flag of the authors' run script (checked through a real
    1-update run on the tiny dims: the router has its bias, the criterion sums the balance loss)
    and configs/wmt14_authors.yaml sets the same values."""
    from omegaconf import OmegaConf

    save = tmp_path / "authors"
    run(["bash", "scripts/train_wmt14.sh", "--recipe", "authors", "--data", prepared / "bin", "--save-dir", save,
         "--arch", "switch_transformer_tiny", "--max-update", "1", "--", "--max-tokens", "512", "--update-freq", "1"])
    cmd = (save / "command.txt").read_text().split()
    ck = torch.load(save / "checkpoint_last.pt", weights_only=False)
    assert any(k.endswith("router.proj.bias") for k in ck["model"])
    assert ck["cfg"]["criterion"]["moe_balance_reduction"] == "batch-sum"
    assert "--max-update" in cmd and cmd[cmd.index("--max-update") + 1] == "1"
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs" / "wmt14_common.yaml"),
                          OmegaConf.load(ROOT / "configs" / "wmt14_authors.yaml"))
    for flag, (key, value) in AUTHORS.items():
        assert flag in cmd, flag
        if not isinstance(value, bool):
            want, got = value[0] if isinstance(value, list) else value, cmd[cmd.index(flag) + 1]
            assert type(want)(got) == want, flag
        assert OmegaConf.select(cfg, key) == value, key
    assert OmegaConf.select(cfg, "optimization.max_update") == 400000 and cfg.common.fp16
    assert (cfg.common.fp16_init_scale, cfg.common.fp16_scale_window) == (4, 256)


def test_compile_router_flag_trains_the_same_model(prepared):
    """--moe-compile-router reaches every MoE layer, and a training step of the real model and
    criterion (dropout on: the random stream must stay in step through the whole model) gives
    the eager model's loss, logged router statistics and gradients, to float rounding."""
    from fairseq import options, tasks

    from fairseq_sparsemixer.modules.moe_layer import MoEFeedForward

    res = []
    for flags in ([], ["--moe-compile-router"]):
        args = options.parse_args_and_arch(options.get_training_parser(), [
            str(prepared / "bin"), "--user-dir", USER_DIR, "--share-all-embeddings", "--arch",
            "switch_transformer_tiny", "--dropout", "0.1", "--criterion", "moe_label_smoothed_cross_entropy",
            *flags])
        task = tasks.setup_task(args)
        torch.manual_seed(0)
        model, crit = task.build_model(args), task.build_criterion(args)
        layers = [m for m in model.modules() if isinstance(m, MoEFeedForward)]
        assert layers and {m.compile_router for m in layers} == {bool(flags)}
        task.load_dataset("valid")
        ds = task.dataset("valid")
        sample = ds.collater([ds[i] for i in range(8)])
        model.train()
        torch.manual_seed(1)
        loss, _, log = crit(model, sample)
        loss.backward()
        res.append((loss, log, {k: p.grad for k, p in model.named_parameters() if p.grad is not None}))
    (l0, log0, g0), (l1, log1, g1) = res
    torch.testing.assert_close(l1, l0)
    assert log0.keys() == log1.keys() and any("moe" in k for k in log0)
    for k in log0:
        assert log1[k] == pytest.approx(log0[k], rel=1e-4, abs=1e-6), k
    assert g0.keys() == g1.keys()
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6, msg=k)
