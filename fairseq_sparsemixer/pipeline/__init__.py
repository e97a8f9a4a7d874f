"""The WMT'14 pipeline's helpers, run by scripts/*.sh as `python -m`: corpus cleaning and
sentencepiece (`prep`, prepare_wmt14.sh), checkpoint averaging (`average_checkpoints`) and the
reported BLEU (`bleu`), both for evaluate_wmt14.sh. Apart from the plugin: they import nothing
of it, and it imports none of them."""
