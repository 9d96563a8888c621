"""Figures of long series and of the series' shape.

* **Long series** (the data has a fixed step and a series covers at least two of its days, or two
  weeks for daily data): hour-of-day and day-of-week profiles, autocorrelation at one step, one day
  and one week, the distribution of daily and weekly totals, the stability of level and spread from
  the first to the last week, and the discriminative score on sub-windows cut at the same offsets
  from real and synthetic series.
* **Shape** (always): each series standardised on its own before the discriminative score, the
  autocorrelation at the data's own periods and, with time stamps, the hour-of-day profile of the
  standardised series. On raw-scale data, where levels dominate the plain discriminative score,
  these say whether the rhythm of the series is right.

Every figure compares ``syn`` with ``real`` (the training data); the evaluation computes them again
for the holdout scored as if it were synthetic. The arrays hold NaN at gaps (missing readings) and
every figure here reads a gap as missing; the discriminative scores classify the gap-filled arrays
that :func:`fidelity.prepare` returns, as the whole-series score does. Errors are in standardised
units: value differences divided by the real set's standard deviation per channel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..data import series_moments
from ..errors import ConfigError
from .fidelity import Prepared, block_summary, disc_features, discriminative_score, summary_block

HOUR_NS = 3_600 * 10**9
DAY_NS = 24 * HOUR_NS
WEEK_NS = 7 * DAY_NS
MONDAY_PHASE_NS = 3 * DAY_NS     # 1970-01-01 (time 0) is a Thursday: Monday 00:00 is 3 days after a week boundary
NEEDS_FREQ = "the data has no frequency (pass freq=... to evaluate, or --freq)"


# ---------------------------------------------------------------------- calendar
@dataclass
class Calendar:
    """The data's step and periods: ``per_day`` / ``per_week`` are the steps in a day / a week when
    that is a whole number above 1 (None otherwise)."""

    freq: str | None
    step_ns: int | None
    per_day: int | None
    per_week: int | None

    @property
    def cycle(self) -> int | None:
        """The data's shortest period in steps: a day for sub-daily data, a week for daily data."""
        return self.per_day or self.per_week

    def lags(self, length: int) -> dict[str, int]:
        """Named lags shorter than ``length``: one step, one day, one week (those the step allows)."""
        named = {"step": 1, "day": self.per_day, "week": self.per_week}
        return {k: v for k, v in named.items() if v is not None and v < length}


def calendar(freq: str | None) -> Calendar:
    """The :class:`Calendar` of a frequency alias (None: nothing known). Offsets without a fixed
    step (weeks anchored on a weekday, months, business days) have no periods."""
    if freq is None:
        return Calendar(None, None, None, None)
    from pandas.tseries.frequencies import to_offset

    off = to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        step = int(pd.Timedelta(off).value)
    elif isinstance(off, pd.offsets.Day):
        step = off.n * DAY_NS
    else:
        step = None

    def per(span: int) -> int | None:
        return span // step if step and span % step == 0 and span // step > 1 else None

    return Calendar(str(freq), step, per(DAY_NS), per(WEEK_NS))


def why_not_long(cal: Calendar, length: int) -> str | None:
    """None when the long-series figures apply to series of ``length`` steps, else the reason."""
    if cal.freq is None:
        return NEEDS_FREQ
    if cal.step_ns is None:
        return f"frequency {cal.freq!r} has no fixed step"
    if cal.cycle is None:
        return f"frequency {cal.freq!r} has no daily or weekly period"
    unit = "days" if cal.per_day else "weeks"
    if length < 2 * cal.cycle:
        return f"series of {length} steps are shorter than two {unit} ({2 * cal.cycle} steps of {cal.freq})"
    return None


def _times(start_ns: np.ndarray, length: int, cal: Calendar) -> np.ndarray:
    """Time stamp of every step, (n, length) int64 nanoseconds."""
    return start_ns[:, None] + cal.step_ns * np.arange(length, dtype=np.int64)[None, :]


# ---------------------------------------------------------------------- NaN-aware statistics
def _quiet(fn, *args, **kwargs):
    """``fn`` without numpy's warnings about empty slices (all-gap windows give NaN, which is meant)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


def _mean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def scale(real: np.ndarray) -> np.ndarray:
    """The real set's standard deviation per channel over every present value (1 where it is 0)."""
    sd = _quiet(np.nanstd, real, axis=(0, 1))
    return np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)


