"""Which kernels run fairseq's attention on CUDA (`--attention-backend`).

fairseq's `MultiheadAttention` trains through `F.multi_head_attention_forward`, which calls
`F.scaled_dot_product_attention` (SDPA) with the key-padding mask as an explicit mask. torch then
picks the first usable backend in its priority order, and on an H100/H200 with torch 2.11 that is
cuDNN's fused attention. cuDNN builds an execution plan for every new (batch, length) shape, and
fairseq's length-bucketed batches change shape at nearly every update, so the plans never
amortize: measured on an H200 (docs/benchmarks.md, "GPU"), `aten::_cudnn_attention_forward` /
`_backward` cost 7.5 / 9.9 ms of CPU per call for 0.1 ms of kernels, about 200 of a dense
update's 307 ms, and turning cuDNN attention off made fairseq-train 6x faster (dense) and 2.8x
(N = 4) with nothing else changed.

    auto   (default) on CUDA: cuDNN SDPA off; flash, memory-efficient and math attention stay
           on in torch's order (with an explicit mask, the memory-efficient kernel runs). The
           same math: outputs differ by the rounding of another kernel (fp16/bf16).
    torch  torch's own backend choice, untouched.

On the CPU there is no cuDNN attention: both choices are the same computation. The setting is
process-wide (`torch.backends.cuda`), so it covers every model of the run, the dense baseline
included.
"""
import torch

ATTENTION_BACKENDS = ("auto", "torch")


def configure_attention(backend: str, cuda: bool) -> str:
    """Apply `backend` for a run on CUDA (`cuda=True`) or not, and return the one line that says
    what was done (for the start-up log)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"--attention-backend {backend!r} is unknown; valid: {', '.join(ATTENTION_BACKENDS)}")
    if not cuda:
        return "attention: torch's SDPA backends on CPU (no cuDNN attention there; --attention-backend has no effect)"
    if backend == "torch":
        return (f"attention: torch's own SDPA backend order (--attention-backend torch; cuDNN attention "
                f"{'on' if torch.backends.cuda.cudnn_sdp_enabled() else 'off'})")
    torch.backends.cuda.enable_cudnn_sdp(False)
    return ("attention: cuDNN SDPA off (it replans every new batch shape; flash / memory-efficient "
            "attention run instead); --attention-backend torch keeps torch's choice")
