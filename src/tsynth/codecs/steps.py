"""Step codec: series <-> per-step bin ids, series-level prefix tokens and calendar features for the step model.

It keeps the value codec's scaler, bins, point masses and condition vocabulary (:class:`ValueCodec`), and adds
what a model over time steps needs:

* each value becomes its bin id (``0..n_bins-1``) or the ``missing`` id where the reading is NaN (a gap);
  a series' first step is preceded by the ``start`` id and steps past its end are ``pad`` (never predicted);
* the prefix: ``<bos>``, one token per condition field, the value codec's level tokens (per-series scaling),
  and, when series are longer than the context (``long``), each channel's series mean and spread (binned) and
  the series' share of missing readings: series-level facts that a bounded context cannot see, drawn first
  when sampling and held in the context for the whole series, so a year-long sample keeps its level;
* a profile class (not under DP, for series that start at one point of their cycle): series are grouped by the
  shape of their own mean day (and week) into a few classes whose frequencies the model learns as a prefix
  token, drawn first when sampling, so minority shapes (a flat day, a night-time load) keep their share of the
  samples instead of being drawn as the common shape (docs/long-series.md, "Profile classes");
* calendar features of every step from its time stamp: the slot of the day (sub-daily data), the day of the
  week and the week of the year (or the month, for monthly data). A feature is used only where the training
  data shows every one of its values (a week of the year needs a year of data), so the model is never asked
  about a calendar position it has not seen. Where the series share one calendar (a panel of meters over the
  same weeks), each step of the span they cover is a feature value too (``time_step``), so an event on one time
  stamp of every series (a holiday, a clock change) is learnt where it happens.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..data import SeriesSet
from ..errors import ConfigError, DataError
from .calendar import calendar_candidates, calendar_values, step_delta, step_times, steps_per_day
from .profiles import cycle_slot, fit_profiles, profile_classes, profile_cycle, slot_means
from .values import BOS, CALENDAR_FIELDS, ValueCodec

log = logging.getLogger("tsynth")

N_MEAN_BINS = 32
N_SPREAD_BINS = 16
GAP_EDGES = (0.0, 1e-9, 0.01, 0.05, 0.2, 1.0 + 1e-9)  # share of missing steps: none, <=1 %, <=5 %, <=20 %, more
MIN_CALENDAR_COVERAGE = 0.9  # share of a feature's values that the training data must show for it to be used
PANEL_MIN_SERIES = 100  # series that must share a start for their time stamps to be a shared calendar (a panel)
MAX_TIME_INDEX = 20_000  # steps of a panel's span that get their own time-step embedding


WHOLE_SERIES = 512  # series up to this many steps are seen whole
OWN_LAGS = 4  # each channel's head reads this many of its own latest values
# where a step holds several channels, the rank of each head's reading of the channels before it in the step and
# of every channel's previous value
CROSS_RANK = 32


def default_context(freq: str | None, length: int) -> int:
    """Steps the model sees at once: the whole series where the longest has at most ``WHOLE_SERIES`` steps (or
    twice the windowed context), so that what happens at a given step of the data (a holiday, a clock change
    shared by every series) is a position the model can learn; longer series are seen in windows of four days
    of sub-daily data (96 hours, 384 quarter hours, capped at 512), eight weeks of daily data, 128 steps
    otherwise."""
    per_day = steps_per_day(freq)
    if per_day is not None and per_day > 1:
        ctx = min(4 * per_day, 512)
    elif per_day == 1:
        ctx = 56
    else:
        ctx = 128
    return int(max(2, length if length <= max(2 * ctx, WHOLE_SERIES) else ctx))


@dataclass
class StepCodec:
    """See the module docstring."""

    values: ValueCodec
    context: int = 96
    long: bool = False
    calendar: list[tuple[str, int]] = field(default_factory=list)
    mean_edges: list[float] = field(default_factory=list)
    spread_edges: list[float] = field(default_factory=list)
    gap_slot: bool = False
    gaps: bool = False  # the training data misses readings (else "missing" is never drawn)
    lengths: dict[int, int] = field(default_factory=dict)  # training series lengths and their counts (not under DP)
    starts: list[str] = field(default_factory=list)  # training start time stamps to draw from (not under DP)
    time_origin: int | None = None  # a panel's first time stamp (ns), origin of its ``time_step`` feature
    # the profile classes' centres (classes x features, see :func:`~tsynth.codecs.profiles.profile_features`); empty without the slot
    profiles: list[list[float]] = field(default_factory=list)
    # under DP: the released mean of each position of the cycle (cycle x channels, data units), taken off the values
    # before they are binned and put back on decoding (see :meth:`set_cycle_profile`); empty without one
    cycle_profile: list[list[float]] = field(default_factory=list)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data: SeriesSet, values: ValueCodec, context: int | None, dp: bool = False,
            profiles: bool = True) -> "StepCodec":
        """Fit on the training set. ``values`` is an unfitted value codec with the wanted settings (its calendar
        conditions are replaced by per-step calendar features). ``profiles``: profile classes where the data has
        them (:func:`~tsynth.codecs.profiles.fit_profiles`; never under ``dp``)."""
        check_gaps(data)
        if context is not None and context < 2:
            raise ConfigError(f"context must be at least 2 steps, got {context}")
        if not isinstance(values.conditions, str):
            dropped = [c for c in values.conditions if c in CALENDAR_FIELDS]
            if dropped:
                log.info("calendar conditions %s are per-step inputs of the step model", dropped)
            values.conditions = [c for c in values.conditions if c not in CALENDAR_FIELDS]
        elif values.conditions == "auto":
            values.conditions = [c for c in data.attributes.columns
                                 if c != "window_offset" and data.attributes[c].nunique() > 1]
        values.fit(data, split_wide=not dp)  # under DP the bins come from the public range
        longest = int(data.lengths.max())
        ctx = default_context(data.freq, longest) if context is None else int(context)
        if ctx > longest:
            log.info("context %d is longer than the longest series (%d steps): using %d", ctx, longest, longest)
            ctx = longest
        short = int((data.lengths < ctx).sum())
        if short:
            log.info("%d series are shorter than the context (%d steps): their windows are padded, and padded steps "
                     "are never predicted", short, ctx)
        self = cls(values=values, context=ctx, long=longest > ctx)
        self.calendar = self._fit_calendar(data)
        if not dp:
            self._fit_time_step(data)
        self.gaps = has_gaps(data)
        self.gap_slot = self.long and self.gaps
        if self.long:
            means, spreads = self._series_stats(data)
            if dp:  # public edges: the value range in units, and a fixed span of log spreads
                self.mean_edges = np.linspace(values.edges[0], values.edges[-1], N_MEAN_BINS + 1).tolist()
                self.spread_edges = np.linspace(-3.0, 1.0, N_SPREAD_BINS + 1).tolist()
            else:
                self.mean_edges = _quantile_edges(means, N_MEAN_BINS)
                self.spread_edges = _quantile_edges(spreads, N_SPREAD_BINS)
        if not dp:
            u, c = np.unique(data.lengths, return_counts=True)
            self.lengths = {int(a): int(b) for a, b in zip(u, c)}
            if data.start is not None:
                self.starts = [str(s) for s in np.unique(data.start)[:1000]]
            if profiles:
                self.profiles = fit_profiles(data)[0]
        return self

    @property
    def cycle_length(self) -> int | None:
        """The positions of the data's cycle (a day of sub-daily steps, a week of days), or None."""
        return profile_cycle(self.values.freq)

    def cycle_phase(self, start: np.ndarray, steps: int) -> np.ndarray:
        """Each step's position (n, steps) in its cycle, for series starting at time stamps ``start`` (n,): the
        step of its day (sub-daily data) or the day of its week (daily data, Monday 0)."""
        offsets = np.broadcast_to(np.arange(steps), (len(start), steps))
        times = step_times(np.asarray(start, dtype="datetime64[ns]"), offsets, self.values.freq)
        return calendar_values(times, [cycle_slot(self.values.freq)], self.values.freq)[..., 0]

    def cycle_means(self, data: SeriesSet) -> np.ndarray:
        """Each series' mean at each position of its cycle (n, cycle, channels) in the value codec's units, 0 where
        it has no reading there: what a DP release of the cycle profile averages over the items."""
        units = self.values.to_units(data.values.astype(np.float64))
        units[np.arange(data.length)[None, :] >= data.lengths[:, None]] = np.nan  # steps beyond a series' end
        k = int(self.cycle_length or 0)
        return slot_means(units, self.cycle_phase(data.start, data.length), k).reshape(len(data), k, self.n_channels)

    def set_cycle_profile(self, release: np.ndarray) -> None:
        """Take a released cycle profile (cycle x channels, in the value codec's units): it is taken off every value
        at its position before binning and put back on decoding, and the public range is re-mapped onto the bins so
        that every value in it, less its position's profile, stays inside them (:meth:`ValueCodec.set_profile`,
        whose per-step offset is then dropped: a step model's series start anywhere in the cycle)."""
        vc = self.values
        vc.set_profile(np.asarray(release), centred=False)
        self.cycle_profile = (np.asarray(vc.profile) * np.asarray(vc.scale)).tolist()  # data units
        vc.profile = None

    def _cycle_offsets(self, start: np.ndarray | None, steps: int) -> np.ndarray | None:
        """The cycle profile at every step (n, steps, channels) of series starting at ``start``; None without one."""
        if not self.cycle_profile or start is None:
            return None
        return np.asarray(self.cycle_profile)[self.cycle_phase(start, steps)]

    def profile_classes(self, data: SeriesSet) -> np.ndarray:
        """Each series' profile class (:func:`~tsynth.codecs.profiles.profile_classes`)."""
        classes = profile_classes(data, self.profiles, self.values.freq)
        if classes is None:
            raise DataError("these series carry no start time stamps: their profile classes need them, as the "
                            "training series had")
        return classes

    def _fit_calendar(self, data: SeriesSet) -> list[tuple[str, int]]:
        cands = calendar_candidates(data.freq) if data.start is not None else []
        if not cands:
            return []
        starts, first = np.unique(data.start, return_index=True)
        longest = np.asarray([data.lengths[data.start == s].max() for s in starts])
        offsets = np.arange(int(longest.max()))[None, :].repeat(len(starts), 0)
        times = step_times(starts, offsets, data.freq)
        inside = offsets < longest[:, None]
        vals = calendar_values(times, cands, data.freq)[inside]
        keep = []
        for j, (name, size) in enumerate(cands):
            seen = len(np.unique(vals[:, j]))
            if seen >= MIN_CALENDAR_COVERAGE * size or (name == "weekofyear" and seen >= 52):
                keep.append((name, size))
            else:
                log.info("calendar feature %s not used: the training data shows %d of its %d values", name, seen, size)
        return keep

    def _fit_time_step(self, data: SeriesSet) -> None:
        """Where the series share a calendar (a panel: at least PANEL_MIN_SERIES series, and at least half of all,
        start at a time stamp that others share too), each step of the span they cover gets a ``time_step``
        feature: events that fall on the same time stamp of every series (a holiday, a clock change, a storm) are
        then learnt where they happen. Samples whose stamps fall outside the span read its last value, "a time
        the data does not cover", which the model also learns (whole windows are hidden while it trains)."""
        delta = step_delta(data.freq)
        if data.start is None or delta is None or len(data) < PANEL_MIN_SERIES:
            return
        start = np.asarray(data.start, dtype="datetime64[ns]").astype(np.int64)
        starts, counts = np.unique(start, return_counts=True)
        shared = counts[counts >= 2].sum()
        if counts.max() < PANEL_MIN_SERIES or shared < 0.5 * len(data):
            return
        origin = int(starts.min())
        if ((starts - origin) % delta).any():
            return
        span = int(((start + data.lengths.astype(np.int64) * delta).max() - origin) // delta)
        if span > MAX_TIME_INDEX:
            log.info("time-step feature not used: the series span %d steps (at most %d)", span, MAX_TIME_INDEX)
            return
        self.time_origin = origin
        self.calendar.append(("time_step", span + 1))
        log.info("the series share a calendar: each of its %d steps gets a time-step input", span)

    def calendar_at(self, times: np.ndarray) -> np.ndarray:
        """Calendar features (…, features) of time stamps ``times``."""
        return calendar_values(times, self.calendar, self.values.freq, self.time_origin)

    @property
    def time_feature(self) -> int:
        """Index of the ``time_step`` feature in :attr:`calendar`, -1 without one."""
        names = [name for name, _ in self.calendar]
        return names.index("time_step") if "time_step" in names else -1

    def _series_stats(self, data: SeriesSet) -> tuple[np.ndarray, np.ndarray]:
        """Per series and channel: mean and log10 spread (standard deviation) in the codec's units."""
        units = self.values.to_units(data.values.astype(np.float64))
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a series that misses a whole channel: empty mean
            means = np.nanmean(units, axis=1)
            spreads = np.log10(np.maximum(np.nanstd(units, axis=1), 1e-3))
        return np.nan_to_num(means), np.nan_to_num(spreads, nan=-3.0)

    # ------------------------------------------------------------------ layout
    @property
    def fields(self):
        """The condition fields (the value codec's)."""
        return self.values.fields

    @property
    def n_bins(self) -> int:
        return self.values.n_value_tokens

    @property
    def n_channels(self) -> int:
        return self.values.n_channels

    @property
    def extra_offset(self) -> int:
        """Id of the first prefix token beyond the value codec's vocabulary."""
        return len(self.values.vocab)

    @property
    def gap_offset(self) -> int:
        """Id of the first gap-share token (after the mean and spread tokens of long series)."""
        return self.extra_offset + (N_MEAN_BINS + N_SPREAD_BINS if self.long else 0)

    @property
    def profile_offset(self) -> int:
        """Id of the first profile class token."""
        return self.gap_offset + (len(GAP_EDGES) - 1 if self.gap_slot else 0)

    @property
    def prefix_vocab(self) -> int:
        return self.profile_offset + len(self.profiles)

    @property
    def value_prefix_length(self) -> int:
        """The value codec's prefix: <bos>, fields, level tokens (per-series scaling)."""
        return self.values.prefix_length

    @property
    def prefix_length(self) -> int:
        return (self.value_prefix_length + (2 * self.n_channels if self.long else 0) + int(self.gap_slot)
                + int(bool(self.profiles)))

    def slot_ranges(self) -> list[tuple[int, int]]:
        """Allowed id range [lo, hi) of each prefix slot after <bos>."""
        ranges = self.values.prefix_slots()
        if self.long:
            m0 = self.extra_offset
            ranges += [(m0, m0 + N_MEAN_BINS), (m0 + N_MEAN_BINS, m0 + N_MEAN_BINS + N_SPREAD_BINS)] * self.n_channels
        if self.gap_slot:
            ranges.append((self.gap_offset, self.gap_offset + len(GAP_EDGES) - 1))
        if self.profiles:
            ranges.append((self.profile_offset, self.profile_offset + len(self.profiles)))
        return ranges

    def model_config(self, preset: dict, dropout: float) -> dict:
        """Keyword arguments of :class:`tsynth.stepmodel.StepModelConfig` for this codec."""
        return dict(n_channels=self.n_channels, n_bins=self.n_bins, prefix_vocab=self.prefix_vocab,
                    prefix_length=self.prefix_length, context=self.context,
                    calendar_sizes=[s for _, s in self.calendar], dropout=dropout, copy=self.copies,
                    seasons=self.seasons, season_inputs=True, own_lags=OWN_LAGS,
                    cross_rank=CROSS_RANK if self.copies else 0, cross_prev=self.copies,
                    time_feature=self.time_feature, **preset)

    @property
    def copies(self) -> bool:
        """Whether the model gets copy components: where a step holds several channels. Their summed input cannot
        carry each channel's exact previous value, and the copy gives it back; a single channel's input is its exact
        previous bin and attention reaches any earlier step, so a copy adds nothing the model lacks, while the
        teacher-forced likelihood still favours it and free-running samples then wander from the series' level
        (docs/long-series.md, "Copy component")."""
        return self.n_channels > 1

    @property
    def seasons(self) -> list[int]:
        """Seasonal lags: a day and a week of sub-daily data, a week of daily data, each where the context holds
        it at least twice (chosen from the frequency, a public fact). Each step's input holds each channel's value
        one lag back, and with copy components one more component per lag sits near it."""
        per_day = steps_per_day(self.values.freq)
        lags = [per_day, 7 * per_day] if per_day is not None and per_day > 1 else [7] if per_day == 1 else []
        return [lag for lag in lags if 2 * lag <= self.context]

    # ------------------------------------------------------------------ encoding
    def encode(self, data: SeriesSet) -> dict[str, np.ndarray]:
        """Arrays the training windows are cut from: ``ids`` (n, length, channels) uint16 value ids (bins,
        missing, pad), ``prefix`` (n, prefix_length) int64, ``lengths`` (n,), ``start`` (n,) int64 ns or empty."""
        check_gaps(data)
        shift = self._cycle_offsets(data.start, data.length)
        if shift is not None:  # values less their position's released mean (DP)
            data = SeriesSet((data.values - shift).astype(np.float32), data.lengths, data.item_id, data.channels,
                             start=data.start, freq=data.freq, attributes=data.attributes)
        bins, levels = self.values.value_bins(data)
        k = self.n_bins
        ids = bins.astype(np.uint16)
        ids[np.isnan(data.values)] = k  # missing
        beyond = np.arange(data.length)[None, :] >= data.lengths[:, None]
        ids[beyond] = k + 2  # pad
        vc = self.values
        conds = vc.series_conditions(data)
        prefix = np.zeros((len(data), self.prefix_length), dtype=np.int64)
        prefix[:, 0] = BOS
        for i in range(len(data)):
            prefix[i, 1:1 + len(vc.fields)] = vc.condition_ids(conds[i])
        col = 1 + len(vc.fields)
        if levels is not None:
            prefix[:, col:col + self.n_channels] = vc.level_offset + vc.scaler.level_ids(levels)
            col += self.n_channels
        if self.long:
            means, spreads = self._series_stats(data)
            mb = _bin(self.mean_edges, means)
            sb = _bin(self.spread_edges, spreads)
            prefix[:, col:col + 2 * self.n_channels:2] = self.extra_offset + mb
            prefix[:, col + 1:col + 2 * self.n_channels:2] = self.extra_offset + N_MEAN_BINS + sb
            col += 2 * self.n_channels
        if self.gap_slot:
            share = data.missing().sum(1) / data.lengths
            g = np.clip(np.searchsorted(GAP_EDGES, share, side="right") - 1, 0, len(GAP_EDGES) - 2)
            prefix[:, col] = self.gap_offset + g
            col += 1
        if self.profiles:
            prefix[:, col] = self.profile_offset + self.profile_classes(data)
        start = (np.zeros(0, dtype=np.int64) if data.start is None or not self.calendar
                 else np.asarray(data.start, dtype="datetime64[ns]").astype(np.int64))
        return {"ids": ids, "prefix": prefix, "lengths": data.lengths.astype(np.int64), "start": start}

    def windows(self, arrays: dict[str, np.ndarray], rows: np.ndarray, offsets: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Training windows of ``context`` steps of series ``rows`` from step ``offsets``: prefix (b, p), previous
        value ids (b, t, c), target value ids (b, t, c) and calendar features (b, t, f) or None."""
        t = np.arange(self.context)[None, :]
        idx = offsets[:, None] + t
        target, prev = self.lagged(arrays, rows, offsets, 0), self.lagged(arrays, rows, offsets, 1)
        calendar = None
        if self.calendar:
            times = step_times(arrays["start"][rows].astype("datetime64[ns]"), idx, self.values.freq)
            calendar = self.calendar_at(times)
        return arrays["prefix"][rows], prev, target, calendar

    def lagged(self, arrays: dict[str, np.ndarray], rows: np.ndarray, offsets: np.ndarray, lag: int) -> np.ndarray:
        """Value ids (b, t, c) ``lag`` steps before each step of the windows of :meth:`windows`: the ``<start>``
        id before a series' first step, pad beyond its end."""
        idx = offsets[:, None] + np.arange(self.context)[None, :] - lag
        ids, lengths = arrays["ids"], arrays["lengths"][rows]
        out = ids[rows[:, None], np.clip(idx, 0, ids.shape[1] - 1)].astype(np.int64)
        out[idx < 0] = self.n_bins + 1
        out[idx >= lengths[:, None]] = self.n_bins + 2
        return out

    # ------------------------------------------------------------------ decoding
    def decode(self, prefix: np.ndarray, ids: np.ndarray, lengths: np.ndarray, rng: np.random.Generator,
               item_id: Sequence[str] | None, start: np.ndarray | None) -> SeriesSet:
        """Series from generated prefixes (n, prefix_length) and value ids (n, steps, channels)."""
        vc = self.values
        missing = ids >= self.n_bins
        value_ids = vc.value_offset + np.where(missing, 0, ids).reshape(len(ids), -1)
        out = vc.decode(prefix[:, :self.value_prefix_length], value_ids, lengths, rng, item_id=item_id, start=start,
                        finish=False, runs=ids)
        shift = self._cycle_offsets(start, out.length)
        if shift is not None:
            out.values[:] += shift.astype(np.float32)
        out.values[missing[:, :out.length]] = np.nan
        return vc.finish(out)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {**self.values.to_dict(), "kind": "step", "context": self.context, "long": self.long,
                "calendar": [list(c) for c in self.calendar], "mean_edges": self.mean_edges,
                "spread_edges": self.spread_edges, "gap_slot": self.gap_slot, "gaps": self.gaps,
                "lengths": {str(k): v for k, v in self.lengths.items()}, "starts": self.starts,
                "time_origin": self.time_origin, "profiles": self.profiles,
                **({"cycle_profile": self.cycle_profile} if self.cycle_profile else {})}

    @classmethod
    def from_dict(cls, d: dict) -> "StepCodec":
        return cls(values=ValueCodec.from_dict(d), context=d["context"], long=d["long"],
                   calendar=[(str(a), int(b)) for a, b in d["calendar"]], mean_edges=d["mean_edges"],
                   spread_edges=d["spread_edges"], gap_slot=d["gap_slot"], gaps=d.get("gaps", True),
                   lengths={int(k): int(v) for k, v in d.get("lengths", {}).items()}, starts=d.get("starts", []),
                   time_origin=d.get("time_origin"), profiles=d.get("profiles", []),
                   cycle_profile=d.get("cycle_profile", []))


def check_gaps(data: SeriesSet) -> None:
    """Refuse what no model can learn from: a series with no reading at all, a channel that is never observed."""
    observed = ~np.isnan(data.values)
    empty = ~observed.any(axis=(1, 2))
    if empty.any():
        raise DataError(f"series '{data.item_id[int(np.flatnonzero(empty)[0])]}' has no reading at all "
                        f"({int(empty.sum())} such series): drop it")
    never = ~observed.any(axis=(0, 1))
    if never.any():
        raise DataError(f"channel '{data.channels[int(np.flatnonzero(never)[0])]}' holds no reading in any series: "
                        "drop it (--value-cols)")


def has_gaps(data: SeriesSet) -> bool:
    """True when a series misses a reading before its end (NaN inside, not padding)."""
    return bool(data.missing().any())


def _quantile_edges(x: np.ndarray, n: int) -> list[float]:
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    lo, hi = float(flat.min()), float(flat.max())
    pad = max(0.02 * (hi - lo), 1e-6)
    edges = np.unique(np.concatenate([[lo - pad], np.quantile(flat, np.linspace(0, 1, n + 1)[1:-1]), [hi + pad]]))
    if len(edges) < n + 1:  # repeated values: fill up with evenly spaced edges so every token has a range
        edges = np.linspace(lo - pad, hi + pad, n + 1)
    return edges.tolist()


def _bin(edges: Sequence[float], x: np.ndarray) -> np.ndarray:
    e = np.asarray(edges)
    return np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2)

