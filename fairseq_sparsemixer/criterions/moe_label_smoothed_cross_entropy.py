"""Label-smoothed CE plus the MoE auxiliary losses, with routing metrics.

fairseq sums the loss over the micro-batch's target tokens and divides the gradient of the
update by `sample_size` (the target tokens of all its micro-batches and ranks, S). With L MoE
layers, balance loss b_l, z-loss z_l, α = --moe-balance-weight and w_z = --moe-z-loss-weight,
the loss of one micro-batch of s target tokens is

    token-mean (default, the Switch Transformer convention):
        CE_sum + s · α · mean_l b_l + s · w_z · mean_l z_l
        → after fairseq's division: CE_mean + α · mean_l b_l + w_z · mean_l z_l
    batch-sum (the authors' released code, `translation_switch.py` `_get_loss`):
        CE_sum + α · sum_l b_l + s · w_z · mean_l z_l
        → CE_mean + (α · L / (S / #micro-batches)) · mean_l b_l + ...: the effective weight on
          the per-token balance loss is α·L divided by the target tokens of a micro-batch
          (α = 0.01, 6 MoE layers, ~8192 tokens: ~7.3e-6; the cpu-tiny recipe, 4 layers, ~1.6k:
          ~2.5e-5), i.e. tokens / L times weaker than token-mean with the same α: ~1365 times
          at the paper's base model (8192 / 6), ~400 in cpu-tiny (1.6k / 4).

The z-loss is token-mean in both. The logged `loss` and `nll_loss` are the CE alone (comparable
with a dense model); `moe_balance` (the token-weighted mean over micro-batches of mean_l b_l,
the same in both modes) and `moe_zloss` are logged separately.
"""
import logging
import math
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion, LabelSmoothedCrossEntropyCriterionConfig)
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from omegaconf import II

from ..models.introspect import moe_named_layers
from ..modules.attention import ATTENTION_BACKENDS, configure_attention
from ..training.collapse import CollapseMonitor


BALANCE_REDUCTIONS = ["token-mean", "batch-sum"]


@dataclass
class MoELabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig):
    moe_balance_weight: float = field(default=0.01, metadata={
        "help": "weight alpha of the Switch load-balancing loss (the paper's 0.01); how it is "
                "scaled: --moe-balance-reduction"})
    moe_balance_reduction: ChoiceEnum(BALANCE_REDUCTIONS) = field(default="token-mean", metadata={
        "help": "token-mean: loss += tokens * alpha * mean over MoE layers (Switch convention: alpha "
                "is the weight on the per-token loss); batch-sum: loss += alpha * sum over MoE "
                "layers, per micro-batch (the authors' released code: effective weight alpha * "
                "layers / tokens per micro-batch)"})
    moe_z_loss_weight: float = field(default=0.0, metadata={
        "help": "weight of the router z-loss (ST-MoE); 0 = off"})
    moe_no_load_log: bool = field(default=False, metadata={
        "help": "do not log the fraction of tokens per expert of every MoE layer (load_<layer>_e<j>)"})
    moe_collapse_threshold: float = field(default=0.01, metadata={
        "help": "warn when an expert receives less than this fraction of a layer's tokens ..."})
    moe_collapse_batches: int = field(default=200, metadata={
        "help": "... for this many consecutive training batches (0 = no warning)"})
    attention_backend: ChoiceEnum(ATTENTION_BACKENDS) = field(default="auto", metadata={
        "help": "attention kernels on CUDA, for every model this criterion trains (dense too): auto = "
                "cuDNN SDPA off, which replans every new batch shape (measured 6x faster on an H200); "
                "torch = torch's own backend choice (modules/attention.py)"})
    cpu: bool = II("common.cpu")  # --cpu: no CUDA attention to configure


@register_criterion("moe_label_smoothed_cross_entropy", dataclass=MoELabelSmoothedCrossEntropyConfig)
class MoELabelSmoothedCrossEntropyCriterion(LabelSmoothedCrossEntropyCriterion):
    """A model without MoE layers trains as with label_smoothed_cross_entropy (aux loss 0)."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,
                 report_accuracy=False, moe_balance_weight=0.01, moe_z_loss_weight=0.0,
                 moe_balance_reduction="token-mean", moe_no_load_log=False, moe_collapse_threshold=0.01,
                 moe_collapse_batches=200, attention_backend="auto", cpu=False):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        # the one plugin component of every run it trains (the dense baseline too): it sets the
        # process-wide attention backend before the first forward, and says so once
        logging.getLogger("fairseq_cli.train").info(
            configure_attention(attention_backend, torch.cuda.is_available() and not cpu))
        if moe_balance_weight < 0 or moe_z_loss_weight < 0:
            raise ValueError("--moe-balance-weight and --moe-z-loss-weight must be >= 0")
        if moe_balance_reduction not in BALANCE_REDUCTIONS:
            raise ValueError(f"--moe-balance-reduction {moe_balance_reduction!r} is unknown; "
                             f"valid: {', '.join(BALANCE_REDUCTIONS)}")
        self.balance_weight = moe_balance_weight
        self.balance_reduction = moe_balance_reduction
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
        balances = torch.stack([r.balance_loss for _, r in routes])
        z = torch.stack([r.z_loss for _, r in routes]).mean()
        if self.balance_reduction == "token-mean":
            aux_balance = sample_size * self.balance_weight * balances.mean()
        else:  # batch-sum
            aux_balance = self.balance_weight * balances.sum()
        loss = loss + aux_balance + sample_size * self.z_weight * z
        # every logged value of every layer in one device sync: per layer (balance, z-loss,
        # entropy, non-argmax, one-kept, expert counts...) in float64 (counts stay exact)
        rows = torch.stack([torch.cat([torch.stack([r.balance_loss, r.z_loss, r.entropy, r.non_argmax_frac,
                                                    r.one_kept_frac]).detach().double(),
                                       r.expert_counts.double()]) for _, r in routes]).tolist()
        counts = [[int(c) for c in row[5:]] for row in rows]
        n = [sum(c) for c in counts]  # routed (non-pad) tokens of each layer
        if model.training:
            for (name, _), layer_counts, row in zip(routes, counts, rows):
                self.collapse.update(name, layer_counts, one_kept=row[4])
        log.update({
            "moe_balance": sum(row[0] for row in rows) / len(rows) * sample_size,
            "moe_zloss": sum(row[1] for row in rows) / len(rows) * sample_size,
            "moe_tokens": sum(n),  # summed over layers
            **{key: sum(row[j] * k for row, k in zip(rows, n))
               for j, key in ((2, "moe_entropy"), (3, "moe_non_argmax"), (4, "moe_one_kept"))},
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
