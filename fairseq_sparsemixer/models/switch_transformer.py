"""Switch-Transformer encoder-decoder: fairseq's Transformer with every K-th FFN an MoE layer.

Only build hooks are overridden: a MoE layer's `build_fc1` returns the whole MoEFeedForward
(d -> d, activation and activation dropout inside its experts) and `build_fc2` an identity,
so fairseq's own layer `forward` runs unchanged. Dense layers are fairseq's own layers and
own no router parameters.
"""
import argparse

import torch.nn as nn
from fairseq.distributed import fsdp_wrap
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (TransformerConfig, TransformerDecoderBase,
                                        TransformerEncoderBase, TransformerModel)
from fairseq.models.transformer.transformer_legacy import base_architecture, transformer_wmt_en_de_big
from fairseq.modules import transformer_layer
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from omegaconf import OmegaConf

from ..modules import MoEFeedForward
from .moe_args import add_moe_args, check_moe_args, moe_layer_kwargs, set_moe_defaults


class FairseqMoEFFN(MoEFeedForward):
    """MoEFeedForward called as fairseq's `fc1(x)`; the layer sets `padding_mask` (T, B) first."""

    padding_mask = None

    def forward(self, x):
        return super().forward(x, padding_mask=self.padding_mask)


def _identity(x):
    return x


class _MoELayerMixin:
    """Turns a fairseq Transformer layer's FFN into FairseqMoEFFN through its build hooks."""

    def _init_moe(self, cfg):
        self.moe_cfg = cfg  # read by build_fc1 during the base __init__

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        cfg = self.moe_cfg
        dropout = cfg.activation_dropout or getattr(cfg, "relu_dropout", 0.0) or 0.0
        return FairseqMoEFFN(input_dim, output_dim, activation_fn=cfg.activation_fn,
                             activation_dropout=float(dropout), **moe_layer_kwargs(cfg))

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return nn.Identity()

    def _after_init(self):
        self.activation_fn = _identity  # applied inside the experts
        self.activation_dropout_module = nn.Identity()

    def _set_padding(self, padding_mask):  # (B, T) -> (T, B), the layout of x
        self.fc1.padding_mask = None if padding_mask is None else padding_mask.transpose(0, 1)


class MoEEncoderLayer(_MoELayerMixin, transformer_layer.TransformerEncoderLayerBase):
    def __init__(self, cfg, return_fc=False):
        self._init_moe(cfg)
        super().__init__(cfg, return_fc)
        self._after_init()

    def forward(self, x, encoder_padding_mask, attn_mask=None):
        self._set_padding(encoder_padding_mask)
        return super().forward(x, encoder_padding_mask, attn_mask)


class MoEDecoderLayer(_MoELayerMixin, transformer_layer.TransformerDecoderLayerBase):
    def __init__(self, cfg, no_encoder_attn=False, add_bias_kv=False, add_zero_attn=False):
        self._init_moe(cfg)
        super().__init__(cfg, no_encoder_attn, add_bias_kv, add_zero_attn)
        self._after_init()

    def forward(self, x, *args, self_attn_padding_mask=None, **kwargs):
        self._set_padding(self_attn_padding_mask)
        return super().forward(x, *args, self_attn_padding_mask=self_attn_padding_mask, **kwargs)


def _wrap(layer, cfg):
    """fairseq's own activation checkpointing / FSDP wrapping of a layer."""
    if cfg.checkpoint_activations:
        layer = checkpoint_wrapper(layer, offload_to_cpu=cfg.offload_activations)
    return fsdp_wrap(layer, min_num_params=cfg.min_params_to_wrap if not cfg.checkpoint_activations else 0)


class _MoEStackMixin:
    """Layer i (0-based, in build order) is MoE when i % moe_freq == 0."""

    def _next_is_moe(self, cfg):
        i = getattr(self, "_layers_built", 0)
        self._layers_built = i + 1
        return i % cfg.moe_freq == 0


class SwitchTransformerEncoder(_MoEStackMixin, TransformerEncoderBase):
    def build_encoder_layer(self, cfg):
        if not self._next_is_moe(cfg):
            return super().build_encoder_layer(cfg)
        return _wrap(MoEEncoderLayer(cfg, return_fc=self.return_fc), cfg)


class SwitchTransformerDecoder(_MoEStackMixin, TransformerDecoderBase):
    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        if not self._next_is_moe(cfg):
            return super().build_decoder_layer(cfg, no_encoder_attn)
        return _wrap(MoEDecoderLayer(cfg, no_encoder_attn), cfg)


def as_namespace(args):
    """hydra passes a DictConfig whose unknown (moe_*) keys fairseq's TransformerConfig would
    drop; convert it to the flat namespace the legacy path keeps whole."""
    if OmegaConf.is_config(args):
        return argparse.Namespace(**OmegaConf.to_container(args, resolve=True))
    return args


@register_model("switch_transformer")
class SwitchTransformerModel(TransformerModel):
    """fairseq Transformer with MoE FFNs (Switch layout) and a registered router."""

    @staticmethod
    def add_args(parser):
        TransformerModel.add_args(parser)
        add_moe_args(parser)

    @classmethod
    def build_model(cls, args, task):
        args = as_namespace(args)
        switch_transformer_base(args)
        return super().build_model(args, task)

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return SwitchTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return SwitchTransformerDecoder(TransformerConfig.from_namespace(args), tgt_dict, embed_tokens,
                                        no_encoder_attn=getattr(args, "no_cross_attention", False))


def switch_transformer_base(args):
    """Defaults of the --moe-* flags, checked: a bad value stops with one line, before any
    data is read (fairseq applies the arch function while parsing the command line)."""
    set_moe_defaults(args)
    try:
        check_moe_args(args)
    except ValueError as e:
        raise SystemExit(f"switch_transformer: error: {e}")


@register_model_architecture("switch_transformer", "switch_transformer_wmt_en_de")
def switch_transformer_wmt_en_de(args):
    """Transformer-base dims (6+6 layers, 512/2048, 8 heads): the paper's WMT'14 setting."""
    switch_transformer_base(args)
    base_architecture(args)


@register_model_architecture("switch_transformer", "switch_transformer")
def switch_transformer(args):
    switch_transformer_wmt_en_de(args)


@register_model_architecture("switch_transformer", "switch_transformer_wmt_en_de_big")
def switch_transformer_wmt_en_de_big(args):
    switch_transformer_base(args)
    transformer_wmt_en_de_big(args)


@register_model_architecture("switch_transformer", "switch_transformer_tiny")
def switch_transformer_tiny(args):
    """3+3 pre-LN layers, d = 128, 4 heads, d_ff = 512 per expert: learns on 2 CPU cores in
    minutes (README: BLEU measured with scripts/quickstart.sh)."""
    for side in ("encoder", "decoder"):
        for name, value in [("embed_dim", 128), ("ffn_embed_dim", 512), ("attention_heads", 4),
                            ("layers", 3), ("normalize_before", True)]:
            key = f"{side}_{name}"
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    switch_transformer_wmt_en_de(args)
