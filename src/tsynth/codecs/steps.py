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
import pandas as pd

from ..data import SeriesSet
from ..errors import ConfigError, DataError
from .values import BOS, CALENDAR_FIELDS, ValueCodec

log = logging.getLogger("tsynth")

N_MEAN_BINS = 32
N_SPREAD_BINS = 16
GAP_EDGES = (0.0, 1e-9, 0.01, 0.05, 0.2, 1.0 + 1e-9)  # share of missing steps: none, <=1 %, <=5 %, <=20 %, more
DAY_NS = 86_400 * 10**9
WEEK_STEPS = 7  # days
MIN_CALENDAR_COVERAGE = 0.9  # share of a feature's values that the training data must show for it to be used
STEPS_PER_DAY_MAX = 1440
SHARED_PHASE = 0.9  # phases_differ: the share of series that must start at one point of the cycle
PANEL_MIN_SERIES = 100  # series that must share a start for their time stamps to be a shared calendar (a panel)
MAX_TIME_INDEX = 20_000  # steps of a panel's span that get their own time-step embedding
PROFILE_CLASSES = 8  # at most this many profile classes
PROFILE_SERIES = 30  # training series per profile class: fewer series get fewer classes (none under 2 x this)
PROFILE_MIN_CLASS = 10  # series that every class must hold (else fewer classes are fitted)
PROFILE_CHUNK = 1 << 20  # values whose profile features are computed at once (bounded memory on long series)


WHOLE_SERIES = 512  # series up to this many steps are seen whole
OWN_LAGS = 4  # where a step holds several channels, each channel's head reads this many of its own latest values
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


def step_delta(freq: str | None) -> int | None:
    """The frequency's fixed step in nanoseconds, or None (no frequency, or a calendar one such as months)."""
    if not freq:
        return None
    try:
        offset = pd.tseries.frequencies.to_offset(freq)
    except ValueError:
        return None
    if isinstance(offset, pd.offsets.Day):  # a calendar day in pandas 3, 24 hours in tz-naive stamps
        return int(offset.n) * DAY_NS
    try:
        return int(pd.to_timedelta(offset).value)
    except (ValueError, TypeError):
        return None


def steps_per_day(freq: str | None) -> int | None:
    delta = step_delta(freq)
    if delta is None or delta <= 0 or delta > DAY_NS or DAY_NS % delta:
        return None
    return DAY_NS // delta


def calendar_candidates(freq: str | None) -> list[tuple[str, int]]:
    """The calendar features that data of this frequency can have, with their number of values."""
    if not freq:
        return []
    delta = step_delta(freq)
    if delta is None:  # months, quarters, years
        offset = pd.tseries.frequencies.to_offset(freq)
        return [("month", 12)] if "M" in offset.name.upper() else []
    per_day = steps_per_day(freq)
    out = []
    if per_day is not None and 1 < per_day <= STEPS_PER_DAY_MAX:
        out.append(("time_of_day", per_day))
    if delta <= DAY_NS:
        out.append(("dayofweek", 7))
    if delta <= WEEK_STEPS * DAY_NS:
        out.append(("weekofyear", 53))
    return out


