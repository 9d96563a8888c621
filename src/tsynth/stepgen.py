"""Generation from step models (one model or an ensemble): series of any length over a sliding context.

A batch first draws its prefix (condition fields, forced where given, and the series-level tokens), then one
step after another: the step's input (the previous step's values and the step's calendar position) goes
through the transformer with a key/value cache, and its channels are drawn one after another from the
channel head, each given the ones drawn before it. An ensemble averages the members' probabilities of each
channel (:func:`tsynth.sample.pooled_probs`), where a token model's ensemble draws each series from one member
(docs/model-and-training.md, "Ensemble", has why).
When the context is full, the cache is rebuilt from the prefix and the most recent three quarters of the
context, so positions stay within what the model was trained on, memory is bounded by the context whatever
the length, and time grows linearly with it.

``gaps="keep"`` draws "missing" readings as often as the model learnt them; ``gaps="none"`` never draws them
(the model still conditions on the values it drew instead). Batches are seeded from ``seed`` and their index,
so the result does not depend on how many run at once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from .codecs.calendar import step_times
from .codecs.steps import StepCodec
from .codecs.values import BOS
from .data import SeriesSet
from .devicememory import draw_within_memory
from .errors import ConfigError, check_sample_request
from .sample import draw_tokens, pooled_probs, run_batches
from .stepmodel import KVCache

GAPS = ("keep", "none")
MAX_BATCH = 512
CALENDAR_BUDGET = 64 << 20  # bytes of calendar features and value ids held for one batch


def sample_lengths(codec: StepCodec, n: int, length: int | None, rng: np.random.Generator) -> np.ndarray:
    """Each series' length: ``length``, else the training length, else drawn from the training lengths."""
    if length is not None:
        if int(length) < 1:
            raise ConfigError(f"length must be at least 1 step, got {length}")
        return np.full(n, int(length), dtype=np.int64)
    if codec.values.length:
        return np.full(n, int(codec.values.length), dtype=np.int64)
    if codec.lengths:
        values = np.asarray(list(codec.lengths), dtype=np.int64)
        counts = np.asarray(list(codec.lengths.values()), dtype=np.float64)
        return rng.choice(values, size=n, p=counts / counts.sum())
    raise ConfigError("this model was trained on series of different lengths: pass length=")


def parse_start(start: Any) -> np.datetime64:
    """One time stamp, or a clear error naming what did not parse."""
    try:
        t = pd.Timestamp(start)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"start {start!r} is not a time stamp ({e})") from None
    if t is pd.NaT:
        raise ConfigError(f"start {start!r} is not a time stamp")
    if t.tzinfo is not None:
        t = t.tz_convert(None)
    return np.datetime64(t.as_unit("ns").to_datetime64(), "ns")


def sample_starts(codec: StepCodec, conds: list[dict], start: Any, rng: np.random.Generator,
                  lengths: np.ndarray) -> np.ndarray | None:
    """Each series' first time stamp: its condition's ``start``, else ``start``, else one drawn from the training
    starts; None when the model has no time axis (no frequency, unless every series is one step long) and none
    was given."""
    given = parse_start(start) if start is not None else None
    if codec.values.freq is None and (lengths > 1).any():  # no time axis to put series on
        if given is not None or any(c.get("start") is not None for c in conds):
            raise ConfigError("this model was trained without a frequency: series cannot get time stamps")
        return None
    out = []
    for c in conds:
        s = c.get("start")
        if s is not None:
            out.append(parse_start(s))
        elif given is not None:
            out.append(given)
        elif codec.starts:
            out.append(parse_start(codec.starts[int(rng.integers(len(codec.starts)))]))
        else:
            out.append(None)
    if all(s is None for s in out):
        if codec.calendar:
            raise ConfigError("this model uses calendar features: pass start= (the first time stamp)")
        return None
    if any(s is None for s in out):
        raise ConfigError("give a start for every series or for none")
    return np.asarray(out, dtype="datetime64[ns]")


