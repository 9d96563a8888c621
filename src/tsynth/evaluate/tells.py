"""What tells synthetic series from real ones: the discriminative score on per-series features, one family at a time.

disc_gbm says *whether* a classifier tells the sets apart; this says *by what*. Each family turns every series into
a few numbers per channel, and the same classifier as disc_gbm (:func:`.fidelity.discriminative_score`) tries to
tell real from synthetic on those numbers alone:

* ``values_sorted``: the series' values in ascending order (its own distribution of values: tails, dips, clipping;
  evenly spaced order statistics of its readings where it is long or has gaps);
* ``moments``: mean, standard deviation, minimum, quartiles and maximum;
* ``autocorrelation``: at lags 1 and 2, and at half, one and two of the data's cycle where the series holds them;
* ``roughness``: the mean absolute first and second differences, relative to the series' spread, and the share
  of steps that hold the previous value exactly;
* ``cycle_profile``: the series' own mean cycle (its mean day of hourly data), where it holds two cycles;
* ``cycle_deviation``: each cycle minus that mean cycle (how the series' days differ from each other).

A family that scores far above the holdout's figure for it names a property of the data that the generator misses;
families that stay at the holdout's level are reproduced. Gaps are read as missing (NaN-aware statistics, and the
classifier takes missing features as they are); a family the data is too short for is left out.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..data import series_roughness
from .fidelity import discriminative_score, subsample
from .longseries import acf_with_gaps

__all__ = ["FAMILIES", "family_features", "feature_discrimination"]

FAMILIES = ("values_sorted", "moments", "autocorrelation", "roughness", "cycle_profile", "cycle_deviation")
MAX_SORTED = 256  # values_sorted: longer series are summarised by this many evenly spaced order statistics
MAX_CYCLE_DEVIATION = 1024  # cycle_deviation: at most this many features per channel (whole cycles from the start)
MAX_SERIES = 1000  # series of each set scored (a seeded subsample): the families are diagnostics, and six of them
# on both the synthetic set and the holdout would otherwise cost more than the rest of the evaluation


def family_features(x: np.ndarray, family: str, cycle: int | None) -> np.ndarray | None:
    """Features (n, k) of family ``family`` for series ``x`` (n, length, channels) with NaN gaps; None where the
    series are too short for it (or no cycle is known for the cycle families)."""
    n, length, c = x.shape
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN features, which the classifier takes
        if family == "values_sorted":  # order statistics of the readings there are (without gaps: the sorted series)
            q = np.nanpercentile(x, np.linspace(0, 100, min(length, MAX_SORTED)), axis=1)  # (k, n, c)
            return np.moveaxis(q, 0, 1).reshape(n, -1)
        if family == "moments":
            q = np.nanpercentile(x, [0, 25, 50, 75, 100], axis=1)  # (5, n, c)
            return np.concatenate([np.nanmean(x, axis=1), np.nanstd(x, axis=1), *q], axis=1)
        if family == "autocorrelation":
            lags = sorted({lag for lag in (1, 2, *(() if cycle is None else (cycle // 2, cycle, 2 * cycle)))
                           if 0 < lag < length - 1})
            return acf_with_gaps(x, lags).reshape(n, -1) if lags else None
        if family == "roughness":
            if length < 3:
                return None
            return np.concatenate(series_roughness(x), axis=1)
        if family in ("cycle_profile", "cycle_deviation"):
            if cycle is None or cycle < 2 or length < 2 * cycle:
                return None
            k = length // cycle
            cycles = x[:, :k * cycle].reshape(n, k, cycle, c)
            mean_cycle = np.nanmean(cycles, axis=1)  # (n, cycle, c)
            if family == "cycle_profile":
                return mean_cycle.reshape(n, -1)
            keep = max(2, min(k, MAX_CYCLE_DEVIATION // cycle))
            return (cycles[:, :keep] - mean_cycle[:, None]).reshape(n, -1)
    raise ValueError(f"unknown feature family {family!r} (choose from {', '.join(FAMILIES)})")


def feature_discrimination(real: np.ndarray, other: np.ndarray, cycle: int | None = None, seed: int = 0) -> dict:
    """disc_gbm (|AUC - 0.5|, 0 = indistinguishable) of ``other`` against ``real`` (both (n, length, channels),
    NaN for gaps) on each feature family; ``cycle``: the data's period in steps (a day of hourly data) or None.
    At most ``MAX_SERIES`` series of each set are scored (a subsample drawn with ``seed``). Returns ``{"families":
    {family: {"disc_gbm", "auc", "features"}}, "left_out": {family: why}, "most_telling": the family with the
    highest score}``."""
    rng = np.random.RandomState(seed)
    real, other = real[subsample(len(real), MAX_SERIES, rng)], other[subsample(len(other), MAX_SERIES, rng)]
    families, left_out = {}, {}
    for family in FAMILIES:
        fr, fo = family_features(real, family, cycle), family_features(other, family, cycle)
        if fr is None or fo is None:
            left_out[family] = ("no cycle known (no frequency) or the series hold fewer than two cycles"
                                if family.startswith("cycle") else "the series are too short")
            continue
        d = discriminative_score(fr[:, :, None], fo[:, :, None], seed=seed)
        families[family] = {"disc_gbm": d["disc"], "auc": d["auc"], "features": int(fr.shape[1])}
    most = max(families, key=lambda f: families[f]["disc_gbm"]) if families else None
    return {"families": families, "left_out": left_out, "most_telling": most}
