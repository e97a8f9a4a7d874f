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
translations that scripts/evaluate_wmt14.sh recorded in eval_test.json (paths relative to the
run directory; absolute in older files).

Two runs are paired at the same training length: "final" is the value at U, the last update
validated in both runs, and "best" the best up to U (a run still training is compared with
the other at its own last validation, not the other's); the summary gives U for every pair,
and a pair without a validated update in common is not compared (one line says so). BLEU is
paired only where both translations come from the same update (eval_test.json's
num_updates) or an update is unknown (older files; the summary says "update ?").

Speed-up metric (the paper's "reaches Switch's quality in up to 2x fewer updates"), per seed
pair (same seed; every pair when the seeds differ), over the updates up to U as above: with
b* = the best validation <metric> of the baseline run and u_b the first update at which the
baseline reaches it, u_c = the first validated update at which the candidate is <= b*;
speed-up = u_b / u_c. Resolution is the validation interval; "not reached" when the candidate
never gets there.

Each run's CPU thread count is read from the `# torch threads K` line that
scripts/train_wmt14.sh writes into its command.txt ("unknown" without it). CPU training is
bit-reproducible only at a fixed thread count: the summary warns, in one line, where runs
that are paired were trained on CPU at different or unknown thread counts.
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
_THREADS = re.compile(r"^# torch threads (\S+) ", re.M)  # scripts/train_wmt14.sh's command.txt
UNKNOWN = "unknown"


@dataclass
class Run:
    label: str
    seed: str
    path: Path
    log: TrainLog
    bleu: Optional[dict] = None
    collapse: List[dict] = field(default_factory=list)
    threads: str = UNKNOWN  # torch's CPU thread count of the training, from command.txt
    cpu: Optional[bool] = None  # trained with --cpu (None: no command.txt)

    @property
    def name(self):
        return f"{self.label}-s{self.seed}"

    @property
    def dir(self) -> Path:
        """The run directory: the one holding the log, eval_test.json and command.txt."""
        return self.path.parent

    def curve(self, metric, until=None):
        """(updates, values) of the validation records that carry `metric` (up to `until`)."""
        pts = [(int(r["num_updates"]), float(r[metric])) for r in self.log.valid if metric in r]
        pts = [(u, v) for u, v in pts if until is None or u <= until]
        return np.array([u for u, _ in pts], dtype=int), np.array([v for _, v in pts])

    def eval_file(self, key) -> Path:
        """A file named in eval_test.json: relative to the run directory (absolute in older files)."""
        p = Path(self.bleu[key])
        return p if p.is_absolute() else self.dir / p


def read_threads(run_dir: Path):
    """(thread count as a string or "unknown", trained on CPU or None) from RUN/command.txt."""
    f = run_dir / "command.txt"
    if not f.is_file():
        return UNKNOWN, None
    text = f.read_text(encoding="utf-8", errors="replace")
    m = _THREADS.search(text)
    threads = m.group(1) if m and m.group(1).isdigit() else UNKNOWN
    return threads, " --cpu " in f" {text.splitlines()[0] if text else ''} "


def common_update(a: Run, b: Run, metric: str) -> Optional[int]:
    """The last update validated in both runs (None if there is none)."""
    both = set(a.curve(metric)[0].tolist()) & set(b.curve(metric)[0].tolist())
    return max(both) if both else None


def span(run: Run, metric: str) -> str:
    u = run.curve(metric)[0]
    return f"{run.name} validated at {u[0]}–{u[-1]}" if len(u) > 1 else f"{run.name} validated at {u[0]}"


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
    threads, cpu = read_threads(path.parent)
    return Run(label, seed, path, log, bleu, threads=threads, cpu=cpu)


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
        until = common_update(b, c, metric)
        if until is None:
            out.append(dict(baseline=b.name, candidate=c.name, until=None,
                            unpaired=f"{span(b, metric)}, {span(c, metric)}"))
            continue
        bu, bv = b.curve(metric, until)
        cu, cv = c.curve(metric, until)
        best = float(bv.min())
        u_b = reach(bu, bv, best)
        u_c = reach(cu, cv, best)
        out.append(dict(baseline=b.name, candidate=c.name, until=until, baseline_best=best, baseline_updates=u_b,
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
    ref_b, ref_c = base.eval_file("reference"), cand.eval_file("reference")
    refs = _read_lines(ref_b)
    # the same references may sit at two paths (a copy in each run dir, another checkout)
    if ref_c.resolve() != ref_b.resolve() and _read_lines(ref_c) != refs:
        raise ValueError(f"{base.name} and {cand.name} were evaluated against different references")
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    systems = [(r.name, _read_lines(r.eval_file("hypotheses"))) for r in (base, cand)]
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
        shared = sorted(set(runs_a) & set(runs_b), key=lambda s: (len(s), s))
        if not shared:
            continue
        at = {s: common_update(runs_a[s], runs_b[s], metric) for s in shared}
        seeds = [s for s in shared if at[s] is not None]
        unpaired = {s: f"{span(runs_a[s], metric)}, {span(runs_b[s], metric)}" for s in shared if at[s] is None}
        final, best = [], []
        for s in seeds:
            (_, va), (_, vb) = runs_a[s].curve(metric, at[s]), runs_b[s].curve(metric, at[s])
            final.append(float(vb[-1] - va[-1]))
            best.append(float(vb.min() - va.min()))
        bleu, bleu_unpaired = {}, {}
        for s in shared:
            ua, ub = ((r.bleu or {}).get("num_updates") for r in (runs_a[s], runs_b[s]))
            if ua is not None and ub is not None and ua != ub:
                bleu_unpaired[s] = f"{runs_a[s].name} translated at update {ua}, {runs_b[s].name} at {ub}"
                continue
            v = paired_bleu(runs_a[s], runs_b[s])
            if v:
                bleu[s] = dict(v, update=ua if ua is not None and ub is not None else None)
        out.append(dict(baseline=a, candidate=b, seeds=seeds, updates={s: at[s] for s in seeds},
                        final=dict(paired_t(final), diffs=final) if seeds else None,
                        best=dict(paired_t(best), diffs=best) if seeds else None,
                        unpaired=unpaired, bleu=bleu, bleu_unpaired=bleu_unpaired))
    return out


def thread_warning(runs: Dict[str, Run], pairs) -> Optional[str]:
    """One line when paired runs trained on CPU (or on an unknown device) at different or
    unknown thread counts; None otherwise."""
    bad = []
    for a, b in pairs:
        ra, rb = runs[a], runs[b]
        if ra.cpu is False and rb.cpu is False:  # both on GPU: the CPU thread count is moot
            continue
        if UNKNOWN in (ra.threads, rb.threads) or ra.threads != rb.threads:
            bad.append(f"{a} {ra.threads} / {b} {rb.threads}")
    if not bad:
        return None
    return (f"Warning: paired runs trained at different or unknown CPU thread counts ({'; '.join(sorted(set(bad)))}): "
            "CPU training is bit-reproducible only at a fixed thread count, so their differences also hold "
            "that of the thread count.")


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
    last = []  # (updates, mean, min, max) of every plotted curve
    for label, runs in groups.items():
        curve = mean_curve(runs, metric)
        if len(curve[0]):
            series = [(f"{label} (n={len(runs)})", curve)]
        else:  # the seeds share no validated update: no mean, each run on its own
            logger.warning(f"the runs of {label} share no validated update: plotted one by one, without a mean")
            series = [(r.name, (u, v, v, v)) for r in runs for u, v in [r.curve(metric)]]
        for name, (u, m, lo, hi) in series:
            for ax in axes:
                line, = ax.plot(u, m, label=name)
                ax.fill_between(u, lo, hi, color=line.get_color(), alpha=0.2)
            last.append((u, m, lo, hi))
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
                   collapsed_experts=sum(len({(c["layer"], c["expert"]) for c in r.collapse}) for r in rs),
                   threads=sorted({r.threads for r in rs}, key=lambda t: (t == UNKNOWN, len(t), t)))
        table.append(row)
    sig = significance(groups, metric, baseline, candidate)
    result = dict(metric=metric, baseline=baseline, candidate=candidate, table=table,
                  runs={r.name: dict(path=str(r.path), collapse=r.collapse, threads=r.threads, cpu=r.cpu)
                        for r in runs},
                  significance=sig)
    pairs = [(f"{sg['baseline']}-s{s}", f"{sg['candidate']}-s{s}") for sg in sig
             for s in sorted(set(sg["seeds"]) | set(sg["bleu"]))]
    if baseline in groups and candidate in groups:
        sp = speedups(groups[baseline], groups[candidate], metric)
        result["speedup_pairs"] = sp
        pairs += [(p["baseline"], p["candidate"]) for p in sp if p["until"] is not None]
        reached = [p["speedup"] for p in sp if p.get("speedup") is not None]
        result["speedup"] = dict(mean_sd=mean_sd(reached), min=min(reached, default=None),
                                 max=max(reached, default=None), reached=len(reached),
                                 pairs=sum(p["until"] is not None for p in sp))
    result["thread_warning"] = thread_warning({r.name: r for r in runs}, pairs)
    write_json(out / "summary.json", result)
    write_text(out / "summary.md", markdown(result))
    return result


def _at(updates: dict) -> str:
    """'400' when every seed pair was compared at one update, else 's1: 400, s2: 800'."""
    if not updates:
        return "—"
    if len(set(updates.values())) == 1:
        return str(next(iter(updates.values())))
    return ", ".join(f"s{s}: {u}" for s, u in updates.items())


def markdown(res) -> str:
    m = res["metric"]
    lines = [f"| run | seeds | updates | final valid {m} | best valid {m} | sacreBLEU | tok. BLEU | moe_one_kept "
             "| collapsed runs (experts) | threads |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["table"]:
        lo, hi = min(r["final_updates"]), max(r["final_updates"])
        lines.append(f"| {r['label']} | {len(r['seeds'])} | {hi if lo == hi else f'{lo}–{hi}'} | {fmt(*r['final'])} | "
                     f"{fmt(*r['best'])} | {fmt(*r['bleu'], digits=2)} | {fmt(*r['tok_bleu'], digits=2)} | "
                     f"{fmt(*r['one_kept'])} | {r['collapsed_runs']} "
                     f"({r['collapsed_experts']}) | {', '.join(r['threads'])} |")
    lines.append("")
    lines.append(f"Validation {m} in base 2 (fairseq's), mean ± sample s.d. over seeds, each run at its last "
                 "validation (updates); moe_one_kept: training fraction of tokens whose mask keeps one expert, "
                 "last 4 log records; threads: torch's CPU threads of the training (command.txt).")
    if res.get("thread_warning"):
        lines += ["", res["thread_warning"]]
    if res.get("significance"):
        lines += ["", "Paired statistics (candidate − baseline, same seed), each pair at the last update both runs "
                  "validated (at update) and the best up to it. Loss: mean difference, 95% CI and "
                  "p of the paired t-test (scipy), per-seed differences in brackets. BLEU: sacreBLEU's paired "
                  "bootstrap (1000 resamples) per seed, difference (p) and the update translated.", "",
                  f"| candidate − baseline | seeds | at update | final valid {m} | best valid {m} | "
                  "sacreBLEU, per seed |", "|---|---|---|---|---|---|"]
        notes = []
        for sg in res["significance"]:
            def loss(d):
                if d is None:
                    return "n/a"
                ci = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], p = {d['p_value']:.3f}" if d["ci95"] else ""
                return f"{d['mean']:+.3f}{ci} ({', '.join(f'{x:+.3f}' for x in d['diffs'])})"
            bleu = "; ".join(f"s{s}: {v['difference']:+.2f} (p = {v['p_value']:.3f}), update "
                             f"{v['update'] if v['update'] is not None else '?'}" for s, v in sg["bleu"].items())
            lines.append(f"| {sg['candidate']} − {sg['baseline']} | {len(sg['seeds'])} | {_at(sg['updates'])} | "
                         f"{loss(sg['final'])} | {loss(sg['best'])} | {bleu or 'n/a'} |")
            pair = f"{sg['candidate']} − {sg['baseline']}, seed"
            notes += [f"- {pair} {s}: no validated update in common ({why}): validation not compared."
                      for s, why in sg["unpaired"].items()]
            notes += [f"- {pair} {s}: {why}: BLEU not compared." for s, why in sg["bleu_unpaired"].items()]
        if notes:
            lines += [""] + notes
    if "speedup_pairs" in res:
        b, c = res["baseline"], res["candidate"]
        lines += ["", f"Updates for {c} to reach {b}'s best validation {m} (per seed pair, both runs up to the last "
                  "update both validated):", "",
                  f"| {b} run | up to update | its best | reached at | {c} run | reaches it at | speed-up | "
                  f"final {c} − {b} |", "|---|---|---|---|---|---|---|---|"]
        unpaired = []
        for p in res["speedup_pairs"]:
            if p["until"] is None:
                unpaired.append(f"- {p['candidate']} − {p['baseline']}: no validated update in common "
                                f"({p['unpaired']}): not compared.")
                continue
            sp = f"{p['speedup']:.2f}x" if p["speedup"] else "not reached"
            lines.append(f"| {p['baseline']} | {p['until']} | {p['baseline_best']:.3f} | {p['baseline_updates']} | "
                         f"{p['candidate']} | {p['candidate_updates'] or '—'} | {sp} | "
                         f"{p['final_difference']:+.3f} |")
        s = res["speedup"]
        if s["reached"]:
            lines += ["", f"Speed-up {fmt(*s['mean_sd'], digits=2)}x (min {s['min']:.2f}x, max {s['max']:.2f}x; "
                      f"reached in {s['reached']} of {s['pairs']} pairs)."]
        elif s["pairs"]:
            lines += ["", f"{c} never reached {b}'s best validation {m} ({s['pairs']} pairs)."]
        if unpaired:
            lines += [""] + unpaired
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
