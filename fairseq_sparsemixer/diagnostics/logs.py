"""Read fairseq's json logs (`--log-format json --log-file F`, as scripts/train_wmt14.sh writes).

Each json line is one of
    train_inner   {"num_updates": "50", "loss": ..., "load_enc0_e0": ..., ...}   every --log-interval
    valid         {"valid_loss": ..., "valid_num_updates": "100", ...}           every validation
    train         {"train_loss": ..., "train_num_updates": ...}                  end of an epoch
with the values as strings; they are returned as floats, the prefixes stripped.
"""
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

_JSON = re.compile(r"(\{.*\})\s*$")


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def json_records(path) -> List[dict]:
    """Every json object that ends a line of `path` (fairseq's log file or its console output)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return json_records_of_lines(f)


def json_records_of_lines(lines) -> List[dict]:
    """Every json object that ends one of `lines` (an iterable of strings)."""
    recs = []
    for line in lines:
        m = _JSON.search(line)
        if m:
            try:
                recs.append(json.loads(m.group(1)))
            except json.JSONDecodeError:
                pass
    return recs


@dataclass
class TrainLog:
    inner: List[Dict] = field(default_factory=list)  # train_inner records, by update
    valid: List[Dict] = field(default_factory=list)  # validation records, by update, no duplicates
    epochs: List[Dict] = field(default_factory=list)  # end-of-epoch train records


def _strip(rec, prefix):
    return {k[len(prefix):]: _number(v) for k, v in rec.items() if k.startswith(prefix)}


def read_train_log(path) -> TrainLog:
    """Parse a fairseq json log. A resumed run logs some updates twice; the last record wins."""
    out, valid = TrainLog(), {}
    inner = {}
    for rec in json_records(path):
        if "valid_loss" in rec and "valid_num_updates" in rec:
            r = _strip(rec, "valid_")
            valid[int(r["num_updates"])] = r
        elif "train_loss" in rec:
            out.epochs.append(_strip(rec, "train_"))
        elif "loss" in rec and "num_updates" in rec:
            r = {k: _number(v) for k, v in rec.items()}
            inner[int(r["num_updates"])] = r
    out.inner = [inner[u] for u in sorted(inner)]
    out.valid = [valid[u] for u in sorted(valid)]
    return out


def find_log(path) -> Path:
    """`path` itself if it is a file, else PATH/train.log."""
    p = Path(path)
    if p.is_dir():
        p = p / "train.log"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found (expected a fairseq json log, e.g. SAVE_DIR/train.log)")
    return p
