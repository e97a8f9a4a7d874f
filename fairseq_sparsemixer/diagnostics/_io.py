"""Atomic outputs: write to PATH.tmp, then rename, so no half-written file is ever left."""
import json
import os


def write_text(path, text):
    path = str(path)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2) + "\n")


def save_figure(fig, path, dpi=100):
    path = str(path)
    tmp = path + ".tmp.png"  # matplotlib picks the format from the extension
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


def setup_logging():
    """For our command-line tools: INFO to stderr. (Importing fairseq's text_to_speech task,
    which `import fairseq_sparsemixer` does, sets the root logger to DEBUG.)"""
    import logging

    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
