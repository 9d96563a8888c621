"""Evaluation of large sets on a seeded, stated subsample, with confidence intervals.

:func:`evaluate_subsampled` draws ``size`` series uniformly without replacement from each set (train,
synthetic, holdout; a set of at most ``size`` series is used whole), seeded by ``seed`` + the repeat, and
scores them with :func:`tsynth.evaluate.evaluate`. A partitioned Parquet data set (a folder or glob) is
sampled as a stream (:class:`tsynth.streaming.PartitionedSeries`, bottom-k of seeded random keys), so it never
has to fit in memory. With ``repeats`` R > 1 the evaluation runs on R subsamples drawn with seeds ``seed``,
``seed + 1``, ...; the figures that carry sampling noise (the headline numbers) get a 95 % confidence interval
from their spread over the repeats (Student's t on R - 1 degrees of freedom: ``mean +- t * sd / sqrt(R)``),
which covers both the subsampling and the seeded randomness inside the figures (classifier folds). The first
repeat's evaluation is the one reported; ``summary.subsample`` says what was drawn and holds the intervals.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .data import SeriesSet
from .errors import ConfigError
from .evaluate import Evaluation, evaluate
from .streaming import PartitionedSeries


def draw(data: SeriesSet | PartitionedSeries, size: int, seed: int) -> tuple[SeriesSet, int]:
    """``size`` series drawn uniformly without replacement (seeded), and how many the set holds."""
    if isinstance(data, PartitionedSeries):
        sample = PartitionedSeries(data.source, sample_size=size, seed=seed, **data.read_options)
        return sample.scan(), sample.n_series
    if len(data) <= size:
        return data, len(data)
    pick = np.sort(np.random.default_rng(seed).choice(len(data), size, replace=False))
    return data.subset(pick), len(data)


def _t975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def evaluate_subsampled(train, synthetic, holdout=None, *, size: int, repeats: int = 1, seed: int = 0,
                        **kwargs: Any) -> tuple[Evaluation, dict[str, SeriesSet]]:
    """See the module docstring; ``kwargs`` go to :func:`tsynth.evaluate.evaluate` (its ``seed`` is the
    repeat's). Returns the first repeat's evaluation and the series it scored (train, synthetic, holdout)."""
    if size < 2:
        raise ConfigError(f"--subsample must be at least 2 series, got {size}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    runs, drawn, first_sets = [], {}, {}
    for r in range(repeats):
        s = seed + r
        sets: dict[str, SeriesSet] = {}
        for name, data in (("train", train), ("synthetic", synthetic), ("holdout", holdout)):
            if data is not None:
                sets[name], drawn[name] = draw(data, size, s)
        runs.append(evaluate(sets["train"], sets["synthetic"], sets.get("holdout"), seed=s, **kwargs))
        first_sets = first_sets or sets
    first = runs[0]
    info: dict[str, Any] = {"series_per_set": size, "sets": drawn, "repeats": repeats, "seeds": [seed + r for r in range(repeats)],
                            "how": "uniform without replacement, seeded (a partitioned data set: bottom-k of seeded "
                                   "random keys, read as a stream)"}
    if repeats > 1:
        ci, spread = {}, {}
        for key, value in first.summary["headline"].items():
            values = [run.summary["headline"].get(key) for run in runs]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                continue
            arr = np.asarray(values, dtype=np.float64)
            half = _t975(repeats - 1) * arr.std(ddof=1) / math.sqrt(repeats)
            ci[key] = [float(arr.mean() - half), float(arr.mean() + half)]
            spread[key] = [float(v) for v in arr]
        info["ci95"], info["values"] = ci, spread
    first.summary["subsample"] = info
    return first, first_sets
