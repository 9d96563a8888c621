"""An ensemble of token models decoded as one: the members' GPT-2 weights stacked along a first axis, one batched
matrix product per weight for all members at each position, and the key/value cache of every member in one tensor.

It computes what each member's own forward computes (the same layer norms, attention, tanh GELU and tied output
layer; ``tests/test_local.py`` holds them equal), without the Hugging Face forward's per-call work (masks, cache
objects, hooks) repeated for every member at every position: the ensemble's sampling costs about what its
arithmetic does. Models of other shapes or kinds are decoded one by one (:func:`stack_members` says which)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F


def _gpt2_shape(model: Any) -> tuple | None:
    """What must agree for members to stack, or None where the model is not a plain GPT-2 this module computes."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "gpt2" or not hasattr(model, "transformer"):
        return None
    if (cfg.activation_function != "gelu_new" or not cfg.scale_attn_weights or cfg.scale_attn_by_inverse_layer_idx
            or cfg.reorder_and_upcast_attn or cfg.add_cross_attention):
        return None
    return (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_positions, cfg.layer_norm_epsilon,
            cfg.n_inner, str(next(model.parameters()).device), next(model.parameters()).dtype)


def stack_members(models: Sequence[Any]) -> "StackedGPT2 | None":
    """The members stacked, where they are GPT-2 models of one shape on one device; else None."""
    shapes = {_gpt2_shape(m) for m in models}
    if len(shapes) != 1 or None in shapes:
        return None
    return StackedGPT2(models)


class StackedGPT2:
    """See the module docstring. ``start(batch, length)`` makes an empty cache for ``batch`` series a member;
    ``step(tokens, pos, cache)`` gives every member's next-token logits, shape (members, batch, vocabulary)."""

    def __init__(self, models: Sequence[Any]) -> None:
        cfg = models[0].config
        self.n_layer, self.dim, self.heads = cfg.n_layer, cfg.n_embd, cfg.n_head
        self.eps = cfg.layer_norm_epsilon

        def stack(get) -> torch.Tensor:
            return torch.stack([get(m).detach() for m in models])

        def affine(path: str) -> tuple[torch.Tensor, torch.Tensor]:
            """The (weight, bias) of the layer at ``path`` in every member, stacked, with the bias (and a layer
            norm's weight) broadcasting over the batch. GPT-2's Conv1D keeps its weight as (in, out): x @ W + b."""
            weight = stack(lambda m: m.get_submodule(path).weight)
            return (weight[:, None] if weight.dim() == 2 else weight), stack(lambda m: m.get_submodule(path).bias)[:, None]

        self.wte = stack(lambda m: m.transformer.wte.weight)  # (M, V, D)
        self.wpe = stack(lambda m: m.transformer.wpe.weight)  # (M, P, D)
        self.head = stack(lambda m: m.lm_head.weight).transpose(1, 2).contiguous()  # (M, D, V)
        self.ln_f = affine("transformer.ln_f")
        self.layers = [{name: affine(f"transformer.h.{i}.{part}") for name, part in (
            ("ln_1", "ln_1"), ("ln_2", "ln_2"), ("qkv", "attn.c_attn"), ("proj", "attn.c_proj"), ("fc", "mlp.c_fc"),
            ("out", "mlp.c_proj"))} for i in range(self.n_layer)]

    @property
    def members(self) -> int:
        return self.wte.shape[0]

    def start(self, batch: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """An empty key/value cache for ``batch`` series of up to ``length`` positions: per layer, (keys, values)
        of shape (members, batch, heads, length, head size)."""
        shape = (self.members, batch, self.heads, length, self.dim // self.heads)
        return [(self.wte.new_zeros(shape), self.wte.new_zeros(shape)) for _ in range(self.n_layer)]

    def _norm(self, x: torch.Tensor, wb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.layer_norm(x, (self.dim,), eps=self.eps) * wb[0] + wb[1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: int, cache: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Every member's logits for the next token of its own series, given this position's ``tokens``, shape
        (members, batch): a row per member, and the cache of the positions before (which this fills at ``pos``)."""
        m, b = self.members, tokens.shape[1]
        hd = self.dim // self.heads
        x = self.wte[torch.arange(m, device=tokens.device)[:, None], tokens] + self.wpe[:, pos][:, None]  # (M, B, D)
        for layer, (keys, values) in zip(self.layers, cache):
            h = self._norm(x, layer["ln_1"])
            q, k, v = torch.baddbmm(layer["qkv"][1], h, layer["qkv"][0]).split(self.dim, dim=-1)
            keys[:, :, :, pos] = k.reshape(m, b, self.heads, hd)
            values[:, :, :, pos] = v.reshape(m, b, self.heads, hd)
            q = (q * (1.0 / math.sqrt(hd))).reshape(m, b, self.heads, 1, hd)  # scaled here: smaller than the scores
            scores = q @ keys[:, :, :, : pos + 1].transpose(-1, -2)  # (M, B, H, 1, pos + 1)
            att = (torch.softmax(scores, dim=-1) @ values[:, :, :, : pos + 1]).reshape(m, b, self.dim)
            x = x + torch.baddbmm(layer["proj"][1], att, layer["proj"][0])
            h = F.gelu(torch.baddbmm(layer["fc"][1], self._norm(x, layer["ln_2"]), layer["fc"][0]), approximate="tanh")
            x = x + torch.baddbmm(layer["out"][1], h, layer["out"][0])
        return torch.bmm(self._norm(x, self.ln_f), self.head)  # (M, B, V)
