"""The token model: a GPT-2 style causal LM over the value codec's tokens, its size presets, the factored
position init for wide windows, and which of its parameters train. The training loop is :mod:`tsynth.train`."""

from __future__ import annotations

import math

import torch

from .errors import ConfigError

PRESETS = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4),
    "small": dict(n_layer=4, n_embd=128, n_head=4),
    "base": dict(n_layer=6, n_embd=256, n_head=8),
}
FACTORED_POSITIONS_FROM = 8  # channels (see factor_positions)
TRAINABLE = ("all", "bitfit", "bitfit+positions", "bitfit+positions+embeddings")


def build_model(vocab_size: int, n_positions: int, preset: str, dropout: float = 0.1,
                attn_dropout: float | None = None):
    """A GPT-2 style causal LM from a config (learned absolute positions suit fixed-length windows); attention
    dropout ``attn_dropout``, by default ``dropout`` as on the embeddings and the residual stream."""
    from transformers import GPT2Config, GPT2LMHeadModel

    # attention dropout triples the attention's cost on a CPU (no fused kernel draws it): worth it for a model from
    # scratch, whose samples are told from real data less often with it; not for a member fine-tuned from a prior
    # (TokenJob.fresh_model; docs/model-and-training.md, "Training")
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, resid_pdrop=dropout, embd_pdrop=dropout,
                     attn_pdrop=dropout if attn_dropout is None else attn_dropout, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0, **PRESETS[preset])
    return GPT2LMHeadModel(cfg)


def factor_positions(model, first_value: int, n_channels: int) -> None:
    """On windows of at least ``FACTORED_POSITIONS_FROM`` channels, draw the position embeddings of the values
    (from sequence position ``first_value`` on, channel by channel within each step) as a step part plus a channel
    part, each with half the variance of GPT-2's own init: the step part sinusoidal (nearby steps alike), the
    channel part random. A fresh model then tells a value's channel and step from the start instead of learning
    them position by position, which matters where "this channel, one step back" is many tokens away. Narrower
    windows keep GPT-2's init, which did better there (the measurements: docs/model-and-training.md, "The model")."""
    if n_channels < FACTORED_POSITIONS_FROM:
        return
    wpe = model.transformer.wpe.weight
    n, dim = wpe.shape[0] - first_value, wpe.shape[1]
    std = model.config.initializer_range
    steps = torch.arange((n + n_channels - 1) // n_channels, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    step_part = torch.zeros(len(steps), dim)
    step_part[:, 0::2], step_part[:, 1::2] = torch.sin(steps * freq), torch.cos(steps * freq)[:, : dim // 2]
    channel_part = torch.randn(n_channels, dim) * std
    pos = torch.arange(n)
    with torch.no_grad():  # sin/cos have mean square 1/2: scaled to std, each part then to half the variance
        wpe[first_value:] = step_part[pos // n_channels] * std + channel_part[pos % n_channels] / math.sqrt(2)


def select_trainable(model, which: str) -> int:
    """Freeze all but ``which`` of ``model``'s parameters; returns how many values stay trainable.

    ``bitfit``: biases and LayerNorm weights (Ben Zaken et al. 2022); ``+positions``: the position
    embeddings too; ``+embeddings``: the token embeddings (tied with the output layer) too. Fewer trainable
    values mean less DP-SGD noise in all (its norm grows with the square root of their number).
    """
    if which not in TRAINABLE:
        raise ConfigError(f"trainable must be one of {', '.join(TRAINABLE)}, got {which!r}")
    for name, p in model.named_parameters():
        keep = (which == "all" or name.endswith(".bias") or ".ln_" in name or "ln_f" in name
                or ("positions" in which and "wpe" in name) or ("embeddings" in which and "wte" in name))
        p.requires_grad_(keep)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