def acf_with_gaps(x: np.ndarray, lags) -> np.ndarray:
    """Autocorrelation of every series and channel at ``lags``, (n, len(lags), channels), reading NaN
    as missing: the mean product of the centred values over the pairs where both are present,
    scaled by (length - k) / length as the usual (biased) estimator is, over the variance of the
    present values. Without gaps it equals :func:`fidelity.acf`; NaN for constant series."""
    present = ~np.isnan(x)
    n_present = present.sum(axis=1)
    mean = _quiet(np.nansum, x, axis=1) / np.maximum(n_present, 1)
    xc = np.where(present, x - mean[:, None, :], 0.0)
    var = (xc ** 2).sum(axis=1) / np.maximum(n_present, 1)
    length = x.shape[1]
    out = []
    for k in lags:
        pairs = (present[:, :-k] & present[:, k:]).sum(axis=1)
        prod = (xc[:, :-k] * xc[:, k:]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where((pairs > 0) & (var > 0), prod / pairs * (length - k) / length / var, np.nan))
    return np.stack(out, axis=1)


def standardise(x: np.ndarray, filled: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Each series and channel of ``x`` minus its mean over its present values, over their standard
    deviation (ddof 0); a constant one becomes 0, gaps stay NaN. ``filled`` (the same series with
    gaps filled) is scaled by the same figures and returned second."""
    mean, sd = series_moments(x, 0)
    ok = sd > 0
    safe = np.where(ok, sd, 1.0)
    z = np.where(ok, (x - mean) / safe, np.where(np.isnan(x), np.nan, 0.0))
    zf = None if filled is None else np.where(ok, (filled - mean) / safe, 0.0)
    return z, zf


def _profile(x: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Mean of the present values in each bin, (channels, n_bins); ``bins`` is (n, length)."""
    out = np.full((x.shape[2], n_bins), np.nan)
    for c in range(x.shape[2]):
        v = x[:, :, c]
        ok = ~np.isnan(v)
        sums = np.bincount(bins[ok], v[ok], minlength=n_bins)
        counts = np.bincount(bins[ok], minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[c] = np.where(counts > 0, sums / counts, np.nan)
    return out


def _compare_profiles(p_r: np.ndarray, p_s: np.ndarray, sd: np.ndarray) -> dict:
    by_channel = [_mean(np.abs(p_s[c] - p_r[c]) / sd[c]) for c in range(len(sd))]
    return {"real": p_r.tolist(), "synthetic": p_s.tolist(), "err": _mean([v for v in by_channel if v is not None]),
            "err_by_channel": by_channel}


# ---------------------------------------------------------------------- long-series figures
def profiles(real, syn, t_real, t_syn, cal: Calendar) -> dict:
    """Hour-of-day (sub-daily data) and day-of-week mean profiles per channel and their errors:
    the mean absolute difference over the bins, in the real set's standard deviations."""
    sd = scale(real)
    out = {}
    if cal.per_day:
        hours = [(t // HOUR_NS) % 24 for t in (t_real, t_syn)]
        out["hour_of_day"] = {"bins": list(range(24)),
                              **_compare_profiles(_profile(real, hours[0], 24), _profile(syn, hours[1], 24), sd)}
    if cal.per_week:
        days = [((t + MONDAY_PHASE_NS) // DAY_NS) % 7 for t in (t_real, t_syn)]
        out["day_of_week"] = {"bins": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
                              **_compare_profiles(_profile(real, days[0], 7), _profile(syn, days[1], 7), sd)}
    return out


def totals(x: np.ndarray, start_ns: np.ndarray | None, cal: Calendar, steps: int, span_ns: int,
           phase_ns: int) -> np.ndarray:
    """Sum of every whole span (day or week) of every series, (spans, channels). With time stamps a
    span starts at a calendar boundary (midnight; Monday 00:00 for weeks: ``phase_ns``), the first
    at or after the series' start; without, every ``steps`` steps from the start. A span with
    missing readings counts as its mean times its steps; one with none is NaN."""
    n, length, c = x.shape
    if start_ns is None:
        offsets = np.zeros(n, dtype=np.int64)
    else:
        to_boundary = (-(start_ns + phase_ns)) % span_ns
        offsets = -(-to_boundary // cal.step_ns)
    parts = []
    for o in np.unique(offsets):
        rows = offsets == o
        k = (length - int(o)) // steps
        if k < 1:
            continue
        block = x[rows, o: o + k * steps].reshape(int(rows.sum()), k, steps, c)
        present = (~np.isnan(block)).sum(axis=2)
        mean = _quiet(np.nanmean, block, axis=2)
        parts.append(np.where(present > 0, mean * steps, np.nan).reshape(-1, c))
    return np.concatenate(parts) if parts else np.empty((0, c))


def _compare_totals(t_r: np.ndarray, t_s: np.ndarray) -> dict | None:
    """Wasserstein distance (in the real totals' standard deviations) and Kolmogorov-Smirnov
    statistic between real and synthetic totals, per channel and averaged."""
    from scipy.stats import ks_2samp, wasserstein_distance

    w, ks = [], []
    for c in range(t_r.shape[1]):
        r, s = t_r[:, c][np.isfinite(t_r[:, c])], t_s[:, c][np.isfinite(t_s[:, c])]
        if len(r) < 2 or len(s) < 2:
            w.append(None)
            ks.append(None)
            continue
        sd = r.std()
        w.append(float(wasserstein_distance(r, s) / (sd if sd > 0 else 1.0)))
        ks.append(float(ks_2samp(r, s).statistic))
    if all(v is None for v in w):
        return None
    return {"n_real": int(np.isfinite(t_r).all(axis=1).sum()), "n_synthetic": int(np.isfinite(t_s).all(axis=1).sum()),
            "wasserstein": _mean([v for v in w if v is not None]), "ks": _mean([v for v in ks if v is not None]),
            "wasserstein_by_channel": w, "ks_by_channel": ks}


def stability_window(length: int, cal: Calendar) -> int:
    """Steps of the first and the last window compared for level stability: a week when the series
    holds two, else the most whole days that fit twice, else a tenth of the series (at least 2)."""
    if cal.per_week and length >= 2 * cal.per_week:
        return cal.per_week
    if cal.per_day and length >= 2 * cal.per_day:
        return (length // (2 * cal.per_day)) * cal.per_day
    return max(2, length // 10)


def _drift(x: np.ndarray, w: int, sd: np.ndarray) -> dict:
    first, last = x[:, :w], x[:, -w:]
    level = (_quiet(np.nanmean, last, axis=1) - _quiet(np.nanmean, first, axis=1)) / sd     # (n, channels)
    spread = (_quiet(np.nanstd, last, axis=1) - _quiet(np.nanstd, first, axis=1)) / sd
    return {"level_drift_mean": _quiet(np.nanmean, level, axis=0), "level_drift_spread": _quiet(np.nanstd, level, axis=0),
            "std_drift_mean": _quiet(np.nanmean, spread, axis=0), "std_drift_spread": _quiet(np.nanstd, spread, axis=0)}


def stability(real: np.ndarray, syn: np.ndarray, w: int) -> dict:
    """Level and spread along the series: for each series and channel, the mean and the standard
    deviation of its last ``w`` steps minus those of its first ``w`` (in the real set's standard
    deviations); across series, the mean drift and its spread (standard deviation), real and
    synthetic, and the absolute differences of the mean drifts (``level_drift_err``,
    ``std_drift_err``) and of their spreads. A generator whose level or variance wanders along
    the series shows drifts the real data does not have."""
    sd = scale(real)
    r, s = _drift(real, w, sd), _drift(syn, w, sd)

    def err(key):
        return _mean(np.abs(s[key] - r[key]))

    return {"window": int(w), "real": {k: _mean(v) for k, v in r.items()},
            "synthetic": {k: _mean(v) for k, v in s.items()},
            "level_drift_err": err("level_drift_mean"), "std_drift_err": err("std_drift_mean"),
            "level_drift_spread_err": err("level_drift_spread"), "std_drift_spread_err": err("std_drift_spread"),
            "by_channel": {"real": {k: v.tolist() for k, v in r.items()}, "synthetic": {k: v.tolist() for k, v in s.items()}}}


def subwindow_steps(length: int, cal: Calendar, requested: int | None) -> int | None:
    """Steps of the sub-windows: ``requested`` (2..length-1), else a week when the series holds two,
    else the most whole days that fit twice; None when neither fits."""
    if requested is not None:
        if not 2 <= int(requested) < length:
            raise ConfigError(f"subwindow {requested} is outside 2..{length - 1} for series of length {length}")
        return int(requested)
    if cal.per_week and length >= 2 * cal.per_week:
        return cal.per_week
    if cal.per_day and length >= 2 * cal.per_day:
        return (length // (2 * cal.per_day)) * cal.per_day
    return None


def _cut(x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows of ``w`` steps at offsets 0, w, 2w, ... of every series, and the
    series each comes from."""
    k = x.shape[1] // w
    windows = x[:, : k * w].reshape(len(x), k, w, x.shape[2]).reshape(len(x) * k, w, x.shape[2])
    return windows, np.repeat(np.arange(len(x)), k)


def subwindow_disc(real: np.ndarray, syn: np.ndarray, w: int, cal: Calendar, seed: int) -> dict:
    """disc_gbm on sub-windows of ``w`` steps cut at the same offsets from real and synthetic series;
    windows of one series stay in one cross-validation fold."""
    a, ga = _cut(real, w)
    b, gb = _cut(syn, w)
    block = summary_block(w, real.shape[2], cal.per_day)
    d = discriminative_score(block_summary(a, block), block_summary(b, block), seed=seed, series=(ga, gb))
    d["features"] = disc_features(block, w)
    return {"steps": int(w), "offsets": [int(o) for o in range(0, real.shape[1] - w + 1, w)],
            "disc_gbm": d["disc"], "disc_gbm_auc": d["auc"], "discriminative": d}


# ---------------------------------------------------------------------- shape
def acf_at(real: np.ndarray, syn: np.ndarray, lags: dict[str, int]) -> dict:
    """Mean autocorrelation across series at the named ``lags`` per channel, real and synthetic, and
    the absolute error per lag (mean over channels). Keys of ``real``, ``synthetic`` and ``err``
    are the lags as strings ("1", "24", "168" for hourly data)."""
    ks = list(lags.values())
    c_r = _quiet(np.nanmean, acf_with_gaps(real, ks), axis=0)     # (lags, channels)
    c_s = _quiet(np.nanmean, acf_with_gaps(syn, ks), axis=0)
    return {"lags": dict(lags), "real": {str(k): c_r[i].tolist() for i, k in enumerate(ks)},
            "synthetic": {str(k): c_s[i].tolist() for i, k in enumerate(ks)},
            "err": {str(k): _mean(np.abs(c_s[i] - c_r[i])) for i, k in enumerate(ks)}}


def shape_metrics(prep: Prepared, name: str, lags: dict[str, int], cycle: int | None, block: int | None,
                  hours: tuple[np.ndarray, np.ndarray] | None, seed: int, acf: dict | None = None) -> dict:
    """The shape-level score of set ``name`` against train: disc_gbm with every series and channel
    standardised on its own (``block`` summarises series too long to classify whole), the
    autocorrelation errors at ``lags`` (per-series autocorrelation does not depend on the series'
    level or scale) with ``acf_err_cycle`` at the data's daily period (``cycle``), and, given the
    hour of every step (``hours``: train's and the set's), the error of the hour-of-day profile of
    the standardised series."""
    z_r, zf_r = standardise(prep.with_gaps("train"), prep.train)
    z_s, zf_s = standardise(prep.with_gaps(name), getattr(prep, name))
    d = discriminative_score(block_summary(zf_r, block), block_summary(zf_s, block), seed=seed)
    d["features"] = disc_features(block, prep.train.shape[1])
    acf = acf if acf is not None else acf_at(z_r, z_s, lags)
    errs = [v for v in acf["err"].values() if v is not None]
    out = {"disc_gbm": d["disc"], "disc_gbm_auc": d["auc"], "discriminative": d, "acf": acf,
           "acf_err": _mean(errs) if errs else None, "cycle_lag": cycle,
           "acf_err_cycle": None if cycle is None else acf["err"].get(str(cycle))}
    if hours is not None:
        p = _compare_profiles(_profile(z_r, hours[0], 24), _profile(z_s, hours[1], 24), np.ones(z_r.shape[2]))
        out["hour_of_day_profile_err"] = p["err"]
    return out


# ---------------------------------------------------------------------- all of them
def _assumed_starts(prep: Prepared, name: str) -> tuple[np.ndarray | None, str | None]:
    """Start times of set ``name``; a set without them takes train's most common start (said so)."""
    own = prep.starts.get(name)
    if own is not None or prep.starts.get("train") is None:
        return own, None
    values, counts = np.unique(prep.starts["train"], return_counts=True)
    start = values[np.argmax(counts)]
    return np.full(len(getattr(prep, name)), start, dtype=np.int64), str(pd.Timestamp(start))


def series_figures(prep: Prepared, name: str, cross_lag: int, subwindow: int | None, seed: int) -> tuple[dict, dict | None, dict]:
    """The shape figures and (for long series) the long-series figures of set ``name``
    ("synthetic" or "holdout") against train; returns (shape, long or None, not_computed)."""
    length, channels = prep.train.shape[1], prep.train.shape[2]
    cal = calendar(prep.freq)
    not_computed: dict = {}
    real, syn = prep.with_gaps("train"), prep.with_gaps(name)
    lags = cal.lags(length) if cal.cycle else {"step": 1, "cycle": int(cross_lag)}
    cycle = next((lags[k] for k in ("day", "week", "cycle") if k in lags), None)
    reason = why_not_long(cal, length)
    starts, assumed, t_real, t_syn = (None, None), None, None, None
    if reason is None and prep.starts.get("train") is not None:
        s_syn, assumed = _assumed_starts(prep, name)
        starts = (prep.starts["train"], s_syn)
        t_real, t_syn = _times(starts[0], length, cal), _times(starts[1], length, cal)
    hours = None if t_real is None or not cal.per_day else ((t_real // HOUR_NS) % 24, (t_syn // HOUR_NS) % 24)
    acf = acf_at(real, syn, lags)
    shape = shape_metrics(prep, name, lags, cycle, summary_block(length, channels, cal.per_day), hours, seed, acf)
    if reason is not None:
        not_computed["fidelity.long"] = reason
        return shape, None, not_computed

    long: dict = {"freq": cal.freq, "steps_per_day": cal.per_day, "steps_per_week": cal.per_week,
                  "calendar": t_real is not None, "acf": acf}
    if t_real is not None:
        if assumed:
            long["assumed_start"] = assumed
        long["profiles"] = profiles(real, syn, t_real, t_syn, cal)
    else:
        not_computed["fidelity.long.profiles"] = "the series have no start time stamps"
    long["totals"] = {}
    for span, steps, span_ns, phase in (("day", cal.per_day, DAY_NS, 0), ("week", cal.per_week, WEEK_NS, MONDAY_PHASE_NS)):
        if not steps or steps > length:
            continue
        t_r = totals(real, starts[0], cal, steps, span_ns, phase)
        t_s = totals(syn, starts[1], cal, steps, span_ns, phase)
        cmp = _compare_totals(t_r, t_s)
        if cmp is None:
            not_computed[f"fidelity.long.totals.{span}"] = f"fewer than two whole {span}s in the series"
            continue
        long["totals"][span] = {"steps": int(steps), "aligned": "calendar" if starts[0] is not None else "series start",
                                **cmp}
    long["stability"] = stability(real, syn, stability_window(length, cal))
    w = subwindow_steps(length, cal, subwindow)
    if w is None:
        not_computed["fidelity.long.subwindow"] = "no sub-window fits twice in the series"
    else:
        long["subwindow"] = subwindow_disc(prep.train, getattr(prep, name), w, cal, seed)
    return shape, long, not_computed


def gap_share(prep: Prepared, name: str) -> dict:
    """Share of missing values (gaps) in train and in set ``name``, and their absolute difference."""
    def share(n):
        mask = prep.gaps.get(n)
        return 0.0 if mask is None else float(mask.mean())

    r, s = share("train"), share(name)
    return {"real": r, "synthetic": s, "err": abs(s - r)}


def day_grid(x: np.ndarray, start_ns: int | None, cal: Calendar) -> np.ndarray:
    """One series' values (length,) as a (days, steps per day) grid; with a start time the rows are
    calendar days from midnight (NaN before the start and after the end)."""
    lead = 0 if start_ns is None else int((start_ns % DAY_NS) // cal.step_ns)
    days = -(-(lead + len(x)) // cal.per_day)
    grid = np.full(days * cal.per_day, np.nan)
    grid[lead: lead + len(x)] = x
    return grid.reshape(days, cal.per_day)