def generate_steps(models: Sequence[Any], codec: StepCodec, n: int, conditions: Sequence[dict] | None = None,
                   length: int | None = None, start: Any = None, gaps: str = "keep", temperature: float = 1.0,
                   top_p: float = 1.0, seed: int | None = 0, batch_size: int | None = None,
                   workers: int | None = None, progress: bool = False) -> SeriesSet:
    """Draw ``n`` series (see the module docstring). ``conditions``: one dict per series (missing fields are
    drawn; ``start`` there sets that series' first time stamp)."""
    check_sample_request(n, temperature, top_p)
    if gaps not in GAPS:
        raise ConfigError(f"gaps must be one of {', '.join(GAPS)}, got {gaps!r}")
    conds = [dict(c) for c in conditions] if conditions is not None else [{} for _ in range(n)]
    if len(conds) != n:
        raise ConfigError(f"{len(conds)} condition rows for {n} series")
    rng = np.random.default_rng(seed)
    lengths = sample_lengths(codec, n, length, rng)
    starts = sample_starts(codec, conds, start, rng, lengths)
    per_series = int(lengths.max()) * (codec.n_channels + len(codec.calendar)) * 8
    device = next(models[0].parameters()).device
    before = rng.bit_generator.state

    def draw(size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng.bit_generator.state = before  # a draw again at a smaller batch size is the one that size gives
        first = range(0, n, size)
        seeds = rng.integers(2**31, size=len(first))

        def run(k: int) -> tuple[np.ndarray, np.ndarray]:
            sl = slice(first[k], first[k] + size)
            gen = torch.Generator().manual_seed(int(seeds[k]))
            return _generate_batch(models, codec, conds[sl], lengths[sl], None if starts is None else starts[sl],
                                   gaps, temperature, top_p, gen, device)

        return run_batches(run, len(first), workers, progress)

    batches = draw_within_memory(draw, min(n, batch_size or max(1, min(MAX_BATCH, CALENDAR_BUDGET // per_series))),
                                 f"drawing series of {int(lengths.max())} steps")
    width = int(lengths.max())
    prefixes = np.concatenate([b[0] for b in batches])
    ids = np.concatenate([np.pad(b[1], ((0, 0), (0, width - b[1].shape[1]), (0, 0)),
                                 constant_values=codec.n_bins + 2) for b in batches])
    item_ids = [str(c.get("item_id", f"synthetic_{i}")) for i, c in enumerate(conds)]
    return codec.decode(prefixes, ids, lengths, rng, item_id=item_ids, start=starts)


@torch.no_grad()  # per call: no_grad is per thread
def _generate_batch(models, codec: StepCodec, conds: list[dict], lengths: np.ndarray, starts: np.ndarray | None,
                    gaps: str, temperature: float, top_p: float, gen: torch.Generator, device
                    ) -> tuple[np.ndarray, np.ndarray]:
    b, vc = len(conds), codec.values
    n_fields, p_len, ctx, k = len(vc.fields), codec.prefix_length, codec.context, codec.n_bins
    steps = int(lengths.max())
    caches = [KVCache.empty(m.config, b, device) for m in models]
    forced = torch.tensor([vc.condition_ids(c) for c in conds], dtype=torch.long).reshape(b, n_fields)
    given = torch.tensor([[f.name in c for f in vc.fields] for c in conds], dtype=torch.bool).reshape(b, n_fields)
    ranges = codec.slot_ranges()
    prefix = torch.full((b, p_len), BOS, dtype=torch.long)

    def mean_probs(logits_of) -> torch.Tensor:
        return pooled_probs([logits_of(j, m).float().cpu() for j, m in enumerate(models)], temperature)

    for pos in range(1, p_len):  # the prefix, one slot at a time
        probs = mean_probs(lambda j, m: m.prefix_head(
            m.hidden(m.prefix_emb(prefix[:, pos - 1:pos].to(device)), pos - 1, caches[j])[:, -1]))
        lo, hi = ranges[pos - 1]
        allowed = torch.zeros_like(probs)
        allowed[:, lo:hi] = probs[:, lo:hi]
        allowed[allowed.sum(-1) <= 0, lo:hi] = 1.0
        draw = draw_tokens(allowed / allowed.sum(-1, keepdim=True), top_p, gen)
        if pos - 1 < n_fields:
            draw = torch.where(given[:, pos - 1], forced[:, pos - 1], draw)
        prefix[:, pos] = draw
    for j, m in enumerate(models):
        m.hidden(m.prefix_emb(prefix[:, p_len - 1:].to(device)), p_len - 1, caches[j])

    calendar = None
    if codec.calendar:
        times = step_times(starts, np.arange(steps)[None, :].repeat(b, 0), vc.freq)
        calendar = torch.as_tensor(codec.calendar_at(times))
    ids = torch.full((b, steps, codec.n_channels), k + 2, dtype=torch.long)
    start_ids = torch.full((b, 1, codec.n_channels), k + 1, dtype=torch.long)
    keep = ctx - max(1, ctx // 4)
    lags = models[0].config.seasons
    first = 0  # the first step in the context

    def back(lag: int, lo: int, hi: int) -> torch.Tensor:
        """Value ids (b, hi - lo, channels) ``lag`` steps before steps lo..hi-1 (<start> before the first)."""
        before = max(0, min(lag - lo, hi - lo))
        return torch.cat([start_ids.expand(b, before, -1), ids[:, lo + before - lag:hi - lag]], dim=1)

    def backs(lags: Sequence[int], lo: int, hi: int) -> torch.Tensor | None:
        """:func:`back` for each of ``lags``, stacked on a last axis, on the device; None without lags."""
        return torch.stack([back(lag, lo, hi) for lag in lags], dim=-1).to(device) if len(lags) else None

    def step_ids(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Previous value ids, calendar features and value ids one season back (per lag) of steps lo..hi-1, on
        the device: every model's step inputs, and the anchors of its copy components."""
        cal = None if calendar is None else calendar[:, lo:hi].to(device)
        return back(1, lo, hi).to(device), cal, backs(lags, lo, hi)

    own_lags = max(m.config.own_lags for m in models)

    for t in range(steps):
        if t - first == ctx:  # the context is full: rebuild it from the prefix and the last `keep` steps
            first = t - keep
            kept = step_ids(first, t)
            for j, m in enumerate(models):
                caches[j].fill = 0
                m.hidden(torch.cat([m.prefix_emb(prefix.to(device)), m.step_inputs(*kept)], dim=1), 0, caches[j])
        prev, cal, season = step_ids(t, t + 1)
        hs = [m.hidden(m.step_inputs(prev, cal, season), p_len + t - first, caches[j])[:, -1]
              for j, m in enumerate(models)]
        before = [m.chain_start(h, prev[:, 0]) for m, h in zip(models, hs)]
        # each channel's values before the previous one, latest first, as its head reads them
        own = backs(range(2, own_lags + 1), t, t + 1)
        for c in range(codec.n_channels):
            anchors = (prev[:, 0, c], None if season is None else season[:, 0, c],
                       None if own is None else own[:, 0, c])
            probs = mean_probs(lambda j, m: m.channel_logits(hs[j], c, before[j], *anchors))
            if gaps == "none" or not codec.gaps:
                probs[:, k] = 0.0
            empty = probs.sum(-1) <= 0
            probs[empty, :k] = 1.0
            draw = draw_tokens(probs / probs.sum(-1, keepdim=True), top_p, gen)
            ids[:, t, c] = draw
            for j, m in enumerate(models):
                before[j] = before[j] + m.chain(c, draw.to(device))
    return prefix.numpy(), ids.numpy()
