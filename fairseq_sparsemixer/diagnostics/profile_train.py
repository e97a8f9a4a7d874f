"""Where a fairseq-train update goes: torch.profiler over K updates of a real run.

    python -m fairseq_sparsemixer.diagnostics.profile_train [--warmup W] [--updates K] [--out DIR]
        [--top 15] -- <fairseq-train arguments>

Runs fairseq-train in this process with the given arguments (`--max-update` is set to W + K),
lets W updates pass (cuDNN/cuBLAS plans, the allocator, the loss scale settle), then profiles
the trainer's `train_step` of the next K updates (forward, backward and optimizer step of every
micro-batch of an update; data loading and validation are outside its wall time and GPU
figures; the aten op counts and top ops are over the whole window, so give
--disable-validation --no-save for them to be the updates' alone) with torch.profiler, CPU
activity and, where there is a GPU, CUDA activity. Prints and writes into DIR:

    wall ms per update        each profiled train_step, the device synchronized at both ends
                              (an fp16 step skipped for overflow counts as one)
    GPU-busy share            the union of the GPU's kernel/memcpy/memset intervals within the
                              profiled train_steps over their wall time (1 = the GPU never
                              waited for the host)
    kernel ms per update      the summed duration of the GPU activities
    kernels per update        GPU kernel launches (memcpy/memset counted apart)
    aten ops per update       the CPU-side aten:: operator calls (all nesting levels)
    top ops                   by self CPU time and by self GPU time (torch's key_averages)

DIR/summary.json holds all of it, DIR/trace.json the Chrome/Perfetto trace of the K updates
(open it in https://ui.perfetto.dev or chrome://tracing). A low GPU-busy share with many
kernels means the update is launch-bound (the host issues kernels slower than the GPU runs
them); a few host ops with long self CPU time (e.g. aten::_cudnn_attention_forward, which
plans per batch shape: --attention-backend) point at the cause. One process only
(--distributed-world-size 1 is set; profile one rank of a multi-GPU run that way).
"""
import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from ._io import write_json, write_text

logger = logging.getLogger(__name__)


def split_argv(argv):
    """(our arguments, fairseq-train's): they are separated by `--`."""
    if "--" not in argv:
        raise SystemExit("profile_train: error: give the fairseq-train arguments after '--' "
                         "(e.g. -- DATA --user-dir fairseq_sparsemixer --arch ...)")
    i = argv.index("--")
    return argv[:i], argv[i + 1:]


def _union_us(intervals):
    """Total length of the union of [start, end) intervals (any unit)."""
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)


_GPU_WORK = {"kernel", "gpu_memcpy", "gpu_memset"}


def device_activity(prof):
    """The GPU's work in a finished profile, inside the profiled updates only:
    [(name, start_ns, end_ns, is_kernel)]. Kernels, memcpys and memsets; not the GPU-side spans
    of record_function ranges (user annotations), which cover whole phases, and not what ran
    between two profiled updates (validation, checkpoints), which is outside their wall time."""
    from torch.autograd import DeviceType

    events = list(prof.profiler.kineto_results.events())
    updates = [(e.start_ns(), e.end_ns()) for e in events
               if e.device_type() == DeviceType.CPU and e.name().startswith("update_")]
    out, other = [], Counter()
    for e in events:
        if e.device_type() != DeviceType.CUDA or e.is_user_annotation():
            continue
        kind = e.activity_type()
        if kind not in _GPU_WORK:
            other[kind] += 1
            continue
        if not any(s <= e.start_ns() <= t for s, t in updates):
            continue
        out.append((e.name(), e.start_ns(), e.end_ns(), kind == "kernel"))
    for kind, n in other.items():
        logger.warning(f"profile_train: {n} GPU events of kind {kind!r} are not counted as GPU work")
    return out


def top_ops(prof, key, n):
    """[(op, total ms, calls)] of the `n` largest by `key` ("cpu" or "device"), self time."""
    attr = "self_cpu_time_total" if key == "cpu" else "self_device_time_total"
    rows = [(ev.key, getattr(ev, attr, 0.0) / 1e3, ev.count) for ev in prof.key_averages()]
    rows = [r for r in rows if r[1] > 0]
    return sorted(rows, key=lambda r: -r[1])[:n]


def summarize(prof, walls_s, k, top=15):
    """The summary dict of a profile over `k` updates whose train_step wall times are `walls_s`."""
    wall_ms = [w * 1e3 for w in walls_s]
    act = device_activity(prof)
    aten = sum(ev.count for ev in prof.key_averages() if ev.key.startswith("aten::"))
    res = dict(updates=k, wall_ms_per_update=wall_ms, wall_ms_mean=sum(wall_ms) / len(wall_ms),
               aten_ops_per_update=aten / k, device=("cuda" if act else "cpu"),
               top_cpu_ops=[dict(op=o, ms=round(ms, 3), calls=c) for o, ms, c in top_ops(prof, "cpu", top)])
    if act:
        busy_ms = _union_us([(s, e) for _, s, e, _ in act]) / 1e6
        res.update(
            kernel_ms_per_update=sum(e - s for _, s, e, kern in act if kern) / 1e6 / k,
            kernels_per_update=sum(kern for *_, kern in act) / k,
            memcpy_memset_per_update=sum(not kern for *_, kern in act) / k,
            gpu_busy_share=busy_ms / sum(wall_ms),
            top_gpu_ops=[dict(op=o, ms=round(ms, 3), calls=c) for o, ms, c in top_ops(prof, "device", top)])
    return res


