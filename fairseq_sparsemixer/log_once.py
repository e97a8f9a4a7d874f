"""Write each `--log-file` record once.

fairseq's `progress_bar()` (fairseq/logging/progress_bar.py) adds a new `FileHandler` for
`--log-file` to its module logger on every call, and fairseq-train calls it once per epoch:
epoch k writes every progress and validation record k times, so a WMT'14 run of ~100 epochs
writes its late records ~100 times and its log grows quadratically. Importing the plugin
wraps `progress_bar()` to keep one handler per file (the first).
"""
import logging

from fairseq.logging import progress_bar as _module

_fairseq_progress_bar = _module.progress_bar


def progress_bar(*args, **kwargs):
    bar = _fairseq_progress_bar(*args, **kwargs)
    seen = set()
    for handler in list(_module.logger.handlers):
        if isinstance(handler, logging.FileHandler):
            if handler.baseFilename in seen:
                _module.logger.removeHandler(handler)
                handler.close()
            seen.add(handler.baseFilename)
    return bar


def install():
    _module.progress_bar = progress_bar
