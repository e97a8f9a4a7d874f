"""Corpus preparation helpers used by scripts/prepare_wmt14.sh (no fairseq import).

    python -m fairseq_sparsemixer.pipeline.prep clean SRC TGT OUT_SRC OUT_TGT [--train]
    python -m fairseq_sparsemixer.pipeline.prep sgm IN.sgm OUT
    python -m fairseq_sparsemixer.pipeline.prep spm-train MODEL_PREFIX VOCAB FILE...
    python -m fairseq_sparsemixer.pipeline.prep spm-encode MODEL IN OUT

Every command writes OUT through a temporary file renamed at the end, and exits with one
line `prep: error: ...` (status 1) on bad input.

Cleaning (training data only, `--train`), as fairseq's WMT recipe (clean-corpus-n.perl with
ratio 1.5, lengths 1-250) plus exact de-duplication of pairs:
  * drop a pair when either side has 0 or > 250 whitespace words, or the word-count ratio
    exceeds 1.5 (either way), or the pair was seen before, or a side is not valid UTF-8;
  * whitespace is normalised (runs of spaces/tabs -> one space, stripped).
valid/test are never filtered (every reference line is kept): only whitespace is
normalised and invalid UTF-8 bytes replaced (U+FFFD), with a warning.
"""
import argparse
import os
import re
import sys

_WS = re.compile(r"\s+")


class PrepError(Exception):
    pass


def _lines(path):
    if not os.path.isfile(path):
        raise PrepError(f"missing input file {path}")
    with open(path, "rb") as f:
        return f.read().split(b"\n")[:-1] if os.path.getsize(path) else []


def _atomic_write(path, lines):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def _norm(text):
    return _WS.sub(" ", text).strip()


def clean(src, tgt, out_src, out_tgt, train=False, max_len=250, ratio=1.5):
    a, b = _lines(src), _lines(tgt)
    if len(a) != len(b):
        raise PrepError(f"{src} has {len(a)} lines but {tgt} has {len(b)}: "
                        "the two sides of a parallel corpus must have equal line counts")
    kept_a, kept_b, seen, bad_utf8 = [], [], set(), 0
    for x, y in zip(a, b):
        try:
            xs, ys = _norm(x.decode("utf-8")), _norm(y.decode("utf-8"))
        except UnicodeDecodeError:
            bad_utf8 += 1
            if train:
                continue
            xs, ys = (_norm(t.decode("utf-8", errors="replace")) for t in (x, y))
        if train:
            nx, ny = len(xs.split()), len(ys.split())
            if not (1 <= nx <= max_len and 1 <= ny <= max_len) or nx > ratio * ny or ny > ratio * nx:
                continue
            if (xs, ys) in seen:
                continue
            seen.add((xs, ys))
        kept_a.append(xs)
        kept_b.append(ys)
    if bad_utf8:
        what = "dropped" if train else "kept with U+FFFD replacements"
        print(f"prep: warning: {bad_utf8} pair(s) of {src} with invalid UTF-8 {what}", file=sys.stderr)
    if not kept_a:
        raise PrepError(f"no sentence pair of {src} / {tgt} survived cleaning")
    _atomic_write(out_src, kept_a)
    _atomic_write(out_tgt, kept_b)
    print(f"prep: {src}: {len(a)} pairs -> {len(kept_a)} kept")


_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.IGNORECASE)


def sgm(path, out):
    import html

    segs = [html.unescape(m.group(1)).strip() for line in _lines(path)
            if (m := _SEG.search(line.decode("utf-8", errors="replace")))]
    if not segs:
        raise PrepError(f"{path} has no <seg> lines: not an SGML test set")
    _atomic_write(out, segs)


def spm_train(prefix, vocab_size, files, threads=2):
    """Joint BPE model -> PREFIX.model (+ PREFIX.vocab). Sentences are read and the model
    written through streams, so the model embeds no path: the same corpus gives a
    byte-identical model wherever it lives."""
    import io

    import sentencepiece as spm

    for f in files:
        if not os.path.isfile(f):
            raise PrepError(f"missing input file {f}")
    model = io.BytesIO()
    spm.set_random_generator_seed(1)  # the sentence shuffle is seeded from the clock otherwise

    def sentences():
        for path in files:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    yield line.rstrip("\n")

    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_writer=model, vocab_size=int(vocab_size), model_type="bpe",
        character_coverage=1.0, input_sentence_size=10_000_000, shuffle_input_sentence=True,
        num_threads=threads, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _atomic_write(prefix + ".vocab", (f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}" for i in range(len(sp))))
    tmp = f"{prefix}.model.tmp.{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(model.getvalue())
    os.replace(tmp, prefix + ".model")  # last: its presence means "done"


def spm_encode(model, path, out):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    lines = [line.decode("utf-8") for line in _lines(path)]
    _atomic_write(out, (" ".join(p) for p in sp.encode(lines, out_type=str)))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.pipeline.prep")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("clean")
    c.add_argument("src"), c.add_argument("tgt"), c.add_argument("out_src"), c.add_argument("out_tgt")
    c.add_argument("--train", action="store_true")
    c.add_argument("--max-len", type=int, default=250)
    c.add_argument("--ratio", type=float, default=1.5)
    s = sub.add_parser("sgm")
    s.add_argument("path"), s.add_argument("out")
    t = sub.add_parser("spm-train")
    t.add_argument("prefix"), t.add_argument("vocab_size", type=int), t.add_argument("files", nargs="+")
    e = sub.add_parser("spm-encode")
    e.add_argument("model"), e.add_argument("path"), e.add_argument("out")
    a = p.parse_args(argv)
    try:
        if a.cmd == "clean":
            clean(a.src, a.tgt, a.out_src, a.out_tgt, a.train, a.max_len, a.ratio)
        elif a.cmd == "sgm":
            sgm(a.path, a.out)
        elif a.cmd == "spm-train":
            spm_train(a.prefix, a.vocab_size, a.files)
        else:
            spm_encode(a.model, a.path, a.out)
    except PrepError as err:
        sys.exit(f"prep: error: {err}")


if __name__ == "__main__":
    main()
