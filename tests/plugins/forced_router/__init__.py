"""Test-only --user-dir: fairseq_sparsemixer plus a router `force0` that sends every token to
expert 0 (so the other experts receive no token in any step)."""
import torch

import fairseq_sparsemixer  # noqa: F401  (registers the model and the criterion)
from fairseq_sparsemixer.routers import ROUTERS
from fairseq_sparsemixer.routers.sparsemixer import SparseMixerRouter


class ForceZeroRouter(SparseMixerRouter):
    name = "force0"

    def select(self, logits):
        index, gate, probs = super().select(logits)
        index = torch.zeros_like(index)
        return index, probs.gather(-1, index), probs


ROUTERS[ForceZeroRouter.name] = ForceZeroRouter


# A criterion that also appends "<update> <checksum of all parameters>" to $PROBE_DIR/rank<R>.txt
# at every training forward, so that a test can compare the replicas of a distributed run.
import os  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from fairseq.criterions import register_criterion  # noqa: E402
from fairseq_sparsemixer.criterions.moe_label_smoothed_cross_entropy import (  # noqa: E402
    MoELabelSmoothedCrossEntropyConfig, MoELabelSmoothedCrossEntropyCriterion)


@dataclass
class ProbeConfig(MoELabelSmoothedCrossEntropyConfig):
    pass


@register_criterion("moe_probe", dataclass=ProbeConfig)
class ProbeCriterion(MoELabelSmoothedCrossEntropyCriterion):
    calls = 0

    def forward(self, model, sample, reduce=True):
        if model.training and os.environ.get("PROBE_DIR"):
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            with torch.no_grad():
                total = sum(p.double().sum().item() for p in model.parameters())
                absum = sum(p.double().abs().sum().item() for p in model.parameters())
            with open(os.path.join(os.environ["PROBE_DIR"], f"rank{rank}.txt"), "a") as f:
                f.write(f"{ProbeCriterion.calls} {total!r} {absum!r}\n")
            ProbeCriterion.calls += 1
        return super().forward(model, sample, reduce)
