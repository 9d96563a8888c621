"""The step model: a causal transformer whose positions are time steps, with all of a step's channels in one.

A sequence is a short prefix of series-level tokens followed by one position per time step::

    <bos> <condition tokens> [<level> per channel] [<mean> <spread> per channel] [<gaps>] | step 0 | step 1 | ...

* the input at step ``t`` is the previous step's values (every channel: a learned embedding of each channel's
  bin, summed, plus a linear map of the bins' positions and missing flags; a ``<start>`` id before a series'
  first step) plus the embeddings of step ``t``'s calendar position (time of day, day of week, week of year
  or month, from its time stamp; for series on one shared calendar also the step of that calendar, read as
  "outside it" in a quarter of the training windows, as beyond its span), so the model always knows when the
  step it predicts falls, plus, with
  ``season_inputs``, each channel's value one season before step ``t`` (a day, a week; hidden at random while
  the model trains, so it leans on them only as far as they predict);
* the output at step ``t`` gives the joint distribution of step ``t``'s channels, one channel after another:
  channel ``c``'s bin (or "missing") is predicted from the step's hidden state plus the embeddings of the
  channels before it (drawn or, in training, true or moved by a bin) and, where a step holds several channels,
  channel ``c``'s own linear reading of their values and of every channel's previous value
  (:class:`CrossReadout`), through a small feed-forward head. Cost per step grows linearly with the channels,
  and the attention runs over steps, not values;
* with ``copy`` (every new model whose steps hold several channels), that distribution is a mixture of the head's
  free distribution and a discretised Gaussian over bins centred near the channel's own previous bin (gate, shift
  and width come from the head). The summed step input cannot carry dozens of channels' exact values, and a smooth
  sensor moves by a few bins per step; the copy component gives each channel its own previous value directly, so
  smooth channels stay smooth, and the gate learns to ignore it where steps do not follow each other; with
  ``seasons`` (the data's day and week in steps, or its week for daily data), one more such component per lag sits
  near the channel's bin one season earlier, so a series' day repeats its own yesterday, and its Monday its last
  Monday, where the data does;
* the prefix positions predict the next prefix token (series-level tokens are drawn first, then held in the
  context for the whole series).

Where a step holds several channels, training moves a share of the input values by about a bin
(:func:`noisy_inputs`): the previous and earlier steps' values and the values of the channels before each one in
its own step, so that the model's own draws, which generation feeds back, do not read as the start of a rougher
stretch or as a sign of what the step's other channels hold.

The context holds ``context`` steps. Training windows are drawn at random offsets of long series; generation
beyond the context slides it: when it is full, the cache is rebuilt from the prefix and the most recent steps,
so positions stay within the trained range, memory does not grow with the length asked for and time is linear
in it (see :mod:`tsynth.stepgen`).

The model is a Hugging Face ``PreTrainedModel`` with its own config (``model_type`` ``tsynth_step``),
registered with ``AutoConfig``, ``AutoModel`` and ``AutoModelForCausalLM`` when :mod:`tsynth` is imported, so
``save_pretrained`` / ``from_pretrained`` work as for any Hugging Face model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel


# log-probabilities are floored here: exp() of far smaller numbers gives float32 subnormals, which a CPU computes
# tens of times slower (the floor's probability, 1e-26 per bin, changes nothing a sample or loss can show)
LOG_FLOOR = -60.0
SHIFTED_SHARE = 0.25  # training windows of series that fit the context which start at a later step
COPY_SHIFT = 4.0  # bins a copy component's centre may sit away from its anchor value
TIME_DROPOUT = 0.25  # share of training windows whose time-step feature reads "outside the data's span"
SEASON_DROPOUT = 0.75  # share of season inputs hidden while the model trains (docs/long-series.md)
# the fused value head (LinearLogSoftmaxAt) on a CPU: logits per block, and the fewest logits a batch must hold to
# take it (below about that many, the whole logits stay near the cores' caches and recomputing them costs more than
# it saves; benchmarks/bench_train_step.py)
CHUNK_VALUES, FUSED_MIN_LOGITS = 1 << 17, 1 << 22
NORM_WINDOW = 16  # bins either side of a copy component's centre whose terms its normaliser sums exactly in training
SUPPORT_SIGMAS = 4.0  # a smoothed target's bins that the loss reads: this many smoothing widths either side
# where a step holds several channels: the share of the values shown to the model as inputs (previous, own and
# seasonal lags, the channels before each one in its step) that training moves by a draw of about a bin
# (docs/long-series.md, "Inputs with noise")
INPUT_NOISE = 0.3
INPUT_NOISE_BINS = 1.0  # the standard deviation of that move, rounded to whole bins


class StepModelConfig(PretrainedConfig):
    """Shape of a step model: channels, bins, prefix vocabulary and length, context, calendar features."""

    model_type = "tsynth_step"

    def __init__(self, n_channels: int = 1, n_bins: int = 256, prefix_vocab: int = 8, prefix_length: int = 1,
                 context: int = 96, calendar_sizes: list[int] | tuple[int, ...] = (), n_layer: int = 2,
                 n_embd: int = 64, n_head: int = 4, dropout: float = 0.1, copy: bool = False,
                 seasons: list[int] | tuple[int, ...] | None = None, season: int = 0, season_inputs: bool = False,
                 own_lags: int = 0, time_feature: int = -1, cross_rank: int = 0, cross_prev: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        # rank of each channel's linear reading of the channels drawn before it in its step (:class:`CrossReadout`):
        # 0 for models saved before it, and where a step holds one channel
        self.cross_rank = int(cross_rank) if int(n_channels) > 1 else 0
        # whether that readout also reads every channel's previous value: False for models saved before it
        self.cross_prev = bool(cross_prev) and self.cross_rank > 0
        self.time_feature = int(time_feature)  # index of the calendar's time-step feature, -1 without one
        self.copy = bool(copy)  # False for models saved before the copy component
        # how many of its own latest values (the previous one first) each channel's head reads: 0 for models
        # saved before the head read them, and where a step holds one channel
        self.own_lags = int(own_lags)
        # False for models saved before the seasonal inputs: their seasons feed the copy components only
        self.season_inputs = bool(season_inputs)
        # the seasonal lags (models saved with one lag have ``season``)
        lags = [int(s) for s in seasons] if seasons is not None else [int(season)] if season else []
        self.seasons = lags if copy or season_inputs else []
        self.n_channels, self.n_bins = int(n_channels), int(n_bins)
        self.prefix_vocab, self.prefix_length, self.context = int(prefix_vocab), int(prefix_length), int(context)
        self.calendar_sizes = [int(s) for s in calendar_sizes]
        self.n_layer, self.n_embd, self.n_head, self.dropout = int(n_layer), int(n_embd), int(n_head), float(dropout)

    # value ids of the step inputs: bins 0..n_bins-1, then these three
    @property
    def missing_id(self) -> int:
        return self.n_bins

    @property
    def start_id(self) -> int:
        return self.n_bins + 1

    @property
    def pad_id(self) -> int:
        return self.n_bins + 2

    @property
    def n_ids(self) -> int:
        return self.n_bins + 3


@dataclass
class KVCache:
    """Keys and values of every layer for up to ``size`` positions; ``fill`` positions are in use."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    fill: int = 0

    @classmethod
    def empty(cls, config: StepModelConfig, batch: int, device) -> "KVCache":
        size = config.prefix_length + config.context
        shape = (batch, config.n_head, size, config.n_embd // config.n_head)
        return cls([torch.zeros(shape, device=device) for _ in range(config.n_layer)],
                   [torch.zeros(shape, device=device) for _ in range(config.n_layer)])


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a feed-forward layer."""

    def __init__(self, config: StepModelConfig) -> None:
        super().__init__()
        d = config.n_embd
        self.n_head, self.p = config.n_head, config.dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc_out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is None:  # the whole window at once (no dropout on attention weights: on a CPU, dropping
            # from the (steps x steps) weights costs more than the rest of the step; the residual paths keep theirs)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # generation: new positions after the cached ones (several only into an empty cache)
            lo, hi = cache.fill, cache.fill + t
            cache.keys[layer][:, :, lo:hi], cache.values[layer][:, :, lo:hi] = k, v
            att = F.scaled_dot_product_attention(q, cache.keys[layer][:, :, :hi], cache.values[layer][:, :, :hi],
                                                 is_causal=t > 1)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc_out(F.gelu(self.fc(self.ln2(x)))))


class CrossReadout(nn.Module):
    """Each channel's own linear reading of the values of the channels before it in the same step (d per channel)
    and, with ``prev``, of every channel's value at the previous step.

    Channel ``j``'s bin position (scaled to [-1, 1]) and missing flag map to ``rank`` numbers (``inp[j]``); their
    running sum over the channels before ``c``, over the square root of their count (in generation, summed beside
    the chain embeddings, as one running state: :meth:`StepModel.chain`), maps through channel ``c``'s own matrix
    (``out[c]``). So every channel regresses on its predecessors with weights of its own, of rank at
    most ``rank``, at a cost linear in the channels. The summed chain embeddings give every head the same
    vector, from which a small head must pull each channel's own combination; with many correlated channels (a
    building's temperatures, say) it does that poorly, and a step's channels come out less related than the
    data's (docs/long-series.md, "Channels before it in the step").

    With ``prev``, the previous step's values of all channels map the same way (``prev_inp``), summed over every
    channel / sqrt(channels), and each head reads that summary through a matrix of its own (``prev_out``): the
    step input gives every head one summed vector of the previous values too, and a channel's next value depends
    on its neighbours' last ones with weights of its own."""

    def __init__(self, n_channels: int, rank: int, d: int, prev: bool = False) -> None:
        super().__init__()
        self.inp = nn.Parameter(torch.empty(n_channels, 2, rank))
        self.out = nn.Parameter(torch.empty(n_channels, rank, d))
        self.prev_inp = nn.Parameter(torch.empty(n_channels, 2, rank)) if prev else None
        self.prev_out = nn.Parameter(torch.empty(n_channels, rank, d)) if prev else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Unit-scale features, and small output maps (a new head starts near its reading without them)."""
        for inp, out in ((self.inp, self.out), (self.prev_inp, self.prev_out)):
            if inp is not None and out is not None:
                nn.init.normal_(inp, std=1.0)
                nn.init.normal_(out, std=0.02)

    def features(self, feats: torch.Tensor, channels: torch.Tensor | slice) -> torch.Tensor:
        """``feats`` (..., channels, 2): positions and missing flags; their ``rank`` numbers (..., channels, rank)."""
        return torch.einsum("...ci,cir->...cr", feats, self.inp[channels])

    def previous(self, feats: torch.Tensor) -> torch.Tensor:
        """The summary (..., rank) of every channel's previous value, from their positions and missing flags
        ``feats`` (..., channels, 2); empty (..., 0) without ``prev``."""
        if self.prev_inp is None:
            return feats.new_zeros(feats.shape[:-2] + (0,))
        return torch.einsum("...ci,cir->...r", feats, self.prev_inp) / math.sqrt(feats.shape[-2])

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Every channel's reading (..., channels, d), as teacher forcing gives the values: ``feats`` (..., channels,
        4) holds each channel's position and missing flag at the step, then at the previous step. (One input, so
        that DP-SGD's per-sample gradients reach every parameter through this call.)"""
        out = torch.einsum("...cr,crd->...cd", exclusive_mean(self.features(feats[..., :2], slice(None))), self.out)
        if self.prev_out is not None:
            out = out + torch.einsum("...r,crd->...cd", self.previous(feats[..., 2:]), self.prev_out)
        return out

    def read(self, channel: int, summed: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Channel ``channel``'s reading (b, d) of the features ``summed`` (b, rank) of those before it (summed over
        the square root of their count) and of the previous step's summary ``prev`` (b, rank; b, 0 without it)."""
        out = summed @ self.out[channel]
        if self.prev_out is not None:
            out = out + prev @ self.prev_out[channel]
        return out


class LogSoftmaxAt(torch.autograd.Function):
    """``log_softmax(logits)`` (..., n) at ``index`` (..., m) only, with a backward pass of its own: the softmax
    times minus the summed incoming gradient, plus that gradient scattered onto the indices. Autograd's
    logsumexp-and-gather computes the same in several more passes over the (..., n) logits, each with a tensor of
    that size to allocate (the logsumexp's shifted copy and exp, a zero gradient for the gather), and with many
    channels those passes are much of a training step's time. Its gradient is first-order only, and it runs under
    autograd (opacus' hooks), not under ``torch.func`` transforms."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits, dim=-1)
        ctx.save_for_backward(logp, index)
        return logp.gather(-1, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        logp, index = ctx.saved_tensors
        return _log_softmax_at_grad(logp, index, grad), None


def _log_softmax_at_grad(logp: torch.Tensor, index: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient with respect to the logits of ``log_softmax(logits)`` gathered at ``index``, given the
    log-probabilities ``logp`` and the incoming ``grad`` at the index: the softmax times minus the summed incoming
    gradient, plus that gradient scattered onto the indices."""
    return torch.exp(logp).mul_(-grad.sum(-1, keepdim=True)).scatter_add_(-1, index, grad)


class LinearLogSoftmaxAt(torch.autograd.Function):
    """``log_softmax(x @ weight.T + bias)`` at ``index`` (..., m) only, computed ``CHUNK_VALUES`` logits at a time:
    each block of rows gets its logits, their log-normaliser and the asked entries while the block is still in the
    core's cache, and the backward pass recomputes a block's logits to form its gradient (the softmax minus the
    scattered incoming gradient) and passes it on to ``x``, ``weight`` and ``bias`` at once. The logits of every
    value of a step-model batch (rows x bins, tens of MB where steps hold many channels) are never held whole: on
    a CPU the head is bound by writing and rereading them, not by its arithmetic. It gives what
    :class:`LogSoftmaxAt` over the linear layer gives (up to float rounding); first-order only, under plain
    autograd (not under opacus' per-module hooks or ``torch.func`` transforms)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rows, ids = x.reshape(-1, x.shape[-1]), index.reshape(-1, index.shape[-1])
        out = x.new_empty(ids.shape)
        lse = x.new_empty(ids.shape[0])
        for lo, hi in _blocks(ids.shape[0], weight.shape[0]):
            logits = torch.addmm(bias, rows[lo:hi], weight.t())
            lse[lo:hi] = torch.logsumexp(logits, dim=-1)
            torch.sub(logits.gather(-1, ids[lo:hi]), lse[lo:hi, None], out=out[lo:hi])
        ctx.save_for_backward(x, weight, bias, index, lse)
        return out.reshape(index.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, index, lse = ctx.saved_tensors
        rows, ids, g = x.reshape(-1, x.shape[-1]), index.reshape(-1, index.shape[-1]), grad.reshape(-1, index.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = torch.empty_like(rows) if need_x else None
        gw = torch.zeros_like(weight) if need_w else None
        gb = torch.zeros_like(bias) if need_b else None
        for lo, hi in _blocks(ids.shape[0], weight.shape[0]):
            logits = torch.addmm(bias, rows[lo:hi], weight.t())
            gl = _log_softmax_at_grad(logits.sub_(lse[lo:hi, None]), ids[lo:hi], g[lo:hi])
            if gx is not None:
                torch.mm(gl, weight, out=gx[lo:hi])
            if gw is not None:
                gw.addmm_(gl.t(), rows[lo:hi])
            if gb is not None:
                gb += gl.sum(0)
        return (None if gx is None else gx.reshape(x.shape)), gw, gb, None


def _blocks(n: int, width: int) -> list[tuple[int, int]]:
    """Row ranges of :class:`LinearLogSoftmaxAt`'s blocks: about ``CHUNK_VALUES`` logits each."""
    step = max(16, CHUNK_VALUES // max(width, 1))
    return [(lo, min(n, lo + step)) for lo in range(0, n, step)]


def exclusive_mean(x: torch.Tensor) -> torch.Tensor:
    """For each channel of ``x`` (..., channels, width), the sum over the channels before it, over the square root
    of their count (the first gets zeros): what a head reads of the channels drawn before it in its step."""
    count = torch.arange(x.shape[-2], device=x.device).clamp(min=1).sqrt()[:, None]
    return (torch.cumsum(x, dim=-2) - x) / count


class StepModel(PreTrainedModel):
    """See the module docstring."""

    config_class = StepModelConfig
    base_model_prefix = "step"
    _supports_sdpa = True

    def __init__(self, config: StepModelConfig) -> None:
        super().__init__(config)
        d, c = config.n_embd, config.n_channels
        self.prefix_emb = nn.Embedding(config.prefix_vocab, d)
        self.value_emb = nn.Embedding(c * config.n_ids, d)
        self.value_proj = nn.Linear(2 * c, d)
        lags = len(config.seasons) if config.season_inputs else 0
        # each channel's value one season before the step predicted, per lag, as the previous values are given
        self.season_emb = nn.Embedding(lags * c * config.n_ids, d) if lags else None
        self.season_proj = nn.Linear(2 * c * lags, d) if lags else None
        self.calendar_emb = nn.ModuleList(nn.Embedding(s, d) for s in config.calendar_sizes)
        self.pos_emb = nn.Embedding(config.prefix_length + config.context, d)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(d)
        # predicts the next prefix token; a prefix of <bos> alone has none to predict (and DP-SGD needs every
        # parameter to take part in the loss)
        self.prefix_head = nn.Linear(d, config.prefix_vocab, bias=False) if config.prefix_length > 1 else None
        self.channel_emb = nn.Embedding(c, d)
        self.chain_emb = nn.Embedding(c * config.n_ids, d)
        self.head_ln, self.head_out_ln = nn.LayerNorm(d), nn.LayerNorm(d)
        self.head_fc, self.head_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.value_head = nn.Linear(d, config.n_bins + 1)  # bins, then "missing"
        # gate, shift and width of the copy component and of each seasonal one
        self.copy_head = nn.Linear(d, 3 * (1 + len(config.seasons))) if config.copy else None
        # each channel's own latest values, read by its head: positions, "no such value" flags and changes
        self.own_proj = nn.Linear(3 * config.own_lags - 1, d) if config.own_lags else None
        self.cross = CrossReadout(c, config.cross_rank, d, config.cross_prev) if config.cross_rank else None
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, CrossReadout):
            module.reset_parameters()

    # ------------------------------------------------------------------ inputs
    def _channel_offsets(self, device) -> torch.Tensor:
        return torch.arange(self.config.n_channels, device=device) * self.config.n_ids

    def _value_position(self, ids: torch.Tensor) -> torch.Tensor:
        """Bin positions scaled to [-1, 1] (0 for missing, start and pad ids) and missing flags of value ids,
        concatenated on the last axis."""
        k = self.config.n_bins
        position = torch.where(ids < k, ids.float() * (2.0 / max(k - 1, 1)) - 1.0, 0.0)
        return torch.cat([position, (ids == k).float()], dim=-1)

    def step_inputs(self, prev_ids: torch.Tensor, calendar: torch.Tensor | None,
                    season_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings (b, t, d) of steps whose previous values are ``prev_ids`` (b, t, channels), whose
        calendar features are ``calendar`` (b, t, features) or None and, with seasonal inputs, whose values one
        season earlier are ``season_ids`` (b, t, channels, lags) (None: no such value)."""
        cfg = self.config
        e = self.value_emb(prev_ids + self._channel_offsets(prev_ids.device)).sum(2) / math.sqrt(cfg.n_channels)
        e = e + self.value_proj(self._value_position(prev_ids))
        if self.season_emb is not None:
            lags = len(cfg.seasons)
            if season_ids is None:
                season_ids = torch.full(prev_ids.shape + (lags,), cfg.start_id, dtype=prev_ids.dtype,
                                        device=prev_ids.device)
            elif self.training and SEASON_DROPOUT > 0:
                # hidden season inputs read as "no such value": the model also learns each step from the context
                # alone, and leans on a season back only as far as it predicts (the copy components' anchors
                # are not hidden)
                hide = torch.rand(season_ids.shape, device=season_ids.device) < SEASON_DROPOUT
                season_ids = season_ids.masked_fill(hide, cfg.start_id)
            b, t, c = prev_ids.shape
            offsets = (torch.arange(c * lags, device=prev_ids.device) * cfg.n_ids).view(c, lags)
            e = e + self.season_emb(season_ids + offsets).sum((2, 3)) / math.sqrt(c * lags)
            e = e + self.season_proj(self._value_position(season_ids.reshape(b, t, c * lags)))
        for j, emb in enumerate(self.calendar_emb):
            values = calendar[..., j]
            if j == cfg.time_feature and self.training and TIME_DROPOUT > 0:
                # whole windows read "outside the span", as steps drawn beyond it do
                hide = torch.rand(values.shape[0], 1, device=values.device) < TIME_DROPOUT
                values = values.masked_fill(hide, emb.num_embeddings - 1)
            e = e + emb(values)
        return e

    def hidden(self, inputs: torch.Tensor, first_position: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """The transformer over input embeddings (b, t, d) at positions ``first_position``..; with ``cache``
        they follow its filled positions (which then grow by t)."""
        b, t, _ = inputs.shape
        pos = torch.arange(first_position, first_position + t, device=inputs.device).expand(b, t)
        x = self.drop(inputs + self.pos_emb(pos))
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        if cache is not None:
            cache.fill += t
        return self.ln_f(x)

    def forward(self, prefix_ids: torch.Tensor, prev_ids: torch.Tensor, calendar: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, season_ids: torch.Tensor | None = None,
                support: int | None = None, own_ids: torch.Tensor | None = None,
                chain_ids: torch.Tensor | None = None):
        """A training window: prefix tokens (b, p), the previous step's values of each step (b, steps, channels)
        and each step's calendar features (b, steps, features). Without ``targets``: the hidden states
        (b, p + steps, d). ``own_ids`` (b, steps, channels, own_lags - 1): each channel's values before the
        previous one (:meth:`_own`). With the steps' value ids as ``targets``: the prefix logits (b, p - 1, prefix vocab;
        None when p is 1) and the values' log-probabilities (b, steps, channels, bins + 1), or with ``support``
        those near each target and of "missing" (:meth:`channel_logits_all`); ``chain_ids`` (b, steps, channels),
        where given, are the values that the heads read as the channels before theirs in the step (by default the
        targets)."""
        x = torch.cat([self.prefix_emb(prefix_ids), self.step_inputs(prev_ids, calendar, season_ids)], dim=1)
        h = self.hidden(x)
        if targets is None:
            return h
        p = prefix_ids.shape[1]
        return ((self.prefix_head(h[:, :p - 1]) if p > 1 else None),
                self.channel_logits_all(h[:, p:], targets, prev_ids, season_ids, support, own_ids, chain_ids))

    # ------------------------------------------------------------------ outputs
    def _head_parts(self, u: torch.Tensor, prev: torch.Tensor, season: torch.Tensor | None
                    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """The features (..., d) that the value layer turns into the head's free logits (bins + 1; the callers apply
        it, in training fused with its log-softmax), from head inputs ``u`` (..., d), and, with copy components,
        each component's centre and width in bins (..., each) and the log mixture weights (..., 1 + components: the
        free part first). ``prev`` (...) holds the channel's previous value ids, ``season`` (..., lags) its ids one
        season earlier (the copy components' anchors; a start, missing or pad id turns one off)."""
        z = self.head_out_ln(u + self.head_proj(F.gelu(self.head_fc(self.head_ln(u)))))
        if self.copy_head is None:
            return z, [], None
        k = self.config.n_bins
        params = self.copy_head(z).float()
        lags = len(self.config.seasons)
        if lags and season is None:
            season = torch.full(prev.shape + (lags,), k + 1, dtype=prev.dtype, device=prev.device)
        anchors = [prev] + [season[..., j] for j in range(lags)]
        gates, parts = [torch.zeros_like(params[..., 0])], []
        for j, anchor in enumerate(anchors):
            gate, shift, width = params[..., 3 * j:3 * j + 3].unbind(-1)
            centre = anchor.clamp(max=k - 1).float() + COPY_SHIFT * torch.tanh(shift / COPY_SHIFT)
            parts.append((centre, F.softplus(width + 1.0) + 0.3))  # width in bins
            gates.append(torch.where(anchor < k, gate, torch.full_like(gate, -30.0)))  # no such value: component off
        return z, parts, F.log_softmax(torch.stack(gates, dim=-1), dim=-1)

    @staticmethod
    def _near(bins: torch.Tensor, centre: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """-z^2 / 2 of ``bins`` (..., m) under a Gaussian of ``centre`` and ``sigma`` (...), floored."""
        return -0.5 * (((bins - centre[..., None]) / sigma[..., None]) ** 2).clamp(max=-2 * LOG_FLOOR)

    def _head(self, u: torch.Tensor, prev: torch.Tensor, season: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities (..., bins + 1) from head inputs ``u`` (..., d), the channel's previous value ids
        ``prev`` (...) and, with seasonal components, its value ids one season earlier ``season`` (..., lags): the
        free distribution, or its mixture with the copy components (a discretised Gaussian over the bins each)."""
        z, parts, weights = self._head_parts(u, prev, season)
        free = F.log_softmax(self.value_head(z).float(), dim=-1)
        if weights is None:
            return free.clamp(min=LOG_FLOOR)
        grid = torch.arange(self.config.n_bins, device=u.device, dtype=torch.float32)
        out = (free + weights[..., :1]).clamp(min=LOG_FLOOR)
        for j, (centre, sigma) in enumerate(parts):
            near = F.log_softmax(self._near(grid, centre, sigma), dim=-1)
            part = torch.cat([near, torch.full_like(near[..., :1], LOG_FLOOR)], dim=-1)  # a copy is never "missing"
            out = torch.logaddexp(out, (part + weights[..., j + 1:j + 2]).clamp(min=LOG_FLOOR))
        return out

    def _log_norm(self, centre: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log of the sum of exp(:meth:`_near`) over the grid's bins (...): exactly over the ``NORM_WINDOW`` bins
        either side of the centre (clamped to the grid), and beyond them, where the terms vary smoothly or vanish,
        by the Gaussian integral over the rest of the grid (each bin as wide as its unit interval)."""
        k = self.config.n_bins
        span = 2 * NORM_WINDOW + 1
        if k <= span:
            return torch.logsumexp(self._near(torch.arange(k, device=centre.device, dtype=torch.float32), centre,
                                              sigma), dim=-1)
        lo = (centre.detach().round() - NORM_WINDOW).clamp(0, k - span)
        inside = torch.logsumexp(self._near(lo[..., None] + torch.arange(span, device=centre.device), centre, sigma),
                                 dim=-1)

        def cdf(x: torch.Tensor) -> torch.Tensor:
            return 0.5 * (1.0 + torch.erf((x - centre) / (sigma * math.sqrt(2.0))))

        # the bins below the window, [0, lo), and above it, [lo + span, k), as areas under the curve, each bin at
        # least the floor that :meth:`_near` gives every bin (so a component centred off the grid normalises as in
        # :meth:`_head`)
        tails = sigma * math.sqrt(2 * math.pi) * ((cdf(lo - 0.5) - cdf(torch.full_like(lo, -0.5)))
                                                  + (cdf(torch.full_like(lo, k - 0.5)) - cdf(lo + span - 0.5)))
        return torch.logaddexp(inside, (tails.clamp(min=0) + (k - span) * math.exp(LOG_FLOOR)).log())

    def _head_at(self, u: torch.Tensor, prev: torch.Tensor, season: torch.Tensor | None, bins: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`_head` gives at value bins ``bins`` (..., m) and at "missing" (...), without the whole
        distribution: the normalisers run over every bin, the mixture only over the m asked for. Training needs
        the log-probabilities only where a (smoothed) target has mass, and the mixture over every bin is most of
        a step's cost where steps hold many values."""
        z, parts, weights = self._head_parts(u, prev, season)
        k = self.config.n_bins
        index = torch.cat([bins, torch.full_like(bins[..., :1], k)], dim=-1)
        head = self.value_head
        hooked = bool(head._forward_hooks or head._forward_pre_hooks or head._backward_hooks)
        if (z.device.type == "cpu" and z.dtype == torch.float32 and not hooked
                and z[..., 0].numel() * head.out_features >= FUSED_MIN_LOGITS):
            at = LinearLogSoftmaxAt.apply(z, head.weight, head.bias, index)
        else:  # few logits, a GPU, or hooks that watch the layer (opacus' per-sample gradients under DP)
            at = LogSoftmaxAt.apply(head(z).float(), index)
        free, missing = at[..., :-1], at[..., -1]
        if weights is None:
            return free.clamp(min=LOG_FLOOR), missing.clamp(min=LOG_FLOOR)
        out = (free + weights[..., :1]).clamp(min=LOG_FLOOR)
        missing = (missing + weights[..., 0]).clamp(min=LOG_FLOOR)
        floor = torch.full_like(missing, LOG_FLOOR)
        for j, (centre, sigma) in enumerate(parts):
            near = self._near(bins.float(), centre, sigma) - self._log_norm(centre, sigma)[..., None]
            out = torch.logaddexp(out, (near + weights[..., j + 1:j + 2]).clamp(min=LOG_FLOOR))
            missing = torch.logaddexp(missing, floor)
        return out, missing

    def _own(self, prev: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor | float:
        """What a channel's head reads of its own latest values (..., d): the previous value ids ``prev`` (...) and
        the ``own_lags - 1`` before them, latest first, ``own`` (..., own_lags - 1; None: no such values). Each
        value's bin position (scaled to [-1, 1]) and "no such value" flag, and the previous value's change from each
        earlier one in bins (signed log1p; 0 where either is no value). The summed step input cannot carry each of
        many channels' recent course, and a channel's next move depends on it (a sensor warming keeps warming); a
        single channel's input is its exact previous bin, yet with its last changes in the head it predicts where a
        smooth series goes next far more sharply than through attention alone."""
        if self.own_proj is None:
            return 0.0
        k, lags = self.config.n_bins, self.config.own_lags
        if own is None:
            own = torch.full(prev.shape + (lags - 1,), self.config.start_id, dtype=prev.dtype, device=prev.device)
        hist = torch.cat([prev[..., None], own[..., :lags - 1]], dim=-1)
        is_value = hist < k
        position = torch.where(is_value, hist.float() * (2.0 / max(k - 1, 1)) - 1.0, 0.0)
        change = (hist[..., :1] - hist[..., 1:]).float()
        change = torch.where(is_value[..., :1] & is_value[..., 1:], torch.sign(change) * torch.log1p(change.abs()), 0.0)
        return self.own_proj(torch.cat([position, (~is_value).float(), change], dim=-1))

    def channel_logits_all(self, h: torch.Tensor, targets: torch.Tensor, prev: torch.Tensor,
                           season: torch.Tensor | None = None, support: int | None = None,
                           own: torch.Tensor | None = None, chain_ids: torch.Tensor | None = None
                           ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (b, t, channels, bins + 1) of every channel of every step, each given the values of
        the channels before it (teacher forcing: ``chain_ids``, else the targets): ``h`` (b, t, d), ``targets`` and
        ``prev`` (b, t, channels) the steps' value ids and their previous steps', ``season`` (b, t, channels, lags)
        the ids one season earlier, per lag, ``own`` (b, t, channels, own_lags - 1) the ids before the previous ones (:meth:`_own`),
        ``chain_ids`` (b, t, channels) the values read as the channels before each one in its step (None: the
        targets; training passes them moved by :func:`noisy_inputs`).
        With ``support`` (bins): only the log-probabilities at the bins within that many of each target
        (:func:`support_bins`; b, t, channels, 2 * support + 1) and of "missing" (b, t, channels)."""
        b, t, c = targets.shape
        shown = targets if chain_ids is None else chain_ids
        chain = self.chain_emb(shown.clamp(max=self.config.n_ids - 1) + self._channel_offsets(targets.device))
        ch = self.channel_emb(torch.arange(c, device=h.device).expand(b, c))[:, None]  # (b, 1, c, d)
        u = h[:, :, None] + ch + exclusive_mean(chain) + self._own(prev, own)
        if self.cross is not None:
            u = u + self.cross(torch.cat([self._feats(shown), self._feats(prev)], dim=-1))
        if support is None:
            return self._head(u, prev, season)
        return self._head_at(u, prev, season, support_bins(targets, support, self.config.n_bins))

    def _feats(self, ids: torch.Tensor) -> torch.Tensor:
        """Bin positions and missing flags (..., 2) of value ids (...): what :class:`CrossReadout` reads."""
        return self._value_position(ids[..., None])

    def channel_logits(self, h: torch.Tensor, channel: int, before: torch.Tensor, prev: torch.Tensor,
                       season: torch.Tensor | None = None, own: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probabilities (b, bins + 1) of ``channel`` at one step: ``h`` (b, d), ``before`` the running state of
        the channels already drawn (:meth:`chain_start`, :meth:`chain`), ``prev`` (b,) the channel's previous value
        ids, ``season`` (b, lags) its ids one season earlier, per lag, ``own`` (b, own_lags - 1) its ids before the
        previous one."""
        b = h.shape[0]
        d = self.config.n_embd
        ch = self.channel_emb(torch.full((b,), channel, dtype=torch.long, device=h.device))
        width = self._summed_width()
        summed = before[:, :width] / math.sqrt(max(channel, 1))
        u = h + ch + summed[:, :d] + self._own(prev, own)
        if self.cross is not None:
            u = u + self.cross.read(channel, summed[:, d:], before[:, width:])
        return self._head(u, prev, season)

    def _summed_width(self) -> int:
        """Width of the running state's part that sums over the channels drawn: chain embeddings and the cross
        readout's features."""
        return self.config.n_embd + (self.config.cross_rank if self.cross is not None else 0)

    def chain_start(self, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """The running state of a step before its first channel is drawn, whose channels' previous value ids are
        ``prev`` (b, channels): the summed chain embeddings (b, d) and, with a cross readout, the summed features of
        its rank, side by side, then the previous step's summary where the readout reads it (fixed for the step)."""
        state = h.new_zeros(h.shape[0], self._summed_width())
        if self.cross is None or self.cross.prev_inp is None:
            return state
        return torch.cat([state, self.cross.previous(self._feats(prev))], dim=-1)

    def chain(self, channel: int, ids: torch.Tensor) -> torch.Tensor:
        """What ``channel`` holding value ids ``ids`` (b,) adds to the running state (:meth:`chain_start`)."""
        e = self.chain_emb(ids + channel * self.config.n_ids)
        if self.cross is None:
            return e
        parts = [e, self.cross.features(self._feats(ids)[:, None], slice(channel, channel + 1))[:, 0]]
        if self.cross.prev_inp is not None:
            parts.append(e.new_zeros(e.shape[0], self.config.cross_rank))  # the previous step's summary stays
        return torch.cat(parts, dim=-1)


def support_bins(targets: torch.Tensor, radius: int, n_bins: int) -> torch.Tensor:
    """The bins (..., 2 * radius + 1) within ``radius`` of each target bin (a missing or pad target counts as the
    last bin), clamped to the grid: where a smoothed target has its mass."""
    offsets = torch.arange(-radius, radius + 1, device=targets.device)
    return (targets.clamp(max=n_bins - 1)[..., None] + offsets).clamp(0, n_bins - 1)


def support_weights(targets: torch.Tensor, channel_widths: torch.Tensor, radius: int, n_bins: int,
                    values: torch.Tensor | None = None) -> torch.Tensor:
    """The smoothed targets on :func:`support_bins`: a discretised Gaussian of each channel's width (bins;
    ``channel_widths`` (channels,), 0: the target bin alone) over the bins within ``radius`` of the target that
    lie on the grid, normalised there. ``targets`` (..., channels). With ``values`` (channels, bins), each bin's
    value in units of the median bin width (:func:`bin_values`), a bin's distance from the target is the larger
    of the two in bins and in median bin widths: where bins are wide (the tails), the target spreads over no
    more of the value axis than a width of median bins."""
    d = torch.arange(-radius, radius + 1, device=targets.device, dtype=torch.float32)
    widths = channel_widths.to(targets.device)[:, None]
    clamped = targets.clamp(max=n_bins - 1)
    position = clamped[..., None] + d.long()
    dist = d
    if values is not None:
        v = values.to(targets.device)
        ch = torch.arange(v.shape[0], device=targets.device)
        apart = (v[ch[:, None], position.clamp(0, n_bins - 1)] - v[ch, clamped][..., None]).abs()
        dist = torch.maximum(d.abs(), apart)
    kernel = torch.where(widths > 0, torch.exp(-0.5 * (dist / widths.clamp(min=1e-6)) ** 2), (d == 0).float())
    w = kernel * ((position >= 0) & (position < n_bins))
    return w / w.sum(-1, keepdim=True).clamp(min=1e-12)


def bin_values(edges, tails: list[list[float]] | None, n_channels: int) -> torch.Tensor:
    """Each bin's value (channels, bins) in units of the median bin width: its midpoint, and for the two edge
    bins (which reach out to the most extreme values) the mean of the training values in them where the codec
    knows it (``tails``: per channel, the mean distance into the low and the high edge bin), else their midpoint."""
    e = np.asarray(edges, dtype=np.float64)
    width = float(np.median(np.diff(e))) or 1.0
    mid = np.repeat(((e[:-1] + e[1:]) / 2)[None, :], n_channels, axis=0)
    for c, tail in enumerate(tails or []):
        if c < n_channels and len(tail) == 2 and len(e) > 2:
            mid[c, 0], mid[c, -1] = e[1] - tail[0], e[-2] + tail[1]
    return torch.tensor(mid / width, dtype=torch.float32)


def _config(model: nn.Module) -> StepModelConfig:
    """The config of a step model, also when DP-SGD (``_module``) or data parallelism (``module``) wraps it."""
    while not hasattr(model, "config"):
        model = getattr(model, "_module", None) or model.module
    return model.config


def input_noise(n_channels: int, share: float | None) -> float:
    """The share of input values that training moves (:func:`noisy_inputs`): ``share`` where given, else
    ``INPUT_NOISE`` where a step holds several channels and none for one channel."""
    return float(share) if share is not None else INPUT_NOISE if n_channels > 1 else 0.0


def noisy_inputs(rng: np.random.Generator, share: float, n_bins: int, views: list[tuple[np.ndarray, int]]
                 ) -> list[np.ndarray]:
    """Input value ids with a ``share`` of the series' values moved by a rounded normal draw of
    ``INPUT_NOISE_BINS`` bins (kept inside the bins). ``views``: (ids (b, t, c), lag) pairs, each the window's
    values ``lag`` steps back (:meth:`StepCodec.lagged`; lag 0: the steps' own values, as the channels after each
    one in its step read it); one step's value moves alike in every view that shows it,
    as one drawn value would in generation. Missing, ``<start>`` and pad ids stay. Generation feeds the model its
    own draws, which stray from a smooth path by about a bin where the data moves by about that much; trained on
    exact inputs only, the model takes such a stray for the start of a rougher stretch and widens its next draw,
    so that roughness grows along a sample."""
    if share <= 0 or not views:
        return [ids for ids, _ in views]
    back = max(lag for _, lag in views)
    b, t, c = views[0][0].shape
    moved = rng.random((b, t + back, c)) < share
    shift = np.where(moved, np.rint(rng.normal(0.0, INPUT_NOISE_BINS, (b, t + back, c))), 0).astype(np.int64)
    steps = np.arange(t)
    return [np.where(ids < n_bins, np.clip(ids + shift[:, steps - lag + back], 0, n_bins - 1), ids)
            for ids, lag in views]


def window_loss(codec, arrays: dict, smoothing: float | list[float], condition_dropout: float, seed: int,
                noise: float = 0.0):
    """``loss(model, rows, reduction)`` for the step model. ``rows`` (b, 2): a series of ``arrays``
    (:meth:`StepCodec.encode`) and the window's first step, or -1 for a random offset (drawn anew at every call,
    so every epoch sees other windows of long series). Value targets get the smoothed cross-entropy of
    :func:`tsynth.train.sequence_loss` (a Gaussian over neighbouring bins, per channel), missing readings and
    prefix tokens plain cross-entropy; condition tokens are replaced by their field's unknown token with
    probability ``condition_dropout`` and a ``noise`` share of the input values moved (:func:`noisy_inputs`) while
    the model trains. With ``reduction="none"`` it returns each row's mean loss."""
    widths = [smoothing] if isinstance(smoothing, (int, float)) else list(smoothing)
    k = codec.n_bins
    # the smoothed target of each value has its mass within SUPPORT_SIGMAS widths of it (beyond them, under 1e-4
    # of it): the loss needs the model's log-probabilities there only
    radius = int(math.ceil(SUPPORT_SIGMAS * max(widths)))
    channel_widths = torch.tensor([float(widths[c % len(widths)]) for c in range(codec.n_channels)])
    values = bin_values(codec.values.edges, codec.values.tails, codec.n_channels)
    rng = np.random.default_rng(seed)
    slots = [(1 + j, codec.values.field_offset(j)) for j in range(len(codec.values.fields))]

    def loss(model, rows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        r = rows.cpu().numpy()
        series, offsets = r[:, 0], r[:, 1].copy()
        draw = offsets < 0
        if draw.any():  # a series' first window as often as any other (generation always starts there)
            n = arrays["lengths"][series[draw]]
            span = np.maximum(n - codec.context, 0)
            first = rng.random(len(n)) < codec.context / (span + codec.context)
            offset = np.where(first, 0, rng.integers(0, span + 1))
            # a series seen whole is also seen, now and then, from a later step (without its <start>), as
            # generation beyond its length sees it once the context slides
            shifted = (span == 0) & (n >= 4) & (rng.random(len(n)) < SHIFTED_SHARE)
            offsets[draw] = np.where(shifted, rng.integers(1, np.maximum(n // 2, 1) + 1), offset)
        prefix, prev, target, calendar = codec.windows(arrays, series, offsets)
        # the previous values, each season back and the own lags: one view of the window per lag
        seasons, own_lags = list(_config(model).seasons), list(range(2, _config(model).own_lags + 1))
        lags = [1, *seasons, *own_lags]
        views = [prev] + [codec.lagged(arrays, series, offsets, lag) for lag in lags[1:]]
        chain_ids = None
        if model.training and noise > 0:  # the step's own values too, as the channels before each one read them
            *views, chain_ids = noisy_inputs(rng, noise, k, list(zip([*views, target], [*lags, 0])))
        prev, seasonal, owned = views[0], views[1:1 + len(seasons)], views[1 + len(seasons):]
        season = np.stack(seasonal, axis=-1) if seasonal else None
        own = np.stack(owned, axis=-1) if owned else None
        prefix_in = prefix.copy()
        if model.training and condition_dropout > 0:
            for pos, unknown in slots:
                prefix_in[rng.random(len(prefix)) < condition_dropout, pos] = unknown
        device = rows.device
        tgt = torch.as_tensor(target, device=device)
        prefix_logits, value_logits = model(torch.as_tensor(prefix_in, device=device),
                                            torch.as_tensor(prev, device=device),
                                            None if calendar is None else torch.as_tensor(calendar, device=device),
                                            targets=tgt,
                                            season_ids=None if season is None else torch.as_tensor(season, device=device),
                                            support=radius,
                                            own_ids=None if own is None else torch.as_tensor(own, device=device),
                                            chain_ids=None if chain_ids is None else torch.as_tensor(chain_ids,
                                                                                                   device=device))
        logp, logp_missing = value_logits  # already normalised log-probabilities, near each target and of "missing"
        valid, is_value = tgt <= k, tgt < k  # pad (k + 2) is never predicted; k is "missing"
        soft = support_weights(tgt, channel_widths, radius, k, values)
        per_value = torch.where(is_value, -(soft * logp).sum(-1), -logp_missing) * valid
        total = per_value.sum((1, 2))
        count = valid.sum((1, 2)).float()
        if prefix_logits is not None:
            plp = F.log_softmax(prefix_logits.float(), dim=-1)
            total = total - plp.gather(-1, torch.as_tensor(prefix[:, 1:], device=device)[..., None]).squeeze(-1).sum(1)
            count = count + prefix_logits.shape[1]
        per_row = total / count.clamp(min=1)
        return per_row if reduction == "none" else per_row.mean()

    return loss


AutoConfig.register(StepModelConfig.model_type, StepModelConfig)
AutoModel.register(StepModelConfig, StepModel)
AutoModelForCausalLM.register(StepModelConfig, StepModel)
