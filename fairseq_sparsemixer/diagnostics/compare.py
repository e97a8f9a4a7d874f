"""Compare routers from fairseq json logs: validation curves, the paper's speed-up metric, BLEU.

    python -m fairseq_sparsemixer.diagnostics.compare RUN [RUN ...] --out DIR
        [--baseline switch] [--candidate sparsemixer] [--metric loss]

RUN is `LABEL=PATH` or a PATH named `<label>-s<seed>` (what scripts/compare_routers.sh
makes); PATH is a save dir holding train.log (and eval_test.json, if evaluated) or the log
itself. Runs with the same label are seeds of one setting.

Writes DIR/valid_loss.png (mean over seeds, band = min..max), DIR/expert_load_<run>.png,
DIR/summary.md and DIR/summary.json.

Paired statistics for every two labels (the later minus the earlier in the order dense,
--baseline, --candidate, then the others as they first appear), over the seeds both have: the
final and the best validation <metric> differences, with a 95% confidence interval and p-value
of the paired t-test (scipy.stats.ttest_1samp of the per-seed differences, i.e. ttest_rel;
needs 2 seeds or more), and, per seed, sacreBLEU's paired bootstrap resampling test
(sacrebleu.significance.PairedTest, 1000 resamples, SACREBLEU_SEED 12345) on the test
translations that scripts/evaluate_wmt14.sh recorded in eval_test.json.

Speed-up metric (the paper's "reaches Switch's quality in up to 2x fewer updates"), per seed
pair (same seed; every pair when the seeds differ): with b* = the best validation <metric> of
the baseline run and u_b the first update at which the baseline reaches it, u_c = the first
validated update at which the candidate is <= b*; speed-up = u_b / u_c. Resolution is the
validation interval; "not reached" when the candidate never gets there.
"""
import argparse
import itertools
import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ._io import save_figure, setup_logging, write_json, write_text
from .expert_usage import find_collapse, load_matrices, plot_heatmaps
from .logs import TrainLog, find_log, read_train_log

logger = logging.getLogger(__name__)
_RUN_NAME = re.compile(r"^(?P<label>.+)-s(?P<seed>\d+)$")


@dataclass
class Run:
    label: str
    seed: str
    path: Path
    log: TrainLog
    bleu: Optional[dict] = None
    collapse: List[dict] = field(default_factory=list)

    @property
    def name(self):
        return f"{self.label}-s{self.seed}"

    def curve(self, metric):
        """(updates, values) of the validation records that carry `metric`."""
        pts = [(int(r["num_updates"]), float(r[metric])) for r in self.log.valid if metric in r]
        return np.array([u for u, _ in pts]), np.array([v for _, v in pts])


def parse_run(spec: str) -> Run:
    """`LABEL=PATH` or `PATH` named <label>-s<seed> (the seed is then '?', numbered later)."""
    label, seed = None, "?"
    if "=" in spec and not Path(spec).exists():
        label, spec = spec.split("=", 1)
    path = find_log(spec)
    m = _RUN_NAME.match((path.parent if path.name == "train.log" else path).name)
    if m:
        seed = m.group("seed")
        label = label or m.group("label")
    if label is None:
        raise ValueError(f"cannot tell the label of {spec}: name it LABEL=PATH or <label>-s<seed>")
    log = read_train_log(path)
    bleu_file = path.parent / "eval_test.json"
    bleu = json.loads(bleu_file.read_text()) if bleu_file.is_file() else None
    return Run(label, seed, path, log, bleu)


def parse_runs(specs: List[str]) -> List[Run]:
    """Runs without a seed in their name are numbered 1, 2, ... within their label. Runs without
    a validation record yet (still starting) are left out, with a warning."""
    runs = []
    for spec in specs:
        r = parse_run(spec)
        if r.log.valid:
            runs.append(r)
        else:
            logger.warning(f"{r.path} has no validation record yet (or is not a --log-format json log): left out")
    if not runs:
        raise ValueError("no run has a validation record")
    for r in runs:
        if r.seed == "?":
            taken = {x.seed for x in runs if x.label == r.label}
            r.seed = str(next(i for i in range(1, len(runs) + 2) if str(i) not in taken))
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"run {dup[0]} is given twice")
    return runs


