"""Research tools (issue 6): gradient fidelity against an independently computed exact gradient,
the router comparison (speed-up metric, curves, tables) and expert-usage / collapse detection."""
import json
import math
import os
import shutil

import pytest
import torch

from conftest import SMALL, run, train
from fairseq_sparsemixer.diagnostics import compare, expert_usage, gradient_fidelity as gf
from fairseq_sparsemixer.diagnostics.logs import read_train_log
from fairseq_sparsemixer.modules import MoEFeedForward
from fairseq_sparsemixer.training.collapse import CollapseMonitor

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ gradient fidelity

def hand_set_model(jitter_eps=0.5):
    """A MoE layer with a hand-set router (3 experts, all kept for most tokens at r = 0.5) and a
    loss that is nonlinear in every token's output and couples the tokens."""
    torch.manual_seed(0)
    layer = MoEFeedForward(3, 6, num_experts=3, router="sparsemixer", jitter_eps=jitter_eps).double().eval()
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.tensor([[1.0, 0.2, 0.0], [0.8, -0.3, 0.4], [0.9, 0.1, -0.2]]))
        layer.omega.copy_(torch.tensor([1.5, -0.7, 0.9]))
    x = torch.tensor([[1.0, 0.5, -0.2], [0.9, -0.4, 0.3], [1.2, 0.1, 0.1], [0.7, 0.6, -0.5]],
                     dtype=torch.float64)
    w = torch.tensor([0.6, -1.1, 0.8], dtype=torch.float64)

    def loss_of(y):
        return torch.tanh(y @ w).pow(2).sum() + 0.5 * (y.sum(0) ** 2).sum()

    return layer, x, loss_of


def independent(layer, x, loss_of, t, r):
    """The exact gradient and the three expected estimates for token t, by autograd through
    hand-written expressions of π(θ_t) (the mask from the paper's formula, held fixed)."""
    with torch.no_grad():
        theta_all = (x.float() @ layer.router.proj.weight.float().T).double()

    def pi_of(theta):
        best = theta.detach().max()
        drop = (best - theta.detach()) / torch.maximum(theta.detach().abs(), best) > 2 * r
        return theta.masked_fill(drop, float("-inf")).softmax(-1)

    def expert_out(s, e, gate):
        return layer.omega * gate * layer.experts[e](x[s:s + 1])[0]

    with torch.no_grad():  # the other tokens: argmax expert, gate π_D
        rows = []
        for s in range(x.size(0)):
            p = pi_of(theta_all[s])
            rows.append(expert_out(s, int(p.argmax()), p.max()))
        base = torch.stack(rows)

    def L(i, gate):  # φ_i(gate)
        y = base.clone()
        y[t] = expert_out(t, i, gate)
        return loss_of(y)

    def grad(f):
        theta = theta_all[t].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(theta), theta)
        return g

    pi = pi_of(theta_all[t]).detach()
    kept = [i for i in range(3) if pi[i] > 0]
    top = int(pi.argmax())
    exact = grad(lambda th: sum(pi_of(th)[i] * L(i, pi_of(th)[i]) for i in kept))
    switch = grad(lambda th: L(top, pi_of(th)[top]))
    first = sum(2 * pi[i] * grad(lambda th, i=i: L(i, pi_of(th)[i])) for i in kept)
    masked = sum(pi[i] * grad(lambda th, i=i: L(i, pi_of(th)[i])) for i in kept)  # D ~ π, plain autograd
    # mid-point: off the argmax, ½ φ'(π) J + ½ φ'(π/2) J, and ∇_θ φ(π(θ)/2) = ½ φ'(π/2) J
    mid = sum(2 * pi[i] * (grad(lambda th, i=i: L(i, pi_of(th)[i])) if i == top else
                           0.5 * grad(lambda th, i=i: L(i, pi_of(th)[i])) +
                           grad(lambda th, i=i: L(i, pi_of(th)[i] / 2)))
              for i in kept)
    # the dense-mixture estimates: ⟨G, ω ⊙ v_i⟩ J_i with G = ∂L/∂y_t at the unforced output
    yb = base.clone().requires_grad_(True)
    (G,) = torch.autograd.grad(loss_of(yb), yb)
    G = G[t] * layer.omega.detach()
    J = torch.diag(pi) - torch.outer(pi, pi)
    f = [layer.experts[i](x[t:t + 1])[0].detach() for i in range(3)]
    tops = [int(pi_of(theta_all[s]).argmax()) for s in range(x.size(0))]
    mean = [torch.stack([layer.experts[i](x[s:s + 1])[0] for s in range(x.size(0)) if tops[s] == i]).mean(0).detach()
            if i in tops else torch.zeros(3, dtype=torch.float64) for i in range(3)]
    dense = sum((G @ f[i]) * J[i] for i in kept)
    default = sum((G @ (f[i] if i == top else mean[i])) * J[i] for i in kept)
    return dict(exact=exact, switch=switch, densemixer=dense, **{
        "masked-switch": masked, "sparsemixer-1st": first, "sparsemixer": mid, "default-moe": default}), pi, top


