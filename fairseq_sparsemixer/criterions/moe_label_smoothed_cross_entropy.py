"""Label-smoothed CE plus the MoE auxiliary losses, with routing metrics.

fairseq sums the loss over the batch and divides the gradient by `sample_size` (target
tokens). The auxiliary terms are per-token means over the MoE layers, so they enter as

    loss = CE_sum + sample_size · (w_bal · mean_l balance_l + w_z · mean_l z_l)

which after fairseq's division is CE_mean + w_bal · mean balance + w_z · mean z: exactly the
authors' "L = CE + α · balance" with α = --moe-balance-weight (0.01 in the paper).
The logged `loss` and `nll_loss` are the CE alone (comparable with a dense model);
`moe_balance`, `moe_zloss` are logged separately.
"""
import logging
import math
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion, LabelSmoothedCrossEntropyCriterionConfig)
from fairseq.logging import metrics

from ..diagnostics.expert_usage import CollapseMonitor
from ..modules import MoEFeedForward


@dataclass
class MoELabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    moe_balance_weight: float = field(default=0.01, metadata={
        "help": "weight of the Switch load-balancing loss (the paper's alpha = 0.01)"})
    moe_z_loss_weight: float = field(default=0.0, metadata={
        "help": "weight of the router z-loss (ST-MoE); 0 = off"})
    moe_no_load_log: bool = field(default=False, metadata={
        "help": "do not log the fraction of tokens per expert of every MoE layer (load_<layer>_e<j>)"})
    moe_collapse_threshold: float = field(default=0.01, metadata={
        "help": "warn when an expert receives less than this fraction of a layer's tokens ..."})
    moe_collapse_batches: int = field(default=200, metadata={
        "help": "... for this many consecutive training batches (0 = no warning)"})


def _short(name):
    """'encoder.layers.2.fc1' -> 'enc2'."""
    parts = name.split(".")
    side = {"encoder": "enc", "decoder": "dec"}.get(parts[0], parts[0])
    idx = next((p for p in parts[1:] if p.isdigit()), "")
    return side + idx


def moe_named_layers(model):
    return [(_short(n), m) for n, m in model.named_modules() if isinstance(m, MoEFeedForward)]


@register_criterion("moe_label_smoothed_cross_entropy", dataclass=MoELabelSmoothedCrossEntropyConfig)
class MoELabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """A model without MoE layers trains as with label_smoothed_cross_entropy (aux loss 0)."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False, moe_balance_weight=0.01, moe_z_loss_weight=0.0,
                 moe_no_load_log=False, moe_collapse_threshold=0.01, moe_collapse_batches=200):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        if moe_balance_weight < 0 or moe_z_loss_weight < 0:
            raise ValueError("--moe-balance-weight and --moe-z-loss-weight must be >= 0")
        self.balance_weight = moe_balance_weight
        self.z_weight = moe_z_loss_weight
        self.log_load = not moe_no_load_log
        # fairseq-train attaches --log-file to the "fairseq_cli.train" logger: warn there so that
        # the warning reaches SAVE_DIR/train.log as well as the console
        self.collapse = CollapseMonitor(moe_collapse_threshold, moe_collapse_batches,
                                        log=logging.getLogger("fairseq_cli.train"))
        self._layers = None

    def forward(self, model, sample, reduce=True):
        loss, sample_size, log = super().forward(model, sample, reduce)
        if self._layers is None:
            self._layers = moe_named_layers(model)
        routes = [(name, m.last) for name, m in self._layers if m.last is not None]
        if not routes:
            return loss, sample_size, log
        balance = torch.stack([r.balance_loss for _, r in routes]).mean()
        z = torch.stack([r.z_loss for _, r in routes]).mean()
        loss = loss + sample_size * (self.balance_weight * balance + self.z_weight * z)
        counts = [r.expert_counts.tolist() for _, r in routes]  # one device sync per layer
        n = [sum(c) for c in counts]  # routed (non-pad) tokens of each layer
        if model.training:
            for (name, _), layer_counts in zip(routes, counts):
                self.collapse.update(name, layer_counts)
        # every logged scalar in one device sync: per layer (entropy, non-argmax, one-kept)
        per_layer = torch.stack([torch.stack([r.entropy, r.non_argmax_frac, r.one_kept_frac])
                                 for _, r in routes]).tolist()
        log.update({
            "moe_balance": balance.item() * sample_size,
            "moe_zloss": z.item() * sample_size,
            "moe_tokens": sum(n),  # summed over layers
            **{key: sum(row[j] * k for row, k in zip(per_layer, n))
               for j, key in enumerate(("moe_entropy", "moe_non_argmax", "moe_one_kept"))},
        })
        if self.log_load:
            for (name, _), layer_counts, k in zip(routes, counts, n):
                for e, c in enumerate(layer_counts):
                    log[f"load_{name}_e{e}"] = c
                log[f"load_{name}_n"] = k
        return loss, sample_size, log

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size, moe_tokens = total("sample_size"), total("moe_tokens")
        if moe_tokens == 0:
            return
        metrics.log_scalar("moe_balance", total("moe_balance") / sample_size, sample_size, round=4)
        metrics.log_scalar("moe_zloss", total("moe_zloss") / sample_size, sample_size, round=3)
        metrics.log_scalar("moe_entropy", total("moe_entropy") / moe_tokens / math.log(2), moe_tokens, round=3)
        metrics.log_scalar("moe_non_argmax", total("moe_non_argmax") / moe_tokens, moe_tokens, round=3)
        metrics.log_scalar("moe_one_kept", total("moe_one_kept") / moe_tokens, moe_tokens, round=3)
        keys = {k for log in logging_outputs for k in log if k.startswith("load_") and not k.endswith("_n")}
        for key in sorted(keys):
            layer_total = total(key.rsplit("_e", 1)[0] + "_n")
            if layer_total:
                metrics.log_scalar(key, total(key) / layer_total, layer_total, round=3)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
