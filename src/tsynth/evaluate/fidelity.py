"""Fidelity: how close the synthetic series are to the real ones, figure by figure.

Also home of the helpers every evaluation module shares: :func:`prepare` (check the three sets and
turn them into float64 arrays) and :func:`subsample`; :func:`flatten` and :func:`nearest` (distance to
the closest record) come from :mod:`tsynth.distance`, which the memorization guard shares.

Gaps (NaN inside a series) are accepted where the real data has them: :func:`prepare` records where
they are and fills them by linear interpolation along each series, so that the figures which need
complete series (per-step statistics, the discriminative score, coverage, privacy, utility) can be
computed; the figures of :mod:`.longseries` read the gaps as missing instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data import SeriesSet
from ..distance import flatten, nearest, pairwise_sq_dist
from ..errors import DataError

__all__ = ["Prepared", "prepare", "flatten", "nearest", "pairwise_sq_dist", "row_groups", "subsample", "one_thread",
           "step_stats", "acf", "discriminative_score", "coverage", "fidelity_metrics", "fill_gaps", "summary_block",
           "block_summary", "disc_features"]

MAX_PER_CLASS = 5000      # disc_gbm: at most this many windows of each class (baselines.md)
MAX_DISC_FEATURES = 1024  # disc_gbm / coverage: longer windows are summarised by block means and stds
MAX_CORR_STEPS = 512      # step_corr_err: correlations between the first this many steps
COVERAGE_MAX = 2000       # coverage: series drawn from each set
COVERAGE_DIMS = 16        # coverage: PCA components of the standardised windows
COVERAGE_K = 5            # coverage: neighbours that set each real (synthetic) ball's radius
QUANTILES = (10, 50, 90)


# ---------------------------------------------------------------------- shared helpers
@dataclass
class Prepared:
    """The three sets as float64 arrays (n, length, channels), synthetic non-finite rows removed.

    The arrays are complete: gaps are filled (see :func:`fill_gaps`) and ``gaps`` holds, per set
    name, the mask of the filled positions (None when the set has none). ``starts``: per set, the
    series' start times as int64 nanoseconds (None without time stamps); ``freq``: the data's
    frequency alias (None when unknown).
    """

    train: np.ndarray
    synthetic: np.ndarray
    holdout: np.ndarray | None
    train_attrs: pd.DataFrame
    synthetic_attrs: pd.DataFrame
    holdout_attrs: pd.DataFrame | None
    channels: list[str]
    excluded_nonfinite: int
    n_synthetic_given: int
    gaps: dict = field(default_factory=dict)
    starts: dict = field(default_factory=dict)
    freq: str | None = None

    def with_gaps(self, name: str) -> np.ndarray | None:
        """Set ``name`` ("train", "synthetic", "holdout") with NaN where its gaps are."""
        x = getattr(self, name)
        mask = self.gaps.get(name)
        return x if x is None or mask is None else np.where(mask, np.nan, x)


def row_groups(x: np.ndarray) -> np.ndarray:
    """One group id per row, shared by identical rows (the rank of the row among the distinct rows)."""
    return np.unique(flatten(x), axis=0, return_inverse=True)[1].reshape(-1)


def _record_keys(s: SeriesSet) -> list:
    """Items identify records; sliding windows of one item are told apart by their ``window_offset``."""
    if "window_offset" in s.attributes.columns:
        return list(zip(s.item_id, s.attributes["window_offset"]))
    return list(s.item_id)


def prepare(train: SeriesSet, synthetic: SeriesSet, holdout: SeriesSet | None = None,
            freq: str | None = None) -> Prepared:
    """Check that the sets can be compared and return them as arrays.

    Every set must be a non-empty, regular SeriesSet (no ragged series) with the same length,
    channels and frequency; train and holdout share no record (item id, plus ``window_offset`` for
    sliding windows). Real series may hold gaps (NaN) but no inf, and need a value in every channel.
    Synthetic series are dropped and counted when they hold inf or a channel without any value and,
    where the real data has no gaps, when they hold any NaN (a generator of gap-free data makes
    none). ``freq``: the data's frequency when the sets carry none (a set's own must agree with it).
    """
    sets = {"train": train, "synthetic": synthetic, "holdout": holdout}
    for name, s in sets.items():
        if s is None:
            continue
        if not isinstance(s, SeriesSet):
            raise DataError(f"{name} must be a SeriesSet, got {type(s).__name__}")
        if len(s) == 0:
            raise DataError(f"the {name} set is empty")
        if not s.is_regular:
            i = int(np.flatnonzero(s.lengths != s.length)[0])
            raise DataError(f"{name} series have different lengths (series '{s.item_id[i]}' has {s.lengths[i]} steps, "
                            f"others {s.length}); evaluation needs equal lengths: cut them with .window(...)")
        if s.length < 2:
            raise DataError(f"{name} series have {s.length} step; evaluation needs at least 2")
        if s.length != train.length:
            raise DataError(f"{name} series have length {s.length} but train series have length {train.length}")
        if s.channels != train.channels:
            raise DataError(f"{name} channels {s.channels} differ from train channels {train.channels}")
    freq = _common_freq(sets, freq)
    for name in ("train", "holdout"):
        s = sets[name]
        if s is not None:
            bad = np.isinf(s.values).any(axis=(1, 2))
            if bad.any():
                raise DataError(f"{name} series '{s.item_id[np.flatnonzero(bad)[0]]}' holds inf; real data must be "
                                "finite (missing readings may be NaN)")
            empty = np.isnan(s.values).all(axis=1)
            if empty.any():
                i, c = np.argwhere(empty)[0]
                raise DataError(f"{name} series '{s.item_id[i]}' has no value in channel '{s.channels[c]}' (all NaN)")
    if holdout is not None:
        shared = set(_record_keys(train)) & set(_record_keys(holdout))
        if shared:
            raise DataError(f"holdout shares {len(shared)} record(s) with train, e.g. item {sorted(shared, key=str)[0]!r}; "
                            "split by item (SeriesSet.split) so that no item is on both sides")
    real_gaps = any(s is not None and np.isnan(s.values).any() for s in (train, holdout))
    v = synthetic.values
    if real_gaps:
        keep = ~np.isinf(v).any(axis=(1, 2)) & ~np.isnan(v).all(axis=1).any(axis=1)
    else:
        keep = np.isfinite(v).all(axis=(1, 2))
    if not keep.any():
        why = " (inf, or a channel without any value)" if real_gaps else " (the real data has no gaps)"
        raise DataError(f"every one of the {len(synthetic)} synthetic series holds NaN/inf{why}")
    counts = {"train": len(train), "synthetic": int(keep.sum()), **({"holdout": len(holdout)} if holdout is not None else {})}
    for name, n in counts.items():
        if n < 2:
            raise DataError(f"the {name} set has {n} usable series; evaluation needs at least 2")
    arrays: dict = {}
    gaps: dict = {}
    for name, x in (("train", train.values), ("synthetic", synthetic.values[keep]),
                    ("holdout", None if holdout is None else holdout.values)):
        if x is not None:
            x = x.astype(np.float64)
            mask = np.isnan(x)
            gaps[name] = mask if mask.any() else None
            arrays[name] = fill_gaps(x, mask) if mask.any() else x
    starts = {name: None if s is None or s.start is None else s.start.astype("datetime64[ns]").astype(np.int64)
              for name, s in sets.items()}
    if starts["synthetic"] is not None:
        starts["synthetic"] = starts["synthetic"][keep]
    return Prepared(
        train=arrays["train"],
        synthetic=arrays["synthetic"],
        holdout=arrays.get("holdout"),
        train_attrs=train.attributes,
        synthetic_attrs=synthetic.attributes.iloc[np.flatnonzero(keep)].reset_index(drop=True),
        holdout_attrs=None if holdout is None else holdout.attributes,
        channels=list(train.channels),
        excluded_nonfinite=int((~keep).sum()),
        n_synthetic_given=len(synthetic),
        gaps=gaps,
        starts=starts,
        freq=freq,
    )


def _common_freq(sets: dict, freq: str | None) -> str | None:
    """The data's frequency: ``freq`` if given, else the first set's that has one; all must agree."""
    from pandas.tseries.frequencies import to_offset

    found = ([("the given frequency", freq)] if freq else []) + \
        [(f"the {name} set's frequency", s.freq) for name, s in sets.items() if s is not None and s.freq]
    if not found:
        return None
    offsets = []
    for who, f in found:
        try:
            offsets.append(to_offset(f))
        except ValueError:
            raise DataError(f"{who} {f!r} is not a frequency alias (h, D, 15min, ...)") from None
    for (who, f), off in zip(found[1:], offsets[1:]):
        if off != offsets[0]:
            raise DataError(f"{who} {f!r} differs from {found[0][0]} {found[0][1]!r}")
    return str(found[0][1])


def fill_gaps(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``x`` (n, length, channels) with the positions in ``mask`` filled by linear interpolation along
    each series and channel (before the first and after the last value: that value)."""
    out = x.copy()
    steps = np.arange(x.shape[1])
    for i, c in zip(*np.nonzero(mask.any(axis=1))):
        m = mask[i, :, c]
        out[i, m, c] = np.interp(steps[m], steps[~m], x[i, ~m, c])
    return out