def test_fidelity_tool_returns_the_independent_exact_gradient_and_estimates():
    layer, x, loss_of = hand_set_model()
    with torch.no_grad():
        layer(x)  # the unforced routing the tool reads from layer.last
    route = layer.last
    errs = {k: [] for k in gf.ESTIMATORS}
    checked = 0
    for t in range(x.size(0)):
        want, pi, top = independent(layer, x, loss_of, t, r=0.5)
        torch.testing.assert_close(route.probs[t].double(), pi.double(), atol=1e-6, rtol=0)
        got = gf.token_gradients(lambda: loss_of(layer(x)), layer, t, route.probs[t], top)
        for k in ("exact",) + gf.ESTIMATORS:
            torch.testing.assert_close(got[k], want[k], atol=1e-9, rtol=1e-6)
        if (pi > 0).sum() > 1:
            checked += 1
            assert want["exact"].norm() > 1e-3  # not vacuous
            for k, v in gf.compare(got).items():
                errs[k].append(v["rel_error"])
    assert checked >= 3
    assert layer.router.__class__.__name__ == "SparseMixerRouter"  # the forcing was undone
    mean = {k: sum(v) / len(v) for k, v in errs.items()}
    assert mean["sparsemixer"] < mean["switch"] and mean["sparsemixer-1st"] < mean["switch"], mean


def test_fidelity_of_a_later_layer_does_not_depend_on_earlier_forcing():
    """Forced forwards overwrite every layer's `last` routing: layer_fidelity takes it afresh."""
    torch.manual_seed(0)
    a, b = (MoEFeedForward(4, 8, 3, router="sparsemixer", jitter_eps=1.0).double().eval() for _ in range(2))
    x = torch.randn(6, 4, dtype=torch.float64)
    loss_fn = lambda: torch.tanh(b(x + 3 * a(x).mean(0))).pow(2).sum()  # a's tokens reach all of b's
    fresh = gf.layer_fidelity(loss_fn, b, [0, 3])
    gf.layer_fidelity(loss_fn, a, [1, 2, 5])  # forces a, which changes b's last routing
    assert fresh == gf.layer_fidelity(loss_fn, b, [0, 3])
    assert gf.layer_fidelity(loss_fn, b, [0, 3], route=b.last) != fresh  # the stale routing differs
    assert all(r["kept"] >= 2 for r in fresh)


def test_fidelity_default_moe_uses_the_checkpoints_ema_and_batch_means_otherwise():
    torch.manual_seed(0)
    x = torch.randn(12, 4, dtype=torch.float64)
    pad = torch.zeros(12, dtype=torch.bool)
    pad[-2:] = True
    for router in ("default-moe", "switch"):
        layer = MoEFeedForward(4, 8, 3, router=router).double().eval()
        if router == "default-moe":
            layer.router.defaults.copy_(torch.randn(3, 4))
        loss_fn = lambda: layer(x, pad).pow(2).sum()
        route = gf.unforced_route(loss_fn, layer)
        got = gf.stand_in_inputs(loss_fn, layer, route)
        torch.testing.assert_close(got["g"], 2 * layer(x, pad).detach())  # ∂(Σ y²)/∂y, no omega
        if router == "default-moe":
            torch.testing.assert_close(got["defaults"], layer.router.defaults)
        else:
            first = route.expert_index[:, 0]
            for i in range(3):
                rows = [t for t in range(10) if first[t] == i]  # the pads are left out
                want = layer.experts[i](x[rows]).mean(0) if rows else torch.zeros(4, dtype=torch.float64)
                torch.testing.assert_close(got["defaults"][i], want.detach())