def mean_sd(xs):
    """(mean, sample s.d.) of the given values; s.d. None for a single value."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt(m, s, digits=3):
    if m is None:
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None else f"{m:.{digits}f}"


def reach(run_u, run_v, target) -> Optional[int]:
    """First validated update whose value is <= target (None if never)."""
    hit = np.nonzero(run_v <= target + 1e-12)[0]
    return int(run_u[hit[0]]) if hit.size else None


def speedups(baseline: List[Run], candidate: List[Run], metric: str) -> List[dict]:
    by_seed = {r.seed: r for r in candidate}
    pairs = [(b, by_seed[b.seed]) for b in baseline if b.seed in by_seed]
    if not pairs:
        pairs = [(b, c) for b in baseline for c in candidate]
    out = []
    for b, c in pairs:
        bu, bv = b.curve(metric)
        cu, cv = c.curve(metric)
        best = float(bv.min())
        u_b = reach(bu, bv, best)
        u_c = reach(cu, cv, best)
        out.append(dict(baseline=b.name, candidate=c.name, baseline_best=best, baseline_updates=u_b,
                        candidate_updates=u_c, speedup=(u_b / u_c) if u_c else None,
                        final_difference=float(cv[-1] - bv[-1])))
    return out


def one_kept(run: Run, last: int = 4) -> Optional[float]:
    """Mean training moe_one_kept of the last `last` logged records (None if not logged)."""
    vals = [r["moe_one_kept"] for r in run.log.inner if "moe_one_kept" in r][-last:]
    return statistics.fmean(vals) if vals else None


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def paired_bleu(base: Run, cand: Run, n_samples: int = 1000) -> Optional[dict]:
    """sacreBLEU's paired bootstrap resampling of two runs' test translations (same references)."""
    if not (base.bleu and cand.bleu and "hypotheses" in base.bleu and "hypotheses" in cand.bleu):
        return None
    refs = _read_lines(base.bleu["reference"])
    # the same references may sit at two paths (another checkout, a symlinked work dir)
    if cand.bleu.get("reference") != base.bleu["reference"] and _read_lines(cand.bleu["reference"]) != refs:
        raise ValueError(f"{base.name} and {cand.name} were evaluated against different references")
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    systems = [(base.name, _read_lines(base.bleu["hypotheses"])), (cand.name, _read_lines(cand.bleu["hypotheses"]))]
    sigs, scores = PairedTest(systems, {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=n_samples)()
    b, c = scores["BLEU"]
    return dict(baseline=b.score, candidate=c.score, difference=c.score - b.score, p_value=c.p_value,
                signature=str(sigs["BLEU"]))


def paired_t(diffs: List[float]) -> dict:
    """Mean of paired differences with the 95% confidence interval and p-value of the paired
    t-test (scipy), or the mean alone for a single pair."""
    out = dict(mean=statistics.fmean(diffs), n=len(diffs), ci95=None, p_value=None)
    if len(diffs) > 1:
        from scipy import stats

        t = stats.ttest_1samp(diffs, 0.0)
        ci = t.confidence_interval(0.95)
        out.update(ci95=[float(ci.low), float(ci.high)], p_value=float(t.pvalue))
    return out


def significance(groups: Dict[str, List[Run]], metric: str, baseline="switch", candidate="sparsemixer") -> List[dict]:
    """Paired statistics for every two labels over their common seeds (module docstring)."""
    out = []
    order = sorted(groups, key=lambda x: (x != "dense", x != baseline, x != candidate))  # stable
    for a, b in itertools.combinations(order, 2):
        runs_a, runs_b = ({r.seed: r for r in groups[x]} for x in (a, b))
        seeds = sorted(set(runs_a) & set(runs_b), key=lambda s: (len(s), s))
        if not seeds:
            continue
        final = [float(runs_b[s].curve(metric)[1][-1] - runs_a[s].curve(metric)[1][-1]) for s in seeds]
        best = [float(runs_b[s].curve(metric)[1].min() - runs_a[s].curve(metric)[1].min()) for s in seeds]
        bleu = {s: paired_bleu(runs_a[s], runs_b[s]) for s in seeds}
        out.append(dict(baseline=a, candidate=b, seeds=seeds, final=dict(paired_t(final), diffs=final),
                        best=dict(paired_t(best), diffs=best), bleu={s: v for s, v in bleu.items() if v}))
    return out


def mean_curve(runs: List[Run], metric: str):
    """Updates validated in every run, and the mean/min/max over runs there."""
    curves = [r.curve(metric) for r in runs]
    common = sorted(set.intersection(*(set(u.tolist()) for u, _ in curves)))
    vals = np.array([[dict(zip(u.tolist(), v.tolist()))[x] for x in common] for u, v in curves])
    return np.array(common), vals.mean(0), vals.min(0), vals.max(0)


def plot_curves(groups: Dict[str, List[Run]], metric: str, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in groups.items():
        u, m, lo, hi = mean_curve(runs, metric)
        for ax in axes:
            line, = ax.plot(u, m, label=f"{label} (n={len(runs)})")
            ax.fill_between(u, lo, hi, color=line.get_color(), alpha=0.2)
    last = [mean_curve(r, metric) for r in groups.values()]
    u_max = max(u[-1] for u, *_ in last)
    tail = [m[u >= u_max / 2] for u, m, *_ in last if (u >= u_max / 2).any()]
    if tail:  # right panel: the second half of training, zoomed
        lo, hi = min(t.min() for t in tail), max(t.max() for t in tail)
        pad = 0.1 * (hi - lo) + 1e-3
        axes[1].set_xlim(u_max / 2, u_max)
        axes[1].set_ylim(lo - pad, hi + pad)
    for ax, title in zip(axes, ("all updates", "second half")):
        ax.set_xlabel("updates")
        ax.set_ylabel(f"validation {metric} (base 2)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def summarize(runs: List[Run], out: Path, baseline="switch", candidate="sparsemixer", metric="loss",
              collapse_threshold=0.01, collapse_records=4) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    groups: Dict[str, List[Run]] = {}
    for r in runs:
        groups.setdefault(r.label, []).append(r)
    for r in runs:
        updates, mats = load_matrices(r.log.inner)
        if mats:
            plot_heatmaps(updates, mats, out / f"expert_load_{r.name}.png", title=f"expert load, {r.name}")
            r.collapse = find_collapse(updates, mats, collapse_threshold, collapse_records)
    plot_curves(groups, metric, out / f"valid_{metric}.png")

    table = []
    for label, rs in groups.items():
        finals = [float(r.curve(metric)[1][-1]) for r in rs]
        bests = [float(r.curve(metric)[1].min()) for r in rs]
        updates = [int(r.curve(metric)[0][-1]) for r in rs]
        row = dict(label=label, seeds=[r.seed for r in rs], final_updates=updates,
                   final=mean_sd(finals), best=mean_sd(bests), finals=finals,
                   bleu=mean_sd([r.bleu["sacrebleu"] if r.bleu else None for r in rs]),
                   tok_bleu=mean_sd([r.bleu["tok_bleu_compound_split"] if r.bleu else None for r in rs]),
                   bleus=[r.bleu["sacrebleu"] if r.bleu else None for r in rs],
                   one_kept=mean_sd([one_kept(r) for r in rs]),
                   collapsed_runs=sum(bool(r.collapse) for r in rs),
                   collapsed_experts=sum(len({(c["layer"], c["expert"]) for c in r.collapse}) for r in rs))
        table.append(row)
    result = dict(metric=metric, baseline=baseline, candidate=candidate, table=table,
                  runs={r.name: dict(path=str(r.path), collapse=r.collapse) for r in runs},
                  significance=significance(groups, metric, baseline, candidate))
    if baseline in groups and candidate in groups:
        sp = speedups(groups[baseline], groups[candidate], metric)
        result["speedup_pairs"] = sp
        reached = [p["speedup"] for p in sp if p["speedup"] is not None]
        result["speedup"] = dict(mean_sd=mean_sd(reached), min=min(reached, default=None),
                                 max=max(reached, default=None), reached=len(reached), pairs=len(sp))
    write_json(out / "summary.json", result)
    write_text(out / "summary.md", markdown(result))
    return result


def markdown(res) -> str:
    m = res["metric"]
    lines = [f"| run | seeds | updates | final valid {m} | best valid {m} | sacreBLEU | tok. BLEU | moe_one_kept "
             "| collapsed runs (experts) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["table"]:
        lo, hi = min(r["final_updates"]), max(r["final_updates"])
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {hi if lo == hi else f'{lo}–{hi}'} | {fmt(*r['final'])} | "
                     f"{fmt(*r['best'])} | {fmt(*r['bleu'], digits=2)} | {fmt(*r['tok_bleu'], digits=2)} | "
                     f"{fmt(*r['one_kept'])} | {r['collapsed_runs']} "
                     f"({r['collapsed_experts']}) |")
    lines.append("")
    lines.append(f"Validation {m} in base 2 (fairseq's), mean ± sample s.d. over seeds; moe_one_kept: training "
                 "fraction of tokens whose mask keeps one expert, last 4 log records.")
    if res.get("significance"):
        lines += ["", "Paired statistics (candidate − baseline, same seed). Loss: mean difference, 95% CI and "
                  "p of the paired t-test (scipy), per-seed differences in brackets. BLEU: sacreBLEU's paired "
                  "bootstrap (1000 resamples) per seed, difference (p).", "",
                  f"| candidate − baseline | seeds | final valid {m} | best valid {m} | sacreBLEU, per seed |",
                  "|---|---|---|---|---|"]
        for sg in res["significance"]:
            def loss(d):
                ci = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], p = {d['p_value']:.3f}" if d["ci95"] else ""
                return f"{d['mean']:+.3f}{ci} ({', '.join(f'{x:+.3f}' for x in d['diffs'])})"
            bleu = "; ".join(f"s{s}: {v['difference']:+.2f} (p = {v['p_value']:.3f})" for s, v in sg["bleu"].items())
            lines.append(f"| {sg['candidate']} − {sg['baseline']} | {len(sg['seeds'])} | {loss(sg['final'])} | "
                         f"{loss(sg['best'])} | {bleu or 'n/a'} |")
    if "speedup_pairs" in res:
        b, c = res["baseline"], res["candidate"]
        lines += ["", f"Updates for {c} to reach {b}'s best validation {m} (per seed pair):", "",
                  f"| {b} run | its best | reached at | {c} run | reaches it at | speed-up | "
                  f"final {c} − {b} |", "|---|---|---|---|---|---|---|"]
        for p in res["speedup_pairs"]:
            sp = f"{p['speedup']:.2f}x" if p["speedup"] else "not reached"
            lines.append(f"| {p['baseline']} | {p['baseline_best']:.3f} | {p['baseline_updates']} | "
                         f"{p['candidate']} | {p['candidate_updates'] or '—'} | {sp} | "
                         f"{p['final_difference']:+.3f} |")
        s = res["speedup"]
        if s["reached"]:
            lines += ["", f"Speed-up {fmt(*s['mean_sd'], digits=2)}x (min {s['min']:.2f}x, max {s['max']:.2f}x; "
                      f"reached in {s['reached']} of {s['pairs']} pairs)."]
        else:
            lines += ["", f"{c} never reached {b}'s best validation {m} ({s['pairs']} pairs)."]
    coll = [(name, c) for name, r in res["runs"].items() for c in r["collapse"]]
    if coll:
        lines += ["", "Expert collapse (load below the threshold for several consecutive log records):", ""]
        lines += [f"- {name}: {c['layer']} expert {c['expert']}, updates {c['from_update']}–{c['to_update']}, "
                  f"mean load {c['mean_load']:.2%}" for name, c in coll]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.diagnostics.compare",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=PATH or PATH named <label>-s<seed>")
    p.add_argument("--out", required=True)
    p.add_argument("--baseline", default="switch")
    p.add_argument("--candidate", default="sparsemixer")
    p.add_argument("--metric", default="loss", choices=["loss", "nll_loss", "ppl"])
    p.add_argument("--collapse-threshold", type=float, default=0.01)
    p.add_argument("--collapse-records", type=int, default=4)
    a = p.parse_args(argv)
    setup_logging()
    try:
        runs = parse_runs(a.runs)
        res = summarize(runs, Path(a.out), a.baseline, a.candidate, a.metric, a.collapse_threshold,
                        a.collapse_records)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"compare: error: {e}")
    print(markdown(res))
    print(f"wrote {a.out}/summary.md, summary.json, valid_{a.metric}.png")


if __name__ == "__main__":
    main()
