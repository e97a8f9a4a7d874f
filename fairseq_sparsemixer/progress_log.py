"""fairseq's progress records: each written once to `--log-file`, and readable on the console.

1. fairseq's `progress_bar()` (fairseq/logging/progress_bar.py) adds a new `FileHandler` for
   `--log-file` to its module logger on every call, and fairseq-train calls it once per epoch:
   epoch k writes every progress and validation record k times, so a WMT'14 run of ~100 epochs
   writes its late records ~100 times and its log grows quadratically. The wrapper keeps one
   handler per file (the first).
2. The criterion logs the load of every expert of every MoE layer (`load_<layer>_e<j>`: 16
   fields per line at 4 layers x 4 experts, 64 at N = 16). The log file and tensorboard keep
   them all (the heatmaps read them); on the console (the root logger's stream handlers) a
   json progress line shows instead one `load_min_<layer>`, the least-loaded expert's share.

Importing the plugin installs both (`install()`).
"""
import json
import logging
import re

from fairseq.logging import progress_bar as _module

_fairseq_progress_bar = _module.progress_bar
_LOAD = re.compile(r"^(?P<prefix>\w*?)load_(?P<layer>[a-z]+\d*)_e\d+$")


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


class ConsoleLoads(logging.Filter):
    """On a console handler: json progress records with per-expert loads get them condensed.
    The file handler of the progress logger has already written the full record by then (a
    logger's own handlers run before its parents')."""

    def filter(self, record):
        msg = record.msg
        if isinstance(msg, str) and msg.startswith("{") and "load_" in msg and not record.args:
            try:
                record.msg = json.dumps(condense_loads(json.loads(msg)))
            except (ValueError, TypeError):
                pass
        return True


def progress_bar(*args, **kwargs):
    bar = _fairseq_progress_bar(*args, **kwargs)
    seen = set()
    for handler in list(_module.logger.handlers):
        if isinstance(handler, logging.FileHandler):
            if handler.baseFilename in seen:
                _module.logger.removeHandler(handler)
                handler.close()
            seen.add(handler.baseFilename)
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler) and isinstance(handler, logging.StreamHandler) \
                and not any(isinstance(f, ConsoleLoads) for f in handler.filters):
            handler.addFilter(ConsoleLoads())
    return bar


def install():
    _module.progress_bar = progress_bar