def test_fidelity_compare_and_summary_math():
    g = {"exact": torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64),
         "switch": torch.tensor([2.0, -2.0, 0.0], dtype=torch.float64),
         "masked-switch": torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64),
         "sparsemixer-1st": torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64),
         "sparsemixer": torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64),
         "densemixer": torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64),
         "default-moe": torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)}
    c = gf.compare(g)
    assert c["switch"] == pytest.approx(dict(cosine=1.0, rel_error=1.0))
    assert c["sparsemixer-1st"] == pytest.approx(dict(cosine=-1.0, rel_error=2.0))
    assert c["masked-switch"] == pytest.approx(dict(cosine=1.0, rel_error=0.5))
    assert c["sparsemixer"] == pytest.approx(dict(cosine=0.5, rel_error=1.0))
    assert c["densemixer"] == pytest.approx(dict(cosine=0.0, rel_error=1.0))
    assert c["default-moe"] == pytest.approx(dict(cosine=-1.0, rel_error=2.0))
    s = gf.summarize_layer([dict(c), dict(c)])
    assert s["switch"]["mean_cosine"] == pytest.approx(1.0) and s["sparsemixer_closer_than_switch"] == 0.0


def test_fidelity_cli_on_a_trained_checkpoint(trained, prepared, tmp_path):
    out = tmp_path / "gf"
    p = run(["python", "-m", "fairseq_sparsemixer.diagnostics.gradient_fidelity", "--path",
             trained / "checkpoint_last.pt", "--data", prepared / "bin", "--sentences", "2", "--tokens", "2",
             "--out", out])
    res = json.loads((out / "gradient_fidelity.json").read_text())
    assert res["router"] == "sparsemixer" and res["dtype"] == "float64"
    assert set(res["layers"]) == {"enc0", "enc2", "dec0", "dec2"}
    assert sum(len(layer["tokens"]) for layer in res["layers"].values()) >= 4  # not vacuous
    for name, layer in res["layers"].items():
        assert layer["summary"]["tokens"] == len(layer["tokens"]) <= 2
        for rec in layer["tokens"]:
            assert rec["kept"] >= 2 and rec["exact_norm"] > 0
            for est in gf.ESTIMATORS:
                assert -1 - 1e-9 <= rec[est]["cosine"] <= 1 + 1e-9 and rec[est]["rel_error"] >= 0
        assert name in p.stdout
    assert (out / "gradient_fidelity.png").read_bytes()[:8] == PNG
    bad = run(["python", "-m", "fairseq_sparsemixer.diagnostics.gradient_fidelity", "--path",
               tmp_path / "nope.pt", "--data", prepared / "bin"], check=False)
    assert bad.returncode != 0 and "not found" in bad.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ comparison from logs

def fake_log(path, valid, loads=None):
    """A fairseq json log with the given {update: valid loss} and train_inner load records."""
    path.mkdir(parents=True, exist_ok=True)
    lines = []
    for u, loss in sorted(valid.items()):
        rec = {"epoch": 1, "update": u / 1000, "loss": str(loss + 0.1), "num_updates": str(u)}
        for k, v in (loads or {}).get(u, {}).items():
            rec[k] = str(v)
        lines.append("2026-11-23 00:00:00 | INFO | train_inner | " + json.dumps(rec))
        lines.append(json.dumps({"epoch": 1, "valid_loss": str(loss), "valid_nll_loss": str(loss - 0.2),
                                 "valid_num_updates": str(u)}))
    (path / "train.log").write_text("noise line\n" + "\n".join(lines) + "\n")
    return path


