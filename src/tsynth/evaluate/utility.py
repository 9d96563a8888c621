"""Utility: train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

Both models are scored on the real holdout, so the figures need one. Models are small and CPU-cheap:
a ridge regression on the previous ``k`` steps for next-step forecasting, a gradient-boosted classifier
on flattened series for a label attribute.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import DataError
from .fidelity import Prepared, flatten, subsample
from .privacy import NEEDS_HOLDOUT

MAX_SERIES = 2000     # forecasting: series drawn from each set (each gives length - k examples)
MAX_CLASSIFY = 5000   # classification: series drawn from each training set
MAX_CLASSES = 50      # an automatically chosen label has 2..50 values
MAX_EXAMPLES = 200_000  # forecasting: examples drawn from each set (long series hold millions)


def _windows(x: np.ndarray, k: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Every (previous k steps -> next step) example of every series, or a seeded draw of
    MAX_EXAMPLES of them where there are more: X (m, k*channels), Y (m, channels)."""
    w = sliding_window_view(x, k + 1, axis=1)            # a view (n, length - k, channels, k + 1)
    n, m = w.shape[:2]
    if n * m > MAX_EXAMPLES:
        pick = subsample(n * m, MAX_EXAMPLES, rng)
        w = w[pick // m, pick % m]
    else:
        w = w.reshape(n * m, *w.shape[2:])
    X = np.moveaxis(w[..., :k], 2, 1).reshape(-1, k * x.shape[2])
    return X, w[..., k]


def forecast_utility(train: np.ndarray, syn: np.ndarray, holdout: np.ndarray, seed: int = 0) -> dict:
    """Next-step MAE on the holdout of a ridge model fitted on synthetic (tstr) and on train (trtr).

    ``ratio`` = tstr / trtr (1 ideal, above 1 = synthetic data teaches less); ``persistence_mae`` (the
    last value as forecast) shows what no model at all scores.
    """
    from sklearn.linear_model import Ridge

    rng = np.random.RandomState(seed)
    k = min(24, train.shape[1] // 2)
    Xh, Yh = _windows(holdout[subsample(len(holdout), MAX_SERIES, rng)], k, rng)

    def mae(x):
        X, Y = _windows(x[subsample(len(x), MAX_SERIES, rng)], k, rng)
        return float(np.abs(Ridge(alpha=1.0).fit(X, Y).predict(Xh).reshape(Yh.shape) - Yh).mean())

    tstr, trtr = mae(syn), mae(train)
    persistence = float(np.abs(Xh[:, -train.shape[2]:] - Yh).mean())
    return {"tstr_mae": tstr, "trtr_mae": trtr, "ratio": tstr / trtr if trtr > 0 else None,
            "persistence_mae": persistence, "k": k, "model": "ridge(alpha=1) on the previous k steps"}


def pick_label(prep: Prepared, label: str | None) -> tuple[str | None, str | None]:
    """The attribute to classify and, when there is none, the reason.

    An explicit ``label`` must be a column of every set given; otherwise the first non-numeric
    (or boolean) attribute present in train, synthetic and holdout with 2..50 values in train is used.
    """
    sets = {"train": prep.train_attrs, "synthetic": prep.synthetic_attrs, "holdout": prep.holdout_attrs}
    if label is not None:
        for name, attrs in sets.items():
            if attrs is not None and label not in attrs.columns:
                raise DataError(f"label {label!r} is not an attribute of the {name} set (attributes: {list(attrs.columns)})")
        return label, None
    if prep.holdout_attrs is None:
        return None, NEEDS_HOLDOUT
    for col in prep.train_attrs.columns:
        s = prep.train_attrs[col]
        categorical = pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s)
        if categorical and all(col in a.columns for a in sets.values()) and 2 <= s.nunique() <= MAX_CLASSES:
            return col, None
    return None, "no categorical attribute shared by train, synthetic and holdout (pass label=...)"


def classification_utility(prep: Prepared, label: str, seed: int = 0) -> tuple[dict | None, str | None]:
    """Holdout accuracy of a classifier of ``label`` fitted on synthetic vs on train; (figures, reason if none)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.RandomState(seed)
    if prep.holdout is None:
        return None, NEEDS_HOLDOUT

    def labelled(x, attrs):
        y = attrs[label].astype(object).to_numpy()
        ok = pd.notna(y)
        return flatten(x[ok]), y[ok].astype(str)

    Xh, yh = labelled(prep.holdout, prep.holdout_attrs)
    if len(yh) == 0:
        return None, f"no holdout series carries a value of {label!r}"
    out = {"label": label, "classes": sorted(set(yh)), "n_holdout": len(yh)}
    labels = {}
    for key, name, x, attrs in (("tstr_acc", "synthetic", prep.synthetic, prep.synthetic_attrs),
                                ("trtr_acc", "train", prep.train, prep.train_attrs)):
        X, y = labels[name] = labelled(x, attrs)
        if len(set(y)) < 2:
            return None, f"the {name} series carry fewer than 2 values of {label!r}"
        pick = subsample(len(y), MAX_CLASSIFY, rng)
        clf = HistGradientBoostingClassifier(random_state=seed).fit(X[pick], y[pick])
        out[key] = float((clf.predict(Xh) == yh).mean())
    majority = pd.Series(labels["train"][1]).mode()[0]
    out["majority_acc"] = float((yh == majority).mean())
    out["model"] = "HistGradientBoostingClassifier on flattened series"
    return out, None


def utility_metrics(prep: Prepared, label: str | None, no_label: str | None, seed: int = 0) -> tuple[dict, dict]:
    """Forecasting and classification utility; returns (figures, not_computed).

    ``label`` and ``no_label`` come from :func:`pick_label`: the attribute to classify, or the reason
    there is none.
    """
    out: dict = {}
    not_computed: dict = {}
    if prep.holdout is None:
        not_computed["utility.forecast"] = NEEDS_HOLDOUT
    else:
        out["forecast"] = forecast_utility(prep.train, prep.synthetic, prep.holdout, seed)
    if label is not None:
        classification, no_label = classification_utility(prep, label, seed)
        if classification is not None:
            out["classification"] = classification
    if no_label is not None:
        not_computed["utility.classification"] = no_label
    return out, not_computed
