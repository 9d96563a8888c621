"""Constrained, batched, seeded sampling from the local value-token LM (one model or an ensemble).

At every position only the tokens that may stand there can be drawn: a field's values at its condition
slot (or the given condition, forced), level tokens at level slots, value tokens where values belong.
A fixed-length codec therefore always yields exactly the asked length; a variable-length one may end a
series with <eos> at a time-step boundary. An ensemble draws each series from one of its members (the members
take even shares of the series, in random order: a mixture of the members' series; docs/model-and-training.md,
"Ensemble", has why). Members of one GPT-2 shape decode together as one stacked model (:mod:`tsynth.stacked`),
each member its own rows of a batch.

Each batch has its own generator, seeded from ``seed`` and the batch's index, so batches can run on several
threads at once with the same result; the key/value cache is preallocated (a growing cache copies itself at
every token, which made long series quadratic).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch

from .codecs.values import BOS, EOS, ValueCodec
from .data import SeriesSet
from .devicememory import draw_within_memory
from .errors import ConfigError, check_min_prob, check_sample_request
from .stacked import StackedGPT2, stack_members

T = TypeVar("T")


def pooled_probs(logits: Sequence[torch.Tensor] | torch.Tensor, temperature: float) -> torch.Tensor:
    """A step ensemble's distribution of a channel from its members' logits (a list, or one tensor with the members
    first; rows: series): the mean of their distributions at ``temperature`` (a mixture at every channel of every
    step; docs/model-and-training.md, "Ensemble", has why step models mix there and token models by series)."""
    stacked = logits if isinstance(logits, torch.Tensor) else torch.stack(list(logits))
    return torch.softmax(stacked / temperature, dim=-1).mean(0)


def floor_values(probs: torch.Tensor, lo: int, hi: int, min_prob: float) -> torch.Tensor:
    """``probs`` (rows: series) with the tokens of ids [lo, hi) whose share of the row's total is below
    ``min_prob`` set to zero; each row keeps its most likely token of the range. Under DP it cuts off the small
    probabilities that a clipped, noised fit leaves on unlikely bins, which over a series' many draws add up to
    jumps; it is post-processing of the model (docs/privacy.md has what it was measured to do)."""
    if min_prob <= 0:
        return probs
    part = probs[:, lo:hi]
    cut = torch.minimum(min_prob * probs.sum(-1, keepdim=True), part.max(-1, keepdim=True).values)
    out = probs.clone()
    out[:, lo:hi] = part * (part >= cut)
    return out


def draw_tokens(probs: torch.Tensor, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row from ``probs`` (rows sum to 1, or to any positive total), restricted to the top-p
    nucleus. Drawn by inverting each row's cumulative sum at one uniform number per row: a token of probability
    zero is never drawn (no uniform falls in an empty interval), and it costs a cumulative sum and a binary
    search where ``torch.multinomial`` draws an exponential number for every token of every row."""
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs * (probs.cumsum(-1) - probs < top_p)
    cum = probs.cumsum(-1)
    total = cum[..., -1:]
    u = torch.rand(total.shape, generator=gen, dtype=cum.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # rounding never reaches the total
    choice = torch.searchsorted(cum, u, right=True)
    return (choice if order is None else order.gather(-1, choice)).squeeze(-1)


CACHE_BUDGET_BYTES = 1 << 30  # key/value cache of one batch, all members together
ROWS_PER_STEP = 768  # series one decoding step computes on a CPU (over all members)
GPU_ROWS_PER_STEP = 4096  # and on a GPU


def batch_size_for(models: Sequence[Any], positions: int) -> int:
    """Series per batch (over all ``models``, each drawing its own share): about ``ROWS_PER_STEP`` on a CPU,
    ``GPU_ROWS_PER_STEP`` on a GPU; fewer where the batch's preallocated cache would pass the budget.

    Each position of a batch reads its whole key/value cache: on a CPU a batch whose cache and activations stay
    nearer the cores' caches decodes faster than one large batch, and the per-call overhead of smaller batches
    stays small (docs/model-and-training.md#sampling)."""
    per_series = max(2 * m.config.n_layer * m.config.n_embd * positions * 4 for m in models)
    most = ROWS_PER_STEP if next(models[0].parameters()).device.type == "cpu" else GPU_ROWS_PER_STEP
    return int(max(1, min(most, CACHE_BUDGET_BYTES // per_series)))


_CORES: int | None = None  # cores this process may use for sampling; None: its CPU affinity


def set_sampling_cores(cores: int | None) -> None:
    """Limit the cores this process' sampling uses (a Ray worker granted one CPU sets 1: otherwise it would
    sample batches on every core of its node, beside the other workers); ``None``: the CPU affinity."""
    global _CORES
    _CORES = cores


def default_workers() -> int:
    """Batches sampled at once: the cores that torch's own threads leave idle (one torch thread per core: as
    many batches as cores; torch on every core: one)."""
    cores = _CORES or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, torch.get_num_threads()))


def run_batches(run: Callable[[int], T], count: int, workers: int | None, progress: bool) -> list[T]:
    """``run(k)`` for the ``count`` batches, ``workers`` at a time (default :func:`default_workers`), in order,
    with a progress bar where ``progress``."""
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(min(workers or default_workers(), count)) as pool:
        return list(tqdm(pool.map(run, range(count)), total=count, desc="sampling", disable=not progress,
                         leave=False))


def generate(models: Sequence[Any], codec: ValueCodec, n: int, conditions: Sequence[dict] | None = None,
             length: int | None = None, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = 0,
             batch_size: int | None = None, workers: int | None = None, progress: bool = False,
             min_prob: float = 0.0) -> SeriesSet:
    """Draw ``n`` series. ``conditions`` is one dict per series (missing fields are sampled); value tokens below
    ``min_prob`` of their position's distribution are not drawn (:func:`floor_values`). An ensemble draws each
    series from one member: the members take even shares of the series, in random order. Batches of about
    ``batch_size`` series run ``workers`` at a time (default :func:`default_workers`); the result does not depend
    on how many."""
    check_sample_request(n, temperature, top_p)
    check_min_prob(min_prob)
    steps = int(length or codec.length or 0)
    if steps < 1:
        raise ConfigError("this model was trained on variable-length series: pass length=")
    max_pos = min(m.config.n_positions for m in models)
    positions = codec.sequence_length(steps)
    if positions - 1 > max_pos:
        most = (max_pos + 1 - codec.sequence_length(0)) // codec.n_channels
        raise ConfigError(f"length {steps} is longer than this token model draws ({most} steps: its positions hold "
                          "one value each, up to its training length); the step model (codec 'step', --codec step) "
                          "draws series of any length")
    conds = list(conditions) if conditions is not None else [{}] * n
    if len(conds) != n:
        raise ConfigError(f"{len(conds)} condition rows for {n} series")
    rng = np.random.default_rng(seed)
    conds = codec.draw_profiles(conds, rng)
    device = next(models[0].parameters()).device
    member = rng.permutation(np.arange(n) % len(models))
    shares = [np.flatnonzero(member == m) for m in range(len(models))]  # each member's series
    before = rng.bit_generator.state

    def draw(size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        rng.bit_generator.state = before  # a draw again at a smaller batch size is the one that size gives
        rows = max(1, size // len(models))  # series of each member in one batch
        starts = range(0, max(len(share) for share in shares), rows)
        seeds = rng.integers(2**31, size=len(starts))
        decoders: dict[tuple[int, ...], StackedGPT2 | _OneByOne] = {}  # by the members a batch decodes

        def decoder_of(active: list[int]) -> "StackedGPT2 | _OneByOne":
            if tuple(active) not in decoders:  # two threads may both build one: the same decoder either way
                members = [models[j] for j in active]
                decoders[tuple(active)] = stack_members(members) or _OneByOne(members)
            return decoders[tuple(active)]

        def run(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            # the batch's series, member after member, each member's padded to as many as the most (-1: padding);
            # members with no series left in it (fewer series than members) are not decoded
            parts = [share[starts[k]: starts[k] + rows] for share in shares]
            active = [j for j, part in enumerate(parts) if len(part)]
            decoder = decoder_of(active)
            index = np.full((len(active), max(map(len, parts))), -1)
            for row, j in enumerate(active):
                index[row, : len(parts[j])] = parts[j]
            batch_conds = [conds[i] if i >= 0 else {} for i in index.ravel()]
            gen = torch.Generator().manual_seed(int(seeds[k]))
            return (index.ravel(), *_generate_batch(decoder, codec, batch_conds, index.shape[1], steps, temperature,
                                                    top_p, gen, device, min_prob))

        return run_batches(run, len(starts), workers, progress)

    batches = draw_within_memory(draw, min(n, batch_size or batch_size_for(models, positions)),
                                 f"drawing series of {steps} steps")
    index, prefixes, values, lengths = (np.concatenate(parts) for parts in zip(*batches))
    order = np.argsort(np.where(index < 0, n, index), kind="stable")[:n]  # the series in order, padding left out
    item_ids = [str(c.get("item_id", f"synthetic_{i}")) for i, c in enumerate(conds)]
    return codec.decode(prefixes[order], values[order], lengths[order], rng, item_id=item_ids,
                        start=_starts(conds, n))


@torch.no_grad()  # per call: no_grad is per thread
def _generate_batch(decoder: "StackedGPT2 | _OneByOne", codec: ValueCodec, conds: list[dict], rows: int,
                    steps: int, temperature: float, top_p: float, gen: torch.Generator,
                    device, min_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of series, decoded through ``decoder``'s members (stacked, or one by one): the first ``rows``
    series are the first member's, the next ``rows`` the second's, and so on."""
    b = len(conds)
    forced = torch.tensor([codec.condition_ids(c) for c in conds], dtype=torch.long).reshape(b, len(codec.fields))
    given = torch.tensor([[f.name in c for f in codec.fields] for c in conds], dtype=torch.bool).reshape(b, len(codec.fields))
    ranges = codec.prefix_slots()
    n_values = steps * codec.n_channels
    total = 1 + len(ranges) + n_values
    tokens = torch.full((b, total), BOS, dtype=torch.long)
    cache = decoder.start(rows, total)
    ended = torch.zeros(b, dtype=torch.bool)
    lengths = torch.full((b,), steps, dtype=torch.long)
    for pos in range(1, total):
        logits = decoder.step(tokens[:, pos - 1].to(device).view(-1, rows), pos - 1, cache)  # (members, rows, V)
        probs = torch.softmax(logits.float().cpu().reshape(b, -1) / temperature, dim=-1)
        slot = pos - 1
        if slot < len(ranges):
            lo, hi = ranges[slot]
        else:
            lo, hi = codec.value_offset, codec.value_offset + codec.n_value_tokens
            probs = floor_values(probs, lo, hi, min_prob)
        allowed = torch.zeros_like(probs)
        allowed[:, lo:hi] = probs[:, lo:hi]
        value_idx = slot - len(ranges)
        may_end = codec.length is None and value_idx > 0 and value_idx % codec.n_channels == 0
        if may_end:
            allowed[:, EOS] = probs[:, EOS]
        allowed[allowed.sum(-1) <= 0, lo:hi] = 1.0  # a model that puts no mass on allowed tokens
        draw = draw_tokens(allowed / allowed.sum(-1, keepdim=True), top_p, gen)
        if slot < len(codec.fields):  # a given condition (or its unknown token) is forced, others drawn
            draw = torch.where(given[:, slot], forced[:, slot], draw)
        if may_end:
            newly = (draw == EOS) & ~ended
            lengths[newly] = value_idx // codec.n_channels
            ended |= newly
            draw = torch.where(ended, torch.full_like(draw, codec.value_offset), draw)
        tokens[:, pos] = draw
    prefix = tokens[:, : 1 + len(ranges)].numpy()
    return prefix, tokens[:, 1 + len(ranges):].numpy(), lengths.numpy()


class _OneByOne:
    """Members that do not stack, decoded through their own forwards and caches: the interface of
    :class:`~tsynth.stacked.StackedGPT2` (``start``, and ``step`` giving logits of shape (members, batch, vocabulary))."""

    def __init__(self, models: Sequence[Any]) -> None:
        self.models = models

    def start(self, batch: int, length: int) -> list:
        from transformers import StaticCache

        return [StaticCache(config=m.config, max_cache_len=length) for m in self.models]

    def step(self, tokens: torch.Tensor, pos: int, caches: list) -> torch.Tensor:
        logits = []
        for model, cache, rows in zip(self.models, caches, tokens):
            out = model(input_ids=rows[:, None], cache=cache, use_cache=True)
            if pos == 0 and cache.get_seq_length() != 1:  # transformers < 5.24 accepts cache= and ignores it
                raise RuntimeError("this transformers version ignored the key/value cache; tsynth needs transformers>=5.24")
            logits.append(out.logits[:, -1])
        return torch.stack(logits)


def _starts(conds: list[dict], n: int):
    starts = [c.get("start") for c in conds]
    if all(s is not None for s in starts) and n:
        return np.asarray(starts, dtype="datetime64[ns]")
    return None
