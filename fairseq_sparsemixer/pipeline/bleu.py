"""BLEU as reported by scripts/evaluate_wmt14.sh.

(a) detokenized sacreBLEU (13a) against the raw references, with its signature;
(b) "tokenized BLEU with compound splitting", the number in the paper's tables (and in
    fairseq's/tensor2tensor's WMT'14 En-De results): Moses-tokenize hypothesis and
    reference, split hyphenated compounds (a-b -> a ##AT##-##AT## b), then BLEU with no
    further tokenization (multi-bleu.perl equivalent).

    python -m fairseq_sparsemixer.pipeline.bleu --hyp H --ref R --lang de [--json OUT]
"""
import argparse
import json
import os
import re
import sys

_COMPOUND = re.compile(r"(\S)-(\S)")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def compound_split(line):
    r"""One left-to-right pass, as fairseq's compound_split_bleu.sh (perl s{(\S)-(\S)}{...}g):
    'a-b-c' -> 'a ##AT##-##AT## b-c' (the middle character is consumed by the first match)."""
    return _COMPOUND.sub(r"\1 ##AT##-##AT## \2", line)


def scores(hyps, refs, lang="de"):
    import sacrebleu
    from sacremoses import MosesTokenizer

    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    bleu = sacrebleu.metrics.BLEU()
    detok = bleu.corpus_score(hyps, [refs])
    mt = MosesTokenizer(lang=lang)

    def tok(s):
        return compound_split(mt.tokenize(s, return_str=True, escape=False))

    tok_bleu = sacrebleu.metrics.BLEU(tokenize="none", force=True).corpus_score(
        [tok(h) for h in hyps], [[tok(r) for r in refs]])
    return {"sacrebleu": round(detok.score, 2), "sacrebleu_signature": str(bleu.get_signature()),
            "sacrebleu_text": detok.format(signature=str(bleu.get_signature())), "tok_bleu_compound_split": round(tok_bleu.score, 2),
            "sentences": len(hyps)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fairseq_sparsemixer.pipeline.bleu")
    p.add_argument("--hyp", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--lang", default="de")
    p.add_argument("--json")
    a = p.parse_args(argv)
    try:
        r = scores(_read(a.hyp), _read(a.ref), a.lang)
    except ValueError as e:
        sys.exit(f"bleu: error: {a.hyp}: {e}")
    print(r["sacrebleu_text"])
    print(f"tokenized BLEU with compound splitting: {r['tok_bleu_compound_split']}")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(r, f, indent=2)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
