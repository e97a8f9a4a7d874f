"""The criterion against its definitions on a fixed batch: both balance-loss reductions, the
z-loss, the logged values, the layer names under wrappers, and its host syncs."""
import json

import pytest
import torch

from conftest import ROOT
from fairseq_sparsemixer.diagnostics.host_syncs import HostSyncs

USER_DIR = str(ROOT / "fairseq_sparsemixer")


def _setup(prepared, *arch_args, sentences=8):
    """(task, model, a batch of the valid set) for `--arch ...` arguments (default the tiny MoE)."""
    from fairseq import options, tasks

    if "--arch" not in arch_args:
        arch_args = ("--arch", "switch_transformer_tiny", *arch_args)
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(prepared / "bin"), "--user-dir", USER_DIR, "--share-all-embeddings", *arch_args])
    task = tasks.setup_task(args)
    torch.manual_seed(0)
    model = task.build_model(args)
    task.load_dataset("valid")
    ds = task.dataset("valid")
    return task, model, ds.collater([ds[i] for i in range(sentences)])


def _criterion(task, **kw):
    from fairseq_sparsemixer.criterions.moe_label_smoothed_cross_entropy import \
        MoELabelSmoothedCrossEntropyCriterion as C

    return C(task, sentence_avg=False, label_smoothing=0.1, **kw)


@pytest.fixture(scope="module")
def fixed(prepared):
    task, model, batch = _setup(prepared, "--moe-experts", "4")
    model.eval()  # deterministic routing (argmax), no dropout: every forward is the same
    return task, model, batch


def _layer_losses(model):
    from fairseq_sparsemixer.modules import moe_layers

    routes = [m.last for m in moe_layers(model)]
    return torch.stack([r.balance_loss for r in routes]), torch.stack([r.z_loss for r in routes])


def test_balance_reductions_match_their_definitions(fixed):
    task, model, batch = fixed
    ce, ss, _ = _criterion(task, moe_balance_weight=0.0)(model, batch)
    b, z = _layer_losses(model)
    assert len(b) == 4 and ss == batch["ntokens"]
    alpha, wz = 0.3, 0.2
    tm, _, log_tm = _criterion(task, moe_balance_weight=alpha, moe_z_loss_weight=wz)(model, batch)
    # token-mean: CE_sum + S·α·mean_l b_l + S·w_z·mean_l z_l
    torch.testing.assert_close(tm, ce + ss * alpha * b.mean() + ss * wz * z.mean())
    bs, _, log_bs = _criterion(task, moe_balance_weight=alpha, moe_z_loss_weight=wz,
                               moe_balance_reduction="batch-sum")(model, batch)
    # batch-sum (the authors' code): CE_sum + α·sum_l b_l, the z-loss still token-mean
    torch.testing.assert_close(bs, ce + alpha * b.sum() + ss * wz * z.mean())
    assert not torch.allclose(tm, bs)
    # the logged values mean the same in both modes: S · mean_l b_l (per-token after reduction)
    for log in (log_tm, log_bs):
        assert log["moe_balance"] == pytest.approx(b.mean().item() * ss, rel=1e-6)
        assert log["moe_zloss"] == pytest.approx(z.mean().item() * ss, rel=1e-6)
        assert log["loss"] == pytest.approx(float(ce), rel=1e-6)  # the CE alone


def test_batch_sum_gradient_is_alpha_times_the_summed_balance_gradient(fixed):
    task, model, batch = fixed
    router = next(m for m in model.modules() if hasattr(m, "router")).router.proj.weight

    def grad(**kw):
        model.zero_grad()
        _criterion(task, **kw)(model, batch)[0].backward()
        return router.grad.clone()

    g0, g1 = grad(moe_balance_weight=0.0), grad(moe_balance_weight=0.5, moe_balance_reduction="batch-sum")
    model.zero_grad()
    _criterion(task, moe_balance_weight=0.0)(model, batch)
    b, _ = _layer_losses(model)
    (0.5 * b.sum()).backward()
    torch.testing.assert_close(g1 - g0, router.grad, atol=1e-6, rtol=1e-4)


def test_bad_balance_reduction_is_refused(fixed):
    with pytest.raises(ValueError, match="--moe-balance-reduction 'mean' is unknown; valid: token-mean, batch-sum"):
        _criterion(fixed[0], moe_balance_reduction="mean")


def test_layer_names_skip_wrapper_prefixes(fixed):
    from fairseq_sparsemixer.models.introspect import _short, moe_named_layers

    _, model, _ = fixed
    names = [n for n, _ in moe_named_layers(model)]
    assert names == ["enc0", "enc2", "dec0", "dec2"]
    wrapped = torch.nn.Module()
    wrapped.module = model  # what DDP hands the criterion
    assert [n for n, _ in moe_named_layers(wrapped)] == names
    assert _short("module.decoder.layers.2.fc1") == "dec2"
    assert _short("_fsdp_wrapped_module.encoder.layers.4._checkpoint_wrapped_module.fc1") == "enc4"


def test_criterion_reads_all_layers_in_one_host_sync(fixed):
    task, model, batch = fixed
    crit = _criterion(task)
    model.train()
    try:
        with HostSyncs() as fwd:
            model(**batch["net_input"])
        with HostSyncs() as both:
            loss, _, _ = crit(model, batch)
    finally:
        model.eval()
    # the criterion adds exactly one read-back to the model's own forward
    assert both.count - fwd.count == 1, (both.ops, fwd.ops)


def test_switch_model_adds_one_host_sync_per_moe_layer(prepared, tmp_path):
    """A training micro-step (forward, criterion, backward) of the MoE model against fairseq's
    dense Transformer of the same dims, on the same batch (the GPU check's counter, on CPU): one
    sync per MoE layer and one in the criterion on top of what fairseq itself does."""
    from fairseq_sparsemixer.diagnostics import host_syncs

    res = host_syncs.main(["--data", str(prepared / "bin"), "--arch", "tiny", "--device", "cpu",
                           "--json", str(tmp_path / "s.json")])
    assert res["moe_layers"] == 4 and res["difference"] == 4 + 1, res
    assert json.loads((tmp_path / "s.json").read_text())["difference"] == 5
    # the grouped GEMM keeps the offsets on the device: only the criterion's sync is left
    res = host_syncs.main(["--data", str(prepared / "bin"), "--arch", "tiny", "--device", "cpu",
                           "--expert-impl", "grouped"])
    assert res["loop_layers"] == 0 and res["difference"] == res["target"] == 1, res


def test_batch_sum_figures_in_the_readme_and_docstring_follow_the_formula():
    """batch-sum's effective weight is α·L / tokens per micro-batch, so it is tokens / L times
    weaker than token-mean's α: the paper's base model (6 MoE layers, 8192 tokens) and cpu-tiny
    (4 layers, ~1.6k tokens) as the README and the criterion's docstring state them."""
    from fairseq_sparsemixer.criterions import moe_label_smoothed_cross_entropy as crit

    texts = {"README.md": (ROOT / "README.md").read_text(), "docstring": crit.__doc__}
    for tokens, layers in ((8192, 6), (1600, 4)):
        weight = 0.01 * layers / tokens
        for name, text in texts.items():
            flat = " ".join(text.split())
            assert f"~{0.01 / weight:.0f} " in flat, (name, tokens, layers)  # ~1365, ~400
            assert "~" + f"{weight:.1e}".replace("e-0", "e-") in flat, (name, tokens, layers)  # ~7.3e-6, ~2.5e-5
