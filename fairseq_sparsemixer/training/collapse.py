"""Expert collapse during training: `CollapseMonitor` warns in the training log when an expert
has received almost none of its layer's tokens for many consecutive batches, and when it
recovers. The criterion feeds it each training batch's expert counts. A finished run's logged
loads are searched for collapse offline by `diagnostics.expert_usage.find_collapse`.
"""
import logging
from collections import defaultdict
from typing import List, Optional, Sequence

logger = logging.getLogger(__name__)


class CollapseMonitor:
    """Warns when an expert has received < `threshold` of a layer's tokens for `patience`
    consecutive training batches (once per episode; again after it recovers and collapses
    anew), and when it recovers. Plain Python; the criterion feeds it each batch's counts."""

    def __init__(self, threshold: float = 0.01, patience: int = 200, log: logging.Logger = logger):
        self.threshold = threshold
        self.patience = patience
        self.log = log
        self.low = defaultdict(int)  # (layer, expert) -> consecutive low batches

    @staticmethod
    def advice(one_kept: Optional[float]) -> str:
        """What can revive the expert. The balance loss N·Σ f_e·P̄_e reaches a token's router
        only through ∂P/∂θ, which is 0 where a SparseMixer mask keeps a single expert."""
        if not one_kept:
            return "consider a larger --moe-balance-weight"
        return (f"{one_kept:.0%} of this layer's tokens keep a single expert in the SparseMixer mask and give "
                f"its router no gradient, from the balance loss neither, so a larger --moe-balance-weight acts "
                f"only through the other {1 - one_kept:.0%}; a larger --moe-jitter-eps (a wider mask) gives "
                f"it more tokens")

    def update(self, layer: str, counts: Sequence[int], one_kept: Optional[float] = None) -> List[str]:
        """`one_kept`: the batch's fraction of this layer's tokens whose mask keeps one expert."""
        total = sum(counts)
        if self.patience <= 0 or total == 0:
            return []
        msgs = []
        for e, c in enumerate(counts):
            key, frac = (layer, e), c / total
            if frac < self.threshold:
                self.low[key] += 1
                if self.low[key] == self.patience:
                    msgs.append(f"expert collapse: MoE layer {layer} expert {e} has received < "
                                f"{self.threshold:.0%} of the tokens for {self.patience} consecutive batches "
                                f"(now {frac:.2%}); {self.advice(one_kept)}")
            else:
                if self.low[key] >= self.patience:
                    msgs.append(f"expert collapse over: MoE layer {layer} expert {e} receives "
                                f"{frac:.2%} of the tokens again after {self.low[key]} batches")
                self.low[key] = 0
        for m in msgs:
            self.log.warning(m)
        return msgs
