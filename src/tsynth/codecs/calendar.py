"""Calendar arithmetic on time stamps and frequencies, shared by the codecs: a frequency's fixed step, steps per
day, the calendar features data of a frequency can have and their values at given time stamps, the stamps of a
series' steps, and whether a set's series start at one point of their cycle."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..data import SeriesSet

DAY_NS = 86_400 * 10**9
WEEK_STEPS = 7  # days
STEPS_PER_DAY_MAX = 1440
SHARED_PHASE = 0.9  # phases_differ: the share of series that must start at one point of the cycle


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
    delta = step_delta(freq)
    for j, (name, size) in enumerate(features):
        if name in ("time_step", "time_of_day"):
            if delta is None:
                raise ValueError(f"calendar feature {name} needs a fixed step; frequency {freq!r} has none")
            if name == "time_step":
                offset = ns - int(origin or 0)
                step = np.floor_divide(offset, delta)
                out[..., j] = np.where((offset % delta == 0) & (step >= 0) & (step < size - 1), step, size - 1)
                continue
            out[..., j] = (ns % DAY_NS) // delta
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
