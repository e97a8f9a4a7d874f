"""The WMT'14 pipeline's helpers: corpus cleaning and sentencepiece (`prep`, prepare_wmt14.sh),
checkpoint averaging (`average_checkpoints`) and the reported BLEU (`bleu`), both for
evaluate_wmt14.sh. Apart from the plugin: they import nothing of it, and it imports none of them,
so scripts/*.sh run them as files (`python fairseq_sparsemixer/pipeline/prep.py ...`); `python -m`
works the same but imports the plugin, and with it fairseq, first (~6 s a start)."""
