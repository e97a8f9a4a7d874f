"""Router registry. `build_router(name, embed_dim=, num_experts=, jitter_eps=0.1, **options)`."""
import inspect

from .base import Router, RouterOutput, gumbel_argmax, relative_mask
from .sparsemixer import (EstimatorGate, MaskedSwitchArgmaxRouter, MaskedSwitchRouter, SparseMixerFirstOrder,
                          SparseMixerMonteCarlo, SparseMixerRouter, SparseMixerSecondOrder, SparseMixerV2Router)
from .switch import DefaultMoERouter, DenseMixerRouter, SwitchRouter

ROUTERS = {cls.name: cls for cls in (
    SparseMixerRouter, SwitchRouter, SparseMixerFirstOrder, SparseMixerSecondOrder,
    SparseMixerMonteCarlo, SparseMixerV2Router, MaskedSwitchRouter, MaskedSwitchArgmaxRouter,
    DenseMixerRouter, DefaultMoERouter)}


def router_class(name: str):
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; valid names: {', '.join(ROUTERS)}")
    return ROUTERS[name]


def build_router(name: str, embed_dim: int, num_experts: int, jitter_eps: float = 0.1,
                 **options) -> Router:
    cls = router_class(name)
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "embed_dim", "num_experts",
                                                                 "jitter_eps"}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"router {name!r} takes no option {', '.join(bad)}; "
                         f"its options: {', '.join(sorted(allowed))}")
    return cls(embed_dim, num_experts, jitter_eps, **options)


__all__ = ["ROUTERS", "Router", "RouterOutput", "EstimatorGate", "build_router", "router_class",
           "gumbel_argmax", "relative_mask"]