def calendar_values(times: np.ndarray, features: Sequence[tuple[str, int]], freq: str | None,
                    origin: int | None = None) -> np.ndarray:
    """Feature values (…, features) int64 of the time stamps ``times`` (datetime64[ns], any shape). ``time_step``
    (a panel's own time axis): steps since ``origin`` (ns), its last value for stamps outside the span."""
    ns = np.asarray(times, dtype="datetime64[ns]").astype(np.int64)
    out = np.zeros(ns.shape + (len(features),), dtype=np.int64)
    flat_index = None
    for j, (name, size) in enumerate(features):
        if name == "time_step":
            delta = step_delta(freq)
            offset = ns - int(origin or 0)
            step = np.floor_divide(offset, delta)
            out[..., j] = np.where((offset % delta == 0) & (step >= 0) & (step < size - 1), step, size - 1)
            continue
        if name == "time_of_day":
            out[..., j] = (ns % DAY_NS) // step_delta(freq)
        elif name == "dayofweek":
            out[..., j] = (ns // DAY_NS + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        else:
            if flat_index is None:
                flat_index = pd.DatetimeIndex(ns.reshape(-1))
            v = (flat_index.dayofyear.to_numpy() - 1) // 7 if name == "weekofyear" else flat_index.month.to_numpy() - 1
            out[..., j] = v.reshape(ns.shape)
        out[..., j] = np.clip(out[..., j], 0, size - 1)
    return out


def step_times(start: np.ndarray, offsets: np.ndarray, freq: str) -> np.ndarray:
    """Time stamps (b, t) of steps ``offsets`` (b, t) of series starting at ``start`` (b,)."""
    delta = step_delta(freq)
    start = np.asarray(start, dtype="datetime64[ns]")
    if delta is not None:
        return (start.astype(np.int64)[:, None] + offsets * delta).astype("datetime64[ns]")
    step = pd.tseries.frequencies.to_offset(freq)  # calendar steps (months): one by one
    return np.stack([np.asarray([pd.Timestamp(s) + int(k) * step for k in row], dtype="datetime64[ns]")
                     for s, row in zip(start, offsets)])


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
    # the profile classes' centres (classes x features, see :meth:`profile_features`); empty without the slot
    profiles: list[list[float]] = field(default_factory=list)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, data: SeriesSet, values: ValueCodec, context: int | None, dp: bool = False) -> "StepCodec":
        """Fit on the training set. ``values`` is an unfitted value codec with the wanted settings (its calendar
        conditions are replaced by per-step calendar features)."""
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
            self._fit_profiles(data)
        return self

    def _fit_profiles(self, data: SeriesSet) -> None:
        """Group the training series by the shape of their mean cycle (:meth:`profile_features`) into at most
        ``PROFILE_CLASSES`` classes of at least ``PROFILE_MIN_CLASS`` series each (k-means, seeded); no classes
        where the data has no cycle, its series hold fewer than two cycles, or there are too few series. Nor where
        the series start at different points of the cycle (:func:`phases_differ`): those are windows cut from a few
        long series, whose day shapes differ by when each window was cut, which every step's calendar input
        already says, not entities of different kinds (docs/long-series.md, "Profile classes")."""
        cycle = profile_cycle(data.freq)
        k = min(PROFILE_CLASSES, len(data) // PROFILE_SERIES)
        if cycle is None or k < 2 or np.median(data.lengths) < 2 * cycle or phases_differ(data):
            return
        from sklearn.cluster import KMeans

        feats = self.profile_features(data, cycle)
        while k >= 2:
            km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(feats)
            counts = np.bincount(km.labels_, minlength=k)
            if counts.min() >= PROFILE_MIN_CLASS:
                self.profiles = km.cluster_centers_.tolist()
                log.info("%d profile classes of %s series", k, "/".join(str(int(c)) for c in np.sort(counts)[::-1]))
                return
            k -= 1

    def profile_features(self, data: SeriesSet, cycle: int | None = None) -> np.ndarray:
        """Per series: each channel's mean over each slot of the cycle (the day of sub-daily data, the week of
        daily data), and for sub-daily data over each day of the week, in units of the series' own spread about
        its mean (so the features are its shape and how strong its cycle is, not its level). Slots come from
        the time stamps where there are any, else from the step's index. Gaps and channels a series misses read
        as the series' mean."""
        freq = data.freq or self.values.freq
        cycle = cycle or profile_cycle(freq)
        per_day = steps_per_day(freq)
        sub_daily = per_day is not None and per_day > 1
        out = []
        chunk = max(1, PROFILE_CHUNK // max(1, data.length * data.n_channels))
        for lo in range(0, len(data), chunk):
            rows = slice(lo, lo + chunk)
            x = data.values[rows].astype(np.float64)
            b, length, c = x.shape
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                z = (x - np.nanmean(x, axis=1, keepdims=True)) / np.nanstd(x, axis=1, keepdims=True)
            z = np.where(np.isfinite(z), z, np.nan)
            offsets = np.arange(length)[None, :].repeat(b, 0)
            if data.start is not None:
                times = step_times(data.start[rows], offsets, freq)
                slot = ("time_of_day", cycle) if sub_daily else ("dayofweek", 7)
                cal = calendar_values(times, [slot], freq)[..., 0]
            else:
                cal = offsets % cycle
            parts = [_slot_means(z, cal, cycle)]
            if sub_daily and data.start is not None:
                parts.append(_slot_means(z, calendar_values(times, [("dayofweek", 7)], freq)[..., 0], 7))
            out.append(np.concatenate(parts, axis=1))
        return np.concatenate(out) if out else np.zeros((0, 0))

    def profile_classes(self, data: SeriesSet) -> np.ndarray:
        """Each series' profile class: the nearest class centre to its :meth:`profile_features`."""
        centres = np.asarray(self.profiles)
        feats = self.profile_features(data)
        return ((feats[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)

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
        vc = self.values
        ranges = [(vc.field_offset(k) + 1, vc.field_offset(k) + 1 + len(f.values)) for k, f in enumerate(vc.fields)]
        if vc.scaling == "series":
            ranges += [(vc.level_offset, vc.level_offset + vc.n_level_tokens)] * self.n_channels
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
                    seasons=self.seasons, season_inputs=True, own_lags=OWN_LAGS if self.copies else 0,
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
            lb = np.clip(np.searchsorted(vc.level_edges, levels, side="right") - 1, 0, vc.n_level_tokens - 1)
            prefix[:, col:col + self.n_channels] = vc.level_offset + lb
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
        out.values[missing[:, :out.length]] = np.nan
        return vc.finish(out)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {**self.values.to_dict(), "kind": "step", "context": self.context, "long": self.long,
                "calendar": [list(c) for c in self.calendar], "mean_edges": self.mean_edges,
                "spread_edges": self.spread_edges, "gap_slot": self.gap_slot, "gaps": self.gaps,
                "lengths": {str(k): v for k, v in self.lengths.items()}, "starts": self.starts,
                "time_origin": self.time_origin, "profiles": self.profiles}

    @classmethod
    def from_dict(cls, d: dict) -> "StepCodec":
        return cls(values=ValueCodec.from_dict(d), context=d["context"], long=d["long"],
                   calendar=[(str(a), int(b)) for a, b in d["calendar"]], mean_edges=d["mean_edges"],
                   spread_edges=d["spread_edges"], gap_slot=d["gap_slot"], gaps=d.get("gaps", True),
                   lengths={int(k): int(v) for k, v in d.get("lengths", {}).items()}, starts=d.get("starts", []),
                   time_origin=d.get("time_origin"), profiles=d.get("profiles", []))


def profile_cycle(freq: str | None) -> int | None:
    """The cycle whose shape the profile classes read: a day of sub-daily data (in steps), a week of daily data;
    None otherwise."""
    per_day = steps_per_day(freq)
    if per_day is None:
        return None
    return 7 if per_day == 1 else per_day if per_day <= STEPS_PER_DAY_MAX else None


def _slot_means(z: np.ndarray, slot: np.ndarray, size: int) -> np.ndarray:
    """Per series (rows of ``z`` (b, steps, channels), NaN where missing): the mean of each channel over the
    steps of each ``slot`` value (b, steps) in 0..size-1, flattened to (b, size x channels); 0 where none."""
    b, _, c = z.shape
    seen = np.isfinite(z)
    index = (np.arange(b)[:, None] * size + slot)[..., None] * c + np.arange(c)[None, None, :]
    sums = np.bincount(index[seen], weights=z[seen], minlength=b * size * c)
    counts = np.bincount(index[seen], minlength=b * size * c)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).reshape(b, size * c)


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


def phases_differ(data: SeriesSet) -> bool:
    """Whether the series start at different points of the data's cycle: fewer than ``SHARED_PHASE`` of them at
    the most common time of day (sub-daily data) or day of the week (daily data). A step's place in a series then
    does not say where in the cycle it falls; the step model's calendar inputs say it, a token model's positions
    cannot. False without time stamps or a fixed step of at most a day."""
    delta = step_delta(data.freq)
    if data.start is None or delta is None or delta <= 0 or delta > DAY_NS:
        return False
    period = DAY_NS if delta < DAY_NS else 7 * DAY_NS
    phase = np.asarray(data.start, dtype="datetime64[ns]").astype(np.int64) % period
    return bool(np.unique(phase, return_counts=True)[1].max() < SHARED_PHASE * len(data))


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

