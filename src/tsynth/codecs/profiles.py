"""Profile classes: training series grouped by the shape of their own mean cycle (a day of sub-daily data, a week
of daily data), whatever their level. Both codecs give a series its class as a prefix token that the model learns
to draw first, so minority shapes (a flat day, a night-time load) keep their share of the samples instead of being
drawn as the common shape (docs/long-series.md, "Profile classes"). Classes are fitted only without DP (k-means on
the private series would be a release), and only where the data has a cycle, its series hold two cycles or more,
there are enough series, and the series start at one point of the cycle."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..data import SeriesSet
from .calendar import STEPS_PER_DAY_MAX, calendar_values, phases_differ, step_times, steps_per_day

log = logging.getLogger("tsynth")

PROFILE_CLASSES = 8  # at most this many profile classes
PROFILE_SERIES = 30  # training series per profile class: fewer series get fewer classes (none under 2 x this)
PROFILE_MIN_CLASS = 10  # series that every class must hold (else fewer classes are fitted)
PROFILE_CHUNK = 1 << 20  # values whose profile features are computed at once (bounded memory on long series)


def profile_cycle(freq: str | None) -> int | None:
    """The cycle whose shape the profile classes read: a day of sub-daily data (in steps), a week of daily data;
    None otherwise."""
    per_day = steps_per_day(freq)
    if per_day is None:
        return None
    return 7 if per_day == 1 else per_day if per_day <= STEPS_PER_DAY_MAX else None


def cycle_slot(freq: str | None) -> tuple[str, int]:
    """The calendar feature (:func:`~tsynth.codecs.calendar.calendar_values`) whose values are the positions of the
    cycle of :func:`profile_cycle`: the step of the day of sub-daily data, the day of the week of daily data."""
    cycle = profile_cycle(freq)
    if cycle is None:
        raise ValueError(f"frequency {freq!r} has no cycle")
    return ("dayofweek", 7) if steps_per_day(freq) == 1 else ("time_of_day", cycle)


def fit_profiles(data: SeriesSet) -> tuple[list[list[float]], list[int]]:
    """The class centres (classes x features of :func:`profile_features`) and the training series in each class:
    at most ``PROFILE_CLASSES`` classes of at least ``PROFILE_MIN_CLASS`` series each (k-means, seeded). None (empty
    lists) where the data has no cycle, its series hold fewer than two cycles, or there are too few series; nor where
    the series start at different points of the cycle (:func:`~tsynth.codecs.calendar.phases_differ`): those are
    windows cut from a few long series, whose day shapes differ by when each window was cut, not entities of
    different kinds."""
    cycle = profile_cycle(data.freq)
    k = min(PROFILE_CLASSES, len(data) // PROFILE_SERIES)
    if cycle is None or k < 2 or np.median(data.lengths) < 2 * cycle or phases_differ(data):
        return [], []
    from sklearn.cluster import KMeans

    feats = profile_features(data, data.freq)
    while k >= 2:
        km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(feats)
        counts = np.bincount(km.labels_, minlength=k)
        if counts.min() >= PROFILE_MIN_CLASS:
            log.info("%d profile classes of %s series", k, "/".join(str(int(c)) for c in np.sort(counts)[::-1]))
            return km.cluster_centers_.tolist(), [int(c) for c in counts]
        k -= 1
    return [], []


def profile_classes(data: SeriesSet, centres: list[list[float]], freq: str | None) -> np.ndarray | None:
    """Each series' profile class: the nearest of ``centres`` to its :func:`profile_features` (``freq``: the
    training data's, for series that carry none). None where the series' features are not the centres' (series
    without time stamps, where the training series had them, have no day-of-week part)."""
    feats = profile_features(data, data.freq or freq)
    centres_ = np.asarray(centres)
    if feats.shape[1] != centres_.shape[1]:
        return None
    return ((feats[:, None, :] - centres_[None]) ** 2).sum(-1).argmin(1)


def profile_features(data: SeriesSet, freq: str | None) -> np.ndarray:
    """Per series: each channel's mean over each slot of the cycle (the day of sub-daily data, the week of daily
    data), and for sub-daily data over each day of the week, in units of the series' own spread about its mean (so
    the features are its shape and how strong its cycle is, not its level). Slots come from the time stamps where
    there are any, else from the step's index. Gaps and channels a series misses read as the series' mean."""
    cycle = profile_cycle(freq)
    if cycle is None or freq is None:
        raise ValueError(f"frequency {freq!r} has no cycle for profile classes")
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
            cal = calendar_values(times, [cycle_slot(freq)], freq)[..., 0]
        else:
            cal = offsets % cycle
        parts = [slot_means(z, cal, cycle)]
        if sub_daily and data.start is not None:
            parts.append(slot_means(z, calendar_values(times, [("dayofweek", 7)], freq)[..., 0], 7))
        out.append(np.concatenate(parts, axis=1))
    return np.concatenate(out) if out else np.zeros((0, 0))


def slot_means(z: np.ndarray, slot: np.ndarray, size: int) -> np.ndarray:
    """Per series (rows of ``z`` (b, steps, channels), NaN where missing): the mean of each channel over the
    steps of each ``slot`` value (b, steps) in 0..size-1, flattened to (b, size x channels); 0 where none."""
    b, _, c = z.shape
    seen = np.isfinite(z)
    index = (np.arange(b)[:, None] * size + slot)[..., None] * c + np.arange(c)[None, None, :]
    sums = np.bincount(index[seen], weights=z[seen], minlength=b * size * c)
    counts = np.bincount(index[seen], minlength=b * size * c)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).reshape(b, size * c)