def test_speedup_metric_and_tables(tmp_path):
    runs = tmp_path / "runs"
    # switch reaches its best 5.0 at update 400; sparsemixer s1 is <= 5.0 at 200 (2x), s2 at 400 (1x)
    fake_log(runs / "switch-s1", {100: 7.0, 200: 6.0, 300: 5.5, 400: 5.0})
    fake_log(runs / "switch-s2", {100: 7.0, 200: 6.0, 300: 5.5, 400: 5.0})
    fake_log(runs / "sparsemixer-s1", {100: 6.0, 200: 4.9, 300: 4.8, 400: 4.7})
    fake_log(runs / "sparsemixer-s2", {100: 6.5, 200: 5.5, 300: 5.1, 400: 5.0})
    fake_log(runs / "dense-s1", {100: 8.0, 200: 7.0, 300: 6.5, 400: 6.0})
    (runs / "sparsemixer-s1" / "eval_test.json").write_text(json.dumps(
        {"sacrebleu": 12.5, "tok_bleu_compound_split": 13.0}))
    out = tmp_path / "out"
    p = run(["bash", "scripts/compare_routers.sh", "--from-logs", tmp_path, "--out", out])
    res = json.loads((out / "summary.json").read_text())
    sp = {x["candidate"]: x for x in res["speedup_pairs"]}
    assert sp["sparsemixer-s1"]["speedup"] == 2.0 and sp["sparsemixer-s1"]["candidate_updates"] == 200
    assert sp["sparsemixer-s2"]["speedup"] == 1.0
    assert sp["sparsemixer-s1"]["final_difference"] == pytest.approx(-0.3)
    assert res["speedup"]["mean_sd"][0] == pytest.approx(1.5)
    assert res["speedup"]["mean_sd"][1] == pytest.approx(math.sqrt(0.5))
    rows = {r["label"]: r for r in res["table"]}
    assert rows["sparsemixer"]["final"][0] == pytest.approx(4.85) and rows["dense"]["final"][0] == 6.0
    assert rows["sparsemixer"]["bleus"] == [12.5, None] and rows["switch"]["bleu"] == [None, None]
    md = (out / "summary.md").read_text()
    assert "| sparsemixer | 2 | 400 | 4.850 ± 0.212 |" in md and "1.50 ± 0.71x" in md
    assert (out / "valid_loss.png").read_bytes()[:8] == PNG
    assert "1.50 ± 0.71x" in p.stdout
    # a candidate that never gets there; LABEL=PATH logs numbered as seeds
    fake_log(tmp_path / "slow", {100: 7.5, 200: 6.5, 300: 6.0, 400: 5.5})
    res = compare.summarize(compare.parse_runs([f"switch={runs / 'switch-s1'}", f"sparsemixer={tmp_path / 'slow'}"]),
                            tmp_path / "out2")
    assert res["speedup_pairs"][0]["speedup"] is None and res["speedup"]["reached"] == 0
    assert "never reached" in (tmp_path / "out2" / "summary.md").read_text()