def one_thread():
    """Context in which native thread pools (OpenMP for HistGradientBoosting, BLAS for distances) use
    one thread: on a small shared CPU more threads only add contention, and the boosting fits and the
    nearest-record searches run faster on one (docs/evaluation.md)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def subsample(n: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """Sorted positions of ``size`` of ``n`` rows drawn without replacement (all rows when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(rng.choice(n, size, replace=False))


# ---------------------------------------------------------------------- per-step statistics
def step_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step mean (length, channels) and 10/50/90th percentiles (3, length, channels) across series."""
    return x.mean(axis=0), np.percentile(x, QUANTILES, axis=0)


def acf(x: np.ndarray, lags) -> np.ndarray:
    """Autocorrelation of every series and channel at ``lags``: (n, len(lags), channels); NaN for constant series."""
    xc = x - x.mean(axis=1, keepdims=True)
    den = (xc ** 2).sum(axis=1)
    num = np.stack([(xc[:, :-k] * xc[:, k:]).sum(axis=1) for k in lags], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den[:, None, :] > 0, num / den[:, None, :], np.nan)


def _corr_matrix(x: np.ndarray) -> np.ndarray:
    """Correlation between the columns of ``x`` (rows = observations); NaN where a column is constant."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(x, rowvar=False)


def _corr_err(real: np.ndarray, syn: np.ndarray) -> float | None:
    """Mean absolute difference of the off-diagonal correlations between the columns of two matrices."""
    off = ~np.eye(real.shape[1], dtype=bool)
    return _nanmean(np.abs(_corr_matrix(syn) - _corr_matrix(real))[off])


def _nanmean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


# ---------------------------------------------------------------------- discriminative score
def discriminative_score(real: np.ndarray, synthetic: np.ndarray, seed: int = 0,
                         series: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """disc_gbm (baselines.md): can a classifier tell real from synthetic windows?

    HistGradientBoostingClassifier (default settings, ``random_state=seed``) on flattened windows,
    at most 5000 per class (seeded subsample), 5-fold StratifiedGroupKFold (shuffled, seeded) with
    identical windows in one group, scored on the out-of-fold probabilities. ``series``: for several
    windows cut from each series, the series each real and each synthetic window comes from; windows
    of one series then share a fold too, so a classifier cannot score by recognising a series it
    was trained on. Returns ``disc`` =
    |AUC - 0.5| (0 = indistinguishable, 0.5 = separable), ``auc``, ``accuracy`` (balanced accuracy at
    probability 0.5, so unequal class sizes do not inflate it) and ``disc_acc`` = |accuracy - 0.5|.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.RandomState(seed)
    a, b = flatten(real), flatten(synthetic)
    if a.shape[1] != b.shape[1]:
        raise DataError(f"real windows have {a.shape[1]} values but synthetic ones {b.shape[1]}")
    ia, ib = subsample(len(a), MAX_PER_CLASS, rng), subsample(len(b), MAX_PER_CLASS, rng)
    a, b = a[ia], b[ib]
    n_splits = min(5, len(a), len(b))
    if n_splits < 2:
        raise DataError("the discriminative score needs at least 2 windows of each kind")
    X = np.vstack([a, b]).astype(np.float32)
    y = np.r_[np.zeros(len(a), int), np.ones(len(b), int)]
    groups = row_groups(X)
    if series is not None:
        ga = np.unique(np.asarray(series[0])[ia], return_inverse=True)[1].reshape(-1)
        gb = np.unique(np.asarray(series[1])[ib], return_inverse=True)[1].reshape(-1)
        groups = _joined_groups(groups, np.r_[ga, ga.max() + 1 + gb])
    proba = np.empty(len(X))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with one_thread():
        for tr, te in cv.split(X, y, groups):
            clf = HistGradientBoostingClassifier(random_state=seed).fit(X[tr], y[tr])
            proba[te] = clf.predict_proba(X[te])[:, 1]
    auc = float(roc_auc_score(y, proba))
    acc = float(balanced_accuracy_score(y, proba > 0.5))
    return {"disc": abs(auc - 0.5), "auc": auc, "accuracy": acc, "disc_acc": abs(acc - 0.5),
            "n_real": len(a), "n_synthetic": len(b), "folds": n_splits}


def _joined_groups(g1: np.ndarray, g2: np.ndarray) -> np.ndarray:
    """One group id per row such that rows sharing an id in ``g1`` or in ``g2`` share a group."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n, k1 = len(g1), int(g1.max()) + 1
    rows = np.r_[np.arange(n), np.arange(n)]
    cols = np.r_[n + g1, n + k1 + g2]
    size = n + k1 + int(g2.max()) + 1
    graph = coo_matrix((np.ones(2 * n), (rows, cols)), shape=(size, size))
    return connected_components(graph, directed=False)[1][:n]


def summary_block(length: int, channels: int, period: int | None = None) -> int | None:
    """None when whole windows (``length`` x ``channels`` values) are small enough to classify; else
    the block size in steps whose means and standard deviations summarise a window in at most
    MAX_DISC_FEATURES values: the smallest divisor or multiple of ``period`` (the data's daily
    period, so that blocks cover whole hours or days) that is enough, or the smallest size at all."""
    if length * channels <= MAX_DISC_FEATURES:
        return None

    def fits(b: int) -> bool:
        return -(-length // b) * 2 * channels <= MAX_DISC_FEATURES

    if period and period > 1:
        options = [d for d in range(1, period + 1) if period % d == 0]
        options += [period * k for k in range(2, length // period + 1)]
        for b in options:
            if fits(b):
                return b
    b = max(1, 2 * length * channels // MAX_DISC_FEATURES)
    while b < length and not fits(b):
        b += 1
    return min(b, length)


def block_summary(x: np.ndarray, block: int | None) -> np.ndarray:
    """(n, length, channels) -> the mean and the standard deviation of every ``block`` steps (the last
    block may be shorter), (n, 2 x blocks, channels); ``x`` itself when ``block`` is None."""
    if block is None:
        return x
    n, length, c = x.shape
    nb = -(-length // block)
    padded = np.concatenate([x, np.full((n, nb * block - length, c), np.nan)], axis=1).reshape(n, nb, block, c)
    return np.concatenate([np.nanmean(padded, axis=2), np.nanstd(padded, axis=2)], axis=1)


def disc_features(block: int | None, length: int) -> str:
    """What the discriminative score classifies, in words."""
    if block is None:
        return "whole series"
    return f"means and standard deviations of {-(-length // block)} blocks of {block} steps (series too long to classify whole)"


# ---------------------------------------------------------------------- coverage
def coverage(real: np.ndarray, synthetic: np.ndarray, seed: int = 0) -> dict:
    """Precision and recall of the k-NN manifolds (Kynkäänniemi et al. 2019, k=5).

    Windows are standardised with the real set's per-value mean and std and projected on the real
    set's first 16 principal components; at most 2000 series of each set are used (seeded).
    Precision: share of synthetic windows inside some real window's k-NN ball (realism); recall:
    share of real windows inside some synthetic ball (diversity). 1 is ideal for both.
    """
    rng = np.random.RandomState(seed)
    a, b = flatten(real), flatten(synthetic)
    a = a[subsample(len(a), COVERAGE_MAX, rng)]
    b = b[subsample(len(b), COVERAGE_MAX, rng)]
    k = min(COVERAGE_K, len(a) - 1, len(b) - 1)
    mu, sd = a.mean(axis=0), a.std(axis=0)
    sd[sd == 0] = 1.0
    a, b = (a - mu) / sd, (b - mu) / sd
    _, _, vt = np.linalg.svd(a - a.mean(axis=0), full_matrices=False)
    comp = vt[: min(COVERAGE_DIMS, vt.shape[0])].T
    a, b = a @ comp, b @ comp

    def radii(x):  # distance of each point to its k-th neighbour within its own set
        return np.sqrt(np.partition(pairwise_sq_dist(x, x), k, axis=1)[:, k])

    d_ab = np.sqrt(pairwise_sq_dist(a, b))
    precision = float((d_ab <= radii(a)[:, None]).any(axis=0).mean())
    recall = float((d_ab <= radii(b)[None, :]).any(axis=1).mean())
    return {"precision": precision, "recall": recall, "k": k, "n_real": len(a), "n_synthetic": len(b),
            "dims": comp.shape[1]}


# ---------------------------------------------------------------------- all fidelity figures
def fidelity_metrics(real: np.ndarray, syn: np.ndarray, lags, cross_lag: int, seed: int = 0,
                     repeats: int = 1, block: int | None = None) -> dict:
    """Every fidelity figure of ``syn`` against ``real`` (both (n, length, channels) arrays).

    ``repeats`` > 1 repeats the discriminative score with seeds ``seed .. seed+repeats-1`` and adds
    their mean and spread; ``disc_gbm`` itself is always the single run at ``seed``. ``block`` (from
    :func:`summary_block`): series too long to classify whole are summarised by block means and
    standard deviations for the discriminative score and coverage. Correlations between steps use
    the first MAX_CORR_STEPS steps.
    """
    from scipy.stats import wasserstein_distance

    out: dict = {}
    m_r, q_r = step_stats(real)
    m_s, q_s = step_stats(syn)
    out["mean_err"] = float(np.abs(m_s - m_r).mean())
    per_q = np.abs(q_s - q_r).mean(axis=(1, 2))
    out["pct_err"] = float(per_q.mean())
    out["pct_err_by_quantile"] = {f"p{q}": float(v) for q, v in zip(QUANTILES, per_q)}

    w = [float(wasserstein_distance(real[:, :, c].ravel(), syn[:, :, c].ravel())) for c in range(real.shape[2])]
    out["wasserstein"] = float(np.mean(w))
    out["wasserstein_by_channel"] = w

    acf_r, acf_s = acf(real, lags), acf(syn, lags)
    curve_r, curve_s = np.nanmean(acf_r, axis=0), np.nanmean(acf_s, axis=0)   # (lags, channels)
    out["acf_err"] = _nanmean(np.abs(curve_s - curve_r))
    out["acf_curves"] = {"lags": [int(k) for k in lags], "real": curve_r.T.tolist(), "synthetic": curve_s.T.tolist()}
    at_r, at_s = acf(real, [cross_lag])[:, 0], acf(syn, [cross_lag])[:, 0]
    out["acf_at_cross_lag"] = {"lag": int(cross_lag),
                               "real_median": [float(v) for v in np.nanmedian(at_r, axis=0)],
                               "synthetic_median": [float(v) for v in np.nanmedian(at_s, axis=0)]}

    channels = range(real.shape[2])
    cc_r = [float(_corr_matrix(real[:, [0, cross_lag], c])[0, 1]) for c in channels]
    cc_s = [float(_corr_matrix(syn[:, [0, cross_lag], c])[0, 1]) for c in channels]
    out["cross_lag_corr"] = {"lag": int(cross_lag), "real": cc_r, "synthetic": cc_s,
                             "err": _nanmean(np.abs(np.subtract(cc_s, cc_r)))}
    k = min(real.shape[1], MAX_CORR_STEPS)
    out["step_corr_err"] = _nanmean([_corr_err(real[:, :k, c], syn[:, :k, c]) for c in channels])
    out["step_corr_steps"] = k
    if real.shape[2] > 1:   # correlation between channels over every step of every series
        out["channel_corr_err"] = _corr_err(real.reshape(-1, real.shape[2]), syn.reshape(-1, real.shape[2]))

    a, b = block_summary(real, block), block_summary(syn, block)
    runs = [discriminative_score(a, b, seed=seed + r) for r in range(repeats)]
    runs[0]["features"] = disc_features(block, real.shape[1])
    out.update({"disc_gbm": runs[0]["disc"], "disc_gbm_auc": runs[0]["auc"], "disc_gbm_acc": runs[0]["disc_acc"],
                "discriminative": runs[0]})
    if repeats > 1:
        d = [r["disc"] for r in runs]
        out["disc_gbm_repeats"] = {"mean": float(np.mean(d)), "std": float(np.std(d)), "values": d,
                                   "auc_mean": float(np.mean([r["auc"] for r in runs])),
                                   "disc_acc_mean": float(np.mean([r["disc_acc"] for r in runs]))}
    out["coverage"] = coverage(a, b, seed=seed)
    return out
