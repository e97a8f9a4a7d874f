"""The --moe-* flags: one definition for argparse, hydra configs and validation."""
from ..modules.moe_layer import EXPERT_IMPLS
from ..routers import ROUTERS, router_class
from ..routers.sparsemixer import BALANCE_PROBS, SparseMixerRouter

# name -> (default, type, help)
MOE_ARGS = {
    "moe_experts": (4, int, "number of experts in each MoE feed-forward layer (>= 1)"),
    "moe_router": ("sparsemixer", str, f"router: one of {', '.join(ROUTERS)}"),
    "moe_jitter_eps": (0.1, float, "r: the mask's relative distance 2r (SparseMixer) / the "
                                   "U(1-r, 1+r) logit noise (switch); >= 0"),
    "moe_freq": (2, int, "every K-th FFN is MoE, starting at layer 0 (>= 1)"),
    "moe_top_k": (1, int, "experts per token (2 only with sparsemixer-v2)"),
    "moe_capacity_factor": (0.0, float, "0 = dropless; > 0 drops overflow tokens"),
    "moe_no_gate_scaling": (False, bool, "y = f_D(x): no gate in the output (ablation)"),
    "moe_no_omega": (False, bool, "no learned per-channel omega (ablation)"),
    "moe_no_mask": (False, bool, "sample from the full softmax, without the mask (ablation)"),
    "moe_min_kept": (1, int, "beyond the paper: the SparseMixer mask keeps at least the K best experts "
                             "(1 = the paper's rule); with sparsemixer-v2's --moe-top-k 2 it applies "
                             "to both stages (the second keeps the K best remaining experts, at most "
                             "N-1); refused with --moe-no-mask"),
    "moe_balance_probs": ("masked", str, "beyond the paper: the balance loss from the masked softmax "
                                         "(masked, the authors' code) or the unmasked one (full); "
                                         "full is refused with --moe-no-mask (the same softmax)"),
    "moe_expert_impl": ("auto", str, "the experts' matmuls: loop (one pair per expert), grouped "
                                     "(torch's grouped GEMM, dropless only) or auto (grouped on CUDA "
                                     "bf16/fp16, where it was measured faster; loop elsewhere; "
                                     "docs/benchmarks.md)"),
    "moe_compile_router": (False, bool, "torch.compile the router with its statistics and losses "
                                        "into a few fused kernels (the same draws and numbers to "
                                        "rounding; routers/compiled.py); off by default until "
                                        "measured on a GPU"),
    "moe_router_bias": (False, bool, "router logits W x + b, as the authors' released code "
                                     "(nn.Linear default init); default: no bias"),
}


def add_moe_args(parser):
    for name, (default, typ, help_) in MOE_ARGS.items():
        flag = "--" + name.replace("_", "-")
        if typ is bool:
            parser.add_argument(flag, action="store_true", help=help_)
        else:
            parser.add_argument(flag, type=typ, metavar=typ.__name__.upper(), help=help_)


def set_moe_defaults(args):
    for name, (default, _, _) in MOE_ARGS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, default)


def check_moe_args(args):
    """Raise ValueError naming the flag, the bad value and what is allowed."""
    n, k = args.moe_experts, args.moe_top_k
    if args.moe_router not in ROUTERS:
        raise ValueError(f"--moe-router {args.moe_router!r} is unknown; valid: {', '.join(ROUTERS)}")
    if n < 1:
        raise ValueError(f"--moe-experts {n} is invalid; it must be >= 1")
    if args.moe_jitter_eps < 0:
        raise ValueError(f"--moe-jitter-eps {args.moe_jitter_eps} is invalid; it must be >= 0")
    if args.moe_freq < 1:
        raise ValueError(f"--moe-freq {args.moe_freq} is invalid; it must be >= 1")
    if args.moe_capacity_factor < 0:
        raise ValueError(f"--moe-capacity-factor {args.moe_capacity_factor} is invalid; "
                         "it must be >= 0 (0 = dropless)")
    max_k = router_class(args.moe_router).max_top_k
    if not 1 <= k <= min(n, max_k):
        raise ValueError(f"--moe-top-k {k} is invalid for --moe-router {args.moe_router} with "
                         f"--moe-experts {n}; allowed: 1..{min(n, max_k)}")
    if getattr(args, "checkpoint_activations", False) or getattr(args, "offload_activations", False):
        raise ValueError(
            "--checkpoint-activations/--offload-activations are not supported with MoE layers: fairseq "
            "recomputes each layer in the backward, so the balance and z-losses read from the first "
            "(no-grad) forward would carry no gradient; train without them (lower --max-tokens and "
            "raise --update-freq to fit memory)")
    if args.moe_expert_impl not in EXPERT_IMPLS:
        raise ValueError(f"--moe-expert-impl {args.moe_expert_impl!r} is invalid; valid: {', '.join(EXPERT_IMPLS)}")
    if args.moe_expert_impl == "grouped" and args.moe_capacity_factor > 0:
        raise ValueError("--moe-expert-impl grouped is dropless only; with --moe-capacity-factor > 0 "
                         "use --moe-expert-impl loop (or auto)")
    if args.moe_balance_probs not in BALANCE_PROBS:
        raise ValueError(f"--moe-balance-probs {args.moe_balance_probs!r} is invalid; valid: {', '.join(BALANCE_PROBS)}")
    if not 1 <= args.moe_min_kept <= n:
        raise ValueError(f"--moe-min-kept {args.moe_min_kept} is invalid; allowed: 1..{n} (--moe-experts)")
    cls = router_class(args.moe_router)
    maskless = not issubclass(cls, SparseMixerRouter)
    if maskless and (args.moe_min_kept != 1 or args.moe_balance_probs != "masked"):
        raise ValueError(f"--moe-min-kept and --moe-balance-probs do not apply to --moe-router "
                         f"{args.moe_router} (it has no mask)")
    if args.moe_no_mask and maskless:
        raise ValueError(f"--moe-no-mask does not apply to --moe-router {args.moe_router} (it has no mask)")
    if args.moe_no_mask and (args.moe_min_kept != 1 or args.moe_balance_probs != "masked"):
        raise ValueError("--moe-min-kept and --moe-balance-probs full act on the mask, so with --moe-no-mask "
                         "they would do nothing; drop them or --moe-no-mask")
    if cls.stand_in is not None and args.moe_no_gate_scaling:
        raise ValueError(f"--moe-no-gate-scaling does not apply to --moe-router {args.moe_router}: its "
                         f"router gradient is the dense mixture's through the gate; use --moe-router switch")


def moe_layer_kwargs(args):
    """Keyword arguments of MoEFeedForward from the flags."""
    kw = dict(num_experts=args.moe_experts, router=args.moe_router, jitter_eps=args.moe_jitter_eps,
              top_k=args.moe_top_k, capacity_factor=args.moe_capacity_factor,
              gate_scaling=not args.moe_no_gate_scaling, expert_impl=args.moe_expert_impl)
    if args.moe_compile_router:
        kw["compile_router"] = True
    if args.moe_no_omega:
        kw["omega"] = False
    if args.moe_no_mask:
        kw["mask"] = False
    if args.moe_router_bias:
        kw["bias"] = True
    if args.moe_min_kept != 1:
        kw["min_kept"] = args.moe_min_kept
    if args.moe_balance_probs != "masked":
        kw["balance_probs"] = args.moe_balance_probs
    return kw