def test_paired_statistics_are_the_libraries_tests(tmp_path):
    """Loss differences: scipy's paired t-test; BLEU: sacreBLEU's paired bootstrap, on the
    translations recorded in eval_test.json."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest
    from scipy import stats

    runs = tmp_path / "runs"
    finals = {"switch": [5.0, 5.2, 5.1], "sparsemixer": [5.1, 5.25, 5.3]}
    refs = [f"das ist der satz nummer {i} hier ." for i in range(60)]
    ref = tmp_path / "ref.de"
    ref.write_text("\n".join(refs) + "\n")
    for label, values in finals.items():
        for seed, v in enumerate(values, 1):
            d = fake_log(runs / f"{label}-s{seed}", {100: v + 1.0, 200: v})
            # switch copies the reference; sparsemixer drops a word from every third sentence
            hyps = [r if label == "switch" or i % 3 else r.replace(" hier", "") for i, r in enumerate(refs)]
            (d / "hyp_test.de").write_text("\n".join(hyps) + "\n")
            (d / "eval_test.json").write_text(json.dumps({"sacrebleu": 0.0, "tok_bleu_compound_split": 0.0,
                                                          "hypotheses": str(d / "hyp_test.de"), "reference": str(ref)}))
    res = compare.summarize(compare.parse_runs([str(p) for p in sorted(runs.iterdir())]), tmp_path / "out")
    (sg,) = res["significance"]
    assert (sg["baseline"], sg["candidate"]) == ("switch", "sparsemixer")  # sorted after the names
    t = stats.ttest_rel(finals[sg["candidate"]], finals[sg["baseline"]])
    ci = t.confidence_interval(0.95)
    assert sg["final"]["mean"] == pytest.approx(0.1167, abs=1e-4)
    assert sg["final"]["ci95"] == pytest.approx([ci.low, ci.high]) and sg["final"]["p_value"] == pytest.approx(t.pvalue)
    hyp = lambda name: (runs / name / "hyp_test.de").read_text().splitlines()
    base, cand = f"{sg['baseline']}-s1", f"{sg['candidate']}-s1"
    _, want = PairedTest([(base, hyp(base)), (cand, hyp(cand))], {"BLEU": BLEU()}, [refs], test_type="bs",
                         n_samples=1000)()
    got = sg["bleu"]["1"]
    assert got["p_value"] == pytest.approx(want["BLEU"][1].p_value)
    assert got["difference"] == pytest.approx(want["BLEU"][1].score - want["BLEU"][0].score) and got["difference"] != 0
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "Paired statistics" in md and f"| {sg['candidate']} − {sg['baseline']} | 3 |" in md
    # the same references at another path are the same references; other references are refused
    copy = tmp_path / "copy.de"
    copy.write_text(ref.read_text())
    ev = runs / "sparsemixer-s1" / "eval_test.json"
    ev.write_text(ev.read_text().replace(str(ref), str(copy)))
    assert compare.paired_bleu(*compare.parse_runs([str(runs / "switch-s1"), str(runs / "sparsemixer-s1")]))["p_value"] \
        == pytest.approx(got["p_value"])
    copy.write_text(ref.read_text().replace("nummer 1 ", "nummer eins "))
    with pytest.raises(ValueError, match="different references"):
        compare.paired_bleu(*compare.parse_runs([str(runs / "switch-s1"), str(runs / "sparsemixer-s1")]))
    assert "| switch | 3 | 200 | 5.100 ± 0.100 | 5.100 ± 0.100 | 0.00 ± 0.00 |" in md  # equal seeds: s.d. 0 shown


def eval_files(d, hyps, refs, absolute=False, **extra):
    """eval_test.json as scripts/evaluate_wmt14.sh writes it: files relative to the run dir
    (absolute: as it wrote them before)."""
    (d / "hyp_test.de").write_text("\n".join(hyps) + "\n")
    (d / "ref_test.de").write_text("\n".join(refs) + "\n")
    at = (lambda f: str(d / f)) if absolute else (lambda f: f)
    (d / "eval_test.json").write_text(json.dumps(dict(sacrebleu=0.0, tok_bleu_compound_split=0.0,
                                                      hypotheses=at("hyp_test.de"), reference=at("ref_test.de"),
                                                      **extra)))


def test_runs_are_paired_at_an_update_both_validated(tmp_path):
    """switch-s1 still training (validated up to 400) against sparsemixer-s1 (to 800): final = the
    values at 400, best = the best up to 400, the speed-up over the same span, and the summary
    says 400; seed 2 has no validated update in common (300, 500 / 200, 400): not compared,
    one line says so. Translations of different updates are not BLEU-paired."""
    runs = tmp_path / "runs"
    fake_log(runs / "switch-s1", {100: 7.0, 200: 6.0, 300: 5.5, 400: 5.0})
    fake_log(runs / "sparsemixer-s1", {100: 7.2, 200: 6.1, 300: 5.6, 400: 5.2, 600: 4.5, 800: 4.0})
    fake_log(runs / "switch-s2", {300: 6.5, 500: 5.1})
    fake_log(runs / "sparsemixer-s2", {200: 6.0, 400: 5.3})
    refs = [f"das ist satz {i} ." for i in range(30)]
    eval_files(runs / "switch-s1", refs, refs, absolute=True, num_updates=400)
    eval_files(runs / "sparsemixer-s1", [r.replace(" .", "") for r in refs], refs, absolute=True, num_updates=800)
    res = compare.summarize(compare.parse_runs([str(p) for p in sorted(runs.iterdir())]), tmp_path / "out")
    (sg,) = res["significance"]
    assert sg["seeds"] == ["1"] and sg["updates"] == {"1": 400} and list(sg["unpaired"]) == ["2"]
    assert sg["final"]["diffs"] == pytest.approx([0.2]) and sg["best"]["diffs"] == pytest.approx([0.2])
    assert sg["bleu"] == {} and "update 400" in sg["bleu_unpaired"]["1"] and "800" in sg["bleu_unpaired"]["1"]
    sp = {p["candidate"]: p for p in res["speedup_pairs"]}
    assert sp["sparsemixer-s1"]["until"] == 400 and sp["sparsemixer-s1"]["speedup"] is None
    assert sp["sparsemixer-s1"]["final_difference"] == pytest.approx(0.2) and sp["sparsemixer-s2"]["until"] is None
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| sparsemixer − switch | 1 | 400 | +0.200 (+0.200) | +0.200 (+0.200) | n/a |" in md
    assert md.count("seed 2: no validated update in common") == 1
    assert "sparsemixer-s2 − switch-s2: no validated update in common" in md
    assert "seed 1: switch-s1 translated at update 400, sparsemixer-s1 at 800: BLEU not compared." in md
    assert "| switch-s1 | 400 | 5.000 | 400 | sparsemixer-s1 | — | not reached | +0.200 |" in md
    assert "switch-s2 validated at 300–500, sparsemixer-s2 validated at 200–400" in md


def test_seeds_that_share_no_validated_update_are_plotted_one_by_one(tmp_path):
    """Seeds of one label validated at disjoint updates (another --validate-interval) have no
    mean curve: each is plotted on its own and the summary is written (it raised IndexError)."""
    runs = tmp_path / "runs"
    fake_log(runs / "switch-s1", {100: 7.0, 200: 6.0})
    fake_log(runs / "switch-s2", {150: 6.5, 450: 5.1})
    res = compare.summarize(compare.parse_runs([str(p) for p in sorted(runs.iterdir())]), tmp_path / "out")
    assert res["table"][0]["final_updates"] == [200, 450]
    assert (tmp_path / "out" / "valid_loss.png").read_bytes()[:8] == PNG


def test_eval_files_relative_to_the_run_dir_survive_a_move_and_a_link(tmp_path):
    """eval_test.json names its files relative to the run directory: a moved run directory, and
    one reached through a symbolic link, still compare (older files' absolute paths are read
    too: test_paired_statistics_are_the_libraries_tests)."""
    refs = [f"das ist der satz nummer {i} hier ." for i in range(40)]
    for label in ("switch", "sparsemixer"):
        d = fake_log(tmp_path / "a" / f"{label}-s1", {100: 6.0, 200: 5.0})
        eval_files(d, refs if label == "switch" else [r.replace(" hier", "") for r in refs], refs, num_updates=200)
    shutil.move(tmp_path / "a", tmp_path / "b")
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "b" / "sparsemixer-s1", tmp_path / "links" / "sparsemixer-s1")
    res = compare.summarize(compare.parse_runs([str(tmp_path / "b" / "switch-s1"),
                                                str(tmp_path / "links" / "sparsemixer-s1")]), tmp_path / "out")
    got = res["significance"][0]["bleu"]["1"]
    assert got["difference"] < 0 and got["update"] == 200
    assert "s1: " in (tmp_path / "out" / "summary.md").read_text()


def test_evaluated_run_dir_compares_after_a_move(trained, prepared, tmp_path):
    """The real evaluate_wmt14.sh writes no absolute path into eval_test.json; a copy of the
    evaluated run, and the run itself, moved elsewhere, compare (same translations: 0 BLEU apart)."""
    d = tmp_path / "runs" / "switch-s1"
    d.mkdir(parents=True)
    for f in ("checkpoint_last.pt", "train.log", "command.txt"):
        shutil.copy(trained / f, d / f)
    run(["bash", "scripts/evaluate_wmt14.sh", "--save-dir", d, "--prep-dir", prepared, "--checkpoint",
         "checkpoint_last.pt", "--beam", "1", "--", "--max-len-a", "0", "--max-len-b", "3"])
    ev = json.loads((d / "eval_test.json").read_text())
    assert (ev["checkpoint"], ev["hypotheses"], ev["reference"], ev["num_updates"]) == (
        "checkpoint_last.pt", "hyp_test.de", "ref_test.de", 6)
    assert (d / "ref_test.de").read_text() == (prepared / "raw" / "test.de").read_text()
    shutil.copytree(d, tmp_path / "runs" / "sparsemixer-s1")
    shutil.move(tmp_path / "runs", tmp_path / "moved")
    run(["python", "-m", "fairseq_sparsemixer.diagnostics.compare", tmp_path / "moved" / "switch-s1",
         tmp_path / "moved" / "sparsemixer-s1", "--out", tmp_path / "out"])
    res = json.loads((tmp_path / "out" / "summary.json").read_text())
    got = res["significance"][0]["bleu"]["1"]
    assert got["difference"] == 0 and got["update"] == 6


def test_thread_counts_are_read_shown_and_warned_about(tmp_path):
    """command.txt's `# torch threads K` line (scripts/train_wmt14.sh): a threads column, and one
    warning line where paired CPU runs differ or one is unknown (no command.txt)."""
    def runs_with(threads, cpu=True):
        root = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        for name, k in threads.items():
            d = fake_log(root / name, {100: 6.0, 200: 5.0})
            if k is not None:
                (d / "command.txt").write_text(f"fairseq-train DATA {'--cpu ' if cpu else ''}--seed 1 \n"
                                               f"# 2048 tokens per update at most\n# torch threads {k} "
                                               f"(OMP_NUM_THREADS={k})\n")
        return compare.summarize(compare.parse_runs([str(p) for p in sorted(root.iterdir())]), root / "out"), root

    res, root = runs_with({"switch-s1": "1", "sparsemixer-s1": "2", "switch-s2": "1", "sparsemixer-s2": "1",
                           "dense-s1": None})
    assert res["runs"]["sparsemixer-s1"]["threads"] == "2" and res["runs"]["dense-s1"]["threads"] == "unknown"
    rows = {r["label"]: r for r in res["table"]}
    assert rows["sparsemixer"]["threads"] == ["1", "2"] and rows["dense"]["threads"] == ["unknown"]
    md = (root / "out" / "summary.md").read_text()
    assert "| sparsemixer | 2 | 200 |" in md and md.split("| sparsemixer | 2 | 200 |")[1].split("\n")[0].endswith(
        "| 1, 2 |")
    (warn,) = [x for x in md.splitlines() if x.startswith("Warning: paired runs")]
    assert "switch-s1 1 / sparsemixer-s1 2" in warn and "dense-s1 unknown / switch-s1 1" in warn
    assert "sparsemixer-s2" not in warn and "bit-reproducible only at a fixed thread count" in warn
    same, root = runs_with({"switch-s1": "1", "sparsemixer-s1": "1"})
    assert same["thread_warning"] is None and "Warning" not in (root / "out" / "summary.md").read_text()
    gpu, _ = runs_with({"switch-s1": "1", "sparsemixer-s1": "4"}, cpu=False)
    assert gpu["thread_warning"] is None  # on GPUs the CPU thread count does not change the numbers


def test_compare_errors_are_one_line(tmp_path):
    p = run(["bash", "scripts/compare_routers.sh", "--from-logs", tmp_path / "none"], check=False)
    assert p.returncode != 0 and "does not exist" in p.stderr.strip().splitlines()[-1]
    fake_log(tmp_path / "x", {100: 1.0})
    p = run(["python", "-m", "fairseq_sparsemixer.diagnostics.compare", tmp_path / "x", "--out", tmp_path / "o"],
            check=False)
    assert p.returncode != 0 and "cannot tell the label" in p.stderr.strip().splitlines()[-1]
    for args, needle in [(["--routers", "dense nope"], "unknown router 'nope'"), (["--seeds", "1 x"], "'x' is not"),
                         (["--experts", "0"], "--experts must be >= 1")]:
        p = run(["bash", "scripts/compare_routers.sh", "--out", tmp_path / "c", *args], check=False)
        assert p.returncode != 0 and needle in p.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "c").exists()


def test_collapse_found_in_logs_and_heatmap(tmp_path):
    loads = {u: {"load_enc0_e0": 0.6, "load_enc0_e1": 0.4 if u < 300 else 0.395,
                 "load_enc0_e2": 0.0 if u >= 200 else 0.1, "load_enc0_e3": 0.005 if u >= 200 else 0.1,
                 "load_dec0_e0": 0.5, "load_dec0_e1": 0.5, "load_dec0_e2": 0.0, "load_dec0_e3": 0.0}
             for u in range(50, 450, 50)}
    d = fake_log(tmp_path / "r", {u: 5.0 for u in loads}, loads)
    log = read_train_log(d / "train.log")
    updates, mats = expert_usage.load_matrices(log.inner)
    assert list(mats) == ["enc0", "dec0"] and mats["enc0"].shape == (4, 8)
    found = expert_usage.find_collapse(updates, mats, threshold=0.01, min_records=4)
    assert {(c["layer"], c["expert"], c["from_update"], c["to_update"]) for c in found} == {
        ("enc0", 2, 200, 400), ("enc0", 3, 200, 400), ("dec0", 2, 50, 400), ("dec0", 3, 50, 400)}
    assert expert_usage.find_collapse(updates, mats, threshold=0.01, min_records=6) == [
        c for c in found if c["layer"] == "dec0"]
    p = run(["python", "-m", "fairseq_sparsemixer.diagnostics.expert_usage", d, "--out", tmp_path / "h.png"])
    assert (tmp_path / "h.png").read_bytes()[:8] == PNG and "collapse: enc0 expert 2 below 1%" in p.stdout


def test_collapse_monitor_warns_once_per_episode():
    m = CollapseMonitor(threshold=0.1, patience=3)
    seen = [m.update("enc0", [50, 5, 45]) for _ in range(5)]
    assert [len(s) for s in seen] == [0, 0, 1, 0, 0] and "enc0 expert 1" in seen[2][0]
    back = m.update("enc0", [40, 20, 40])
    assert len(back) == 1 and "over" in back[0] and "after 5 batches" in back[0]
    assert m.update("enc0", [0, 0, 0]) == []  # no tokens: nothing to say
    assert CollapseMonitor(0.1, patience=0).update("enc0", [1, 0]) == []


def test_collapse_advice_is_true_for_each_router():
    """Switch (no mask): a larger balance weight. SparseMixer with tokens that keep one expert:
    the balance loss cannot reach those tokens' routers, and the warning says so."""
    switch = CollapseMonitor(threshold=0.1, patience=1).update("enc0", [50, 5, 45], one_kept=0.0)
    assert "consider a larger --moe-balance-weight" in switch[0]
    sm = CollapseMonitor(threshold=0.1, patience=1).update("enc0", [50, 5, 45], one_kept=0.9)
    assert "90% of this layer's tokens keep a single expert" in sm[0] and "only through the other 10%" in sm[0]
    assert "consider a larger --moe-balance-weight" not in sm[0]


