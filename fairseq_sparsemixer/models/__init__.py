from . import switch_transformer  # noqa: F401  (registers the model and its architectures)