def markdown(res, command) -> str:
    w = res["wall_ms_per_update"]
    lines = [f"profile_train: {res['updates']} updates on {res['device']}", "",
             f"- command: `{command}`",
             f"- wall ms per update: {res['wall_ms_mean']:.1f} (each: {', '.join(f'{x:.1f}' for x in w)})",
             f"- aten ops per update (CPU side, all levels): {res['aten_ops_per_update']:.0f}"]
    if res["device"] == "cuda":
        lines += [f"- GPU-busy share: {res['gpu_busy_share']:.1%}",
                  f"- kernel ms per update: {res['kernel_ms_per_update']:.2f}",
                  f"- kernels per update: {res['kernels_per_update']:.0f} "
                  f"(+ {res['memcpy_memset_per_update']:.0f} memcpy/memset)"]
    else:
        lines.append("- no GPU activity (CPU run): kernel time, kernels and GPU-busy share need CUDA")
    for key, title in (("top_cpu_ops", "self CPU time"), ("top_gpu_ops", "self GPU time")):
        if key in res:
            lines += ["", f"Top ops by {title} (over all {res['updates']} updates):", "",
                      "| op | ms | calls |", "|---|---|---|"]
            lines += [f"| `{r['op']}` | {r['ms']:.2f} | {r['calls']} |" for r in res[key]]
    return "\n".join(lines) + "\n"


def run(warmup, updates, out: Path, train_args, top=15):
    """Run fairseq-train on `train_args`, profile updates warmup+1 .. warmup+updates; the summary."""
    from fairseq import distributed_utils, options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer
    from fairseq_cli import train as fairseq_train

    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, train_args)
    args.max_update = warmup + updates
    args.distributed_world_size = 1
    cfg = convert_namespace_to_omegaconf(args)
    cuda = torch.cuda.is_available() and not args.cpu
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    prof = torch.profiler.profile(activities=activities)
    walls, calls = [], [0]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    original = Trainer.train_step

    def train_step(self, samples, raise_oom=False):
        calls[0] += 1
        i = calls[0]
        if not warmup < i <= warmup + updates:
            return original(self, samples, raise_oom)
        sync()
        if i == warmup + 1:
            prof.start()
        t = time.perf_counter()
        with torch.profiler.record_function(f"update_{i}"):
            result = original(self, samples, raise_oom)
        sync()
        walls.append(time.perf_counter() - t)
        if i == warmup + updates:
            prof.stop()
        return result

    Trainer.train_step = train_step
    try:
        distributed_utils.call_main(cfg, fairseq_train.main)
    finally:
        Trainer.train_step = original
    if len(walls) < updates:
        raise SystemExit(f"profile_train: error: the run ended after {calls[0]} updates, before the "
                         f"{updates} profiled ones after the warmup of {warmup} (more data or a "
                         f"smaller --warmup / --updates)")
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.json"
    prof.export_chrome_trace(str(trace) + ".tmp")
    Path(str(trace) + ".tmp").replace(trace)
    res = summarize(prof, walls, updates, top)
    res.update(warmup=warmup, fairseq_train_args=train_args, torch=torch.__version__,
               gpu=torch.cuda.get_device_name() if cuda else None)
    write_json(out / "summary.json", res)
    text = markdown(res, "fairseq-train " + " ".join(train_args))
    write_text(out / "summary.md", text)
    return res, text


def main(argv=None):
    ours, train_args = split_argv(sys.argv[1:] if argv is None else list(argv))
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.diagnostics.profile_train",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup", type=int, default=20, help="updates before the profile (default 20)")
    p.add_argument("--updates", type=int, default=5, help="updates profiled (default 5)")
    p.add_argument("--out", default="work/profile", help="where summary.json/.md and trace.json go")
    p.add_argument("--top", type=int, default=15, help="ops listed by CPU and by GPU time")
    a = p.parse_args(ours)
    if a.warmup < 0 or a.updates < 1 or a.top < 1:
        p.error(f"need --warmup >= 0, --updates >= 1 and --top >= 1 (got {a.warmup}, {a.updates}, {a.top})")
    if not train_args:
        p.error("no fairseq-train arguments after '--'")
    _, text = run(a.warmup, a.updates, Path(a.out), train_args, a.top)
    print(text)
    print(f"wrote {a.out}/summary.json, summary.md, trace.json")


if __name__ == "__main__":
    main()