def test_training_logs_the_collapse_warning(prepared, tmp_path):
    """Through fairseq-train: with a 50% threshold some expert is 'collapsed' within 2 batches."""
    save = tmp_path / "c"
    train(prepared, save, "--moe-collapse-threshold", "0.5", "--moe-collapse-batches", "2", updates="3")
    assert "expert collapse: MoE layer" in (save / "train.log").read_text()


def test_compare_routers_end_to_end_tiny(prepared, tmp_path):
    """The real script: 3 routers x 1 seed of a few updates, then a rerun that trains nothing
    (seed pairing and the speed-up math are tested on fake logs above)."""
    out = tmp_path / "cmp"
    args = ["bash", "scripts/compare_routers.sh", "--prep-dir", prepared, "--out", out, "--seeds", "1",
            "--max-update", "4", "--validate-interval", "2", "--no-bleu", "--", *SMALL]
    p = run(args)
    res = json.loads((out / "summary.json").read_text())
    assert {r["label"]: r["seeds"] for r in res["table"]} == {
        "dense": ["1"], "switch": ["1"], "sparsemixer": ["1"]}
    assert all(r["final_updates"] == [4] for r in res["table"])
    assert [(x["baseline"], x["candidate"]) for x in res["speedup_pairs"]] == [("switch-s1", "sparsemixer-s1")]
    for f in ["valid_loss.png", "expert_load_switch-s1.png", "expert_load_sparsemixer-s1.png"]:
        assert (out / f).read_bytes()[:8] == PNG
    assert not (out / "expert_load_dense-s1.png").exists()
    assert p.stdout.count("compare_routers.sh: training") == 3
    # --threads 1 (the default) for every run: recorded, shown, nothing to warn about
    assert {r["threads"] for r in res["runs"].values()} == {"1"} and res["thread_warning"] is None
    assert all(r["threads"] == ["1"] for r in res["table"])
    again = run(args)
    assert "compare_routers.sh: training" not in again.stdout and (out / "summary.md").is_file()
    # another thread count would resume those checkpoints: refused, nothing removed
    p = run([*args[:2], "--threads", "2", *args[2:]], check=False)
    assert p.returncode != 0 and "trained at 1 thread(s), not --threads 2" in p.stderr.strip().splitlines()[-1]
    assert (out / "runs" / "dense-s1" / ".trained").is_file()
