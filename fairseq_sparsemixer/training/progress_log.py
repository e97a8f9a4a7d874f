"""fairseq's progress records: each written once to `--log-file`, and readable on the console.

1. fairseq's `progress_bar()` (fairseq/logging/progress_bar.py) adds a new `FileHandler` for
   `--log-file` to its module logger on every call, and fairseq-train calls it once per epoch:
   epoch k writes every progress and validation record k times, so a WMT'14 run of ~100 epochs
   writes its late records ~100 times and its log grows quadratically. The wrapper keeps one
   handler per file: the newest, which fairseq has just opened on the path as it is now (a log
   file deleted and recreated meanwhile is written, not the deleted one).
2. The criterion logs the load of every expert of every MoE layer (`load_<layer>_e<j>`: 16
   fields per line at 4 layers x 4 experts, 64 at N = 16). The console shows instead one
   `load_min_<layer>` per layer, the least-loaded expert's share, in every console format of
   fairseq: json and simple lines and the end-of-epoch `key value | ...` lines (the root
   logger's console handlers format a condensed copy of the record, so the handlers after them,
   such as Hydra's hydra_train.log, still get the record whole), and tqdm's bar. `--log-file`,
   Hydra's log file and tensorboard keep every field (the heatmaps and collapse search read them).

Importing the plugin installs both (`install()`).
"""
import copy
import json
import logging
import os
import re

from fairseq.logging import progress_bar as _module

_fairseq_progress_bar = _module.progress_bar
_LOAD = re.compile(r"^(?P<prefix>\w*?)load_(?P<layer>[a-z]+\d*)_e\d+$")
# a field of fairseq's text lines: ", key=value" (simple) or " | key value" (end of epoch)
_TEXT_LOAD = re.compile(r"(?P<sep>, | \| )(?P<prefix>\w*?)load_(?P<layer>[a-z]+\d*)_e\d+(?P<eq>[= ])"
                        r"(?P<value>[^\s,|]+)(?=,|\s|$)")


def condense_loads(stats: dict) -> dict:
    """`load_<layer>_e<j>` fields -> one `load_min_<layer>` (the smallest) at the first one's place."""
    out, mins = {}, {}
    for key, value in stats.items():
        m = _LOAD.match(key)
        if not m:
            out[key] = value
            continue
        short = f"{m['prefix']}load_min_{m['layer']}"
        if short not in mins or float(value) < float(mins[short]):
            mins[short] = value
        out[short] = None  # keeps the place of the layer's first field
    return {k: (mins[k] if k in mins else v) for k, v in out.items()}


def condense_line(msg: str) -> str:
    """A progress line of any fairseq format with its per-expert loads condensed (or as it is)."""
    if "load_" not in msg:
        return msg
    if msg.startswith("{"):
        try:
            return json.dumps(condense_loads(json.loads(msg)))
        except (ValueError, TypeError):
            return msg
    mins = {}
    for m in _TEXT_LOAD.finditer(msg):
        short = f"{m['prefix']}load_min_{m['layer']}"
        try:
            value = float(m["value"])
        except ValueError:
            return msg
        if short not in mins or value < mins[short][0]:
            mins[short] = (value, m["value"])
    done = set()

    def field(m):
        short = f"{m['prefix']}load_min_{m['layer']}"
        if short in done:
            return ""
        done.add(short)
        return f"{m['sep']}{short}{m['eq']}{mins[short][1]}"

    return _TEXT_LOAD.sub(field, msg)


class ConsoleFormatter(logging.Formatter):
    """Wraps a console handler's formatter: formats a copy of each record with its loads
    condensed; the record itself, which later handlers receive, is left whole."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record):
        if isinstance(record.msg, str) and not record.args:
            short = condense_line(record.msg)
            if short is not record.msg:
                record = copy.copy(record)
                record.msg = short
        return self.inner.format(record)


def _condense_tqdm(bar):
    """tqdm's bar shows every logged field in its postfix (console only): condensed."""
    log = bar.log

    def condensed(stats, tag=None, step=None):
        try:
            stats = condense_loads(stats)
        except (TypeError, ValueError):
            pass
        return log(stats, tag=tag, step=step)

    bar.log = condensed


def progress_bar(*args, **kwargs):
    bar = _fairseq_progress_bar(*args, **kwargs)
    seen = set()
    for handler in reversed(list(_module.logger.handlers)):  # the newest first
        if isinstance(handler, logging.FileHandler):
            key = os.path.realpath(handler.baseFilename)
            if key in seen:
                _module.logger.removeHandler(handler)
                handler.close()
            seen.add(key)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler.formatter, ConsoleFormatter):
            handler.setFormatter(ConsoleFormatter(handler.formatter))
    inner = bar
    while hasattr(inner, "wrapped_bar"):  # tensorboard, wandb, ... wrappers: they keep every field
        inner = inner.wrapped_bar
    if isinstance(inner, _module.TqdmProgressBar):
        _condense_tqdm(inner)
    return bar


def install():
    _module.progress_bar = progress_bar
