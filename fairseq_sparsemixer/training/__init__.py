"""What a fairseq training run gets from the plugin besides the model and the criterion:
the patches that importing the plugin installs into fairseq (`atomic_copy`, `progress_log`,
`precision`), the tokens per update on any number of GPUs (`batching`), and the expert-collapse
warning that the criterion raises (`collapse`). Importing this package imports none of them."""
