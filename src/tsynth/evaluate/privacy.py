"""Privacy: do the synthetic series reveal the training series?

Distances are l2 on flattened windows, in the data's units. The holdout (real series the generator
never saw) is the yardstick: a private generator's series are as far from train as fresh real data.
"""

from __future__ import annotations

import numpy as np

from .fidelity import nearest, row_groups, subsample

NEEDS_HOLDOUT = "needs a holdout (real series the generator never saw)"
NEAR_COPY_PERCENTILE = 1.0


def _share_closer(d_train: np.ndarray, d_holdout: np.ndarray, n_train: int, n_holdout: int) -> tuple[float, float, float]:
    """Share of synthetic series closer to train than to holdout (ties count half), raw and size-adjusted.

    For a generator whose series are fresh draws of the real distribution, the closest record among
    train + holdout is equally likely to be any of them, so the raw share is n_train / (n_train +
    n_holdout). The adjusted share rescales the odds by that ratio: 0.5 is ideal whatever the sizes,
    1 means every series sits nearer train than fresh data would (copies), 0 the opposite.
    """
    raw = float(np.mean(d_train < d_holdout) + 0.5 * np.mean(d_train == d_holdout))
    expected = n_train / (n_train + n_holdout)
    adjusted = raw * n_holdout / (raw * n_holdout + (1.0 - raw) * n_train)
    return adjusted, raw, expected


def _dcr(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each row of ``x`` to its closest train row, and which rows are exact copies of one."""
    d, _ = nearest(x, train)
    groups = row_groups(np.concatenate([train, x]))
    exact = np.isin(groups[len(train):], groups[: len(train)])
    d[exact] = 0.0
    return d, exact


def _summary(d: np.ndarray) -> dict:
    return {"median": float(np.median(d)), "p1": float(np.percentile(d, 1)), "p5": float(np.percentile(d, 5)),
            "mean": float(d.mean())}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]))


def privacy_metrics(train: np.ndarray, syn: np.ndarray, holdout: np.ndarray | None, seed: int = 0) -> tuple[dict, dict]:
    """Distance to closest record, copies and membership inference; returns (figures, not_computed).

    * ``dcr_ratio``: median distance of synthetic series to their closest train series / the same
      median for holdout series (1 ideal, near 0 = copies);
    * ``share_closer_to_train``: size-adjusted share of synthetic series closer to train than to the
      holdout (0.5 ideal, see :func:`_share_closer`);
    * ``exact_copies``: synthetic series identical to a train series; ``near_copies``: synthetic
      series at most the holdout's 1st-percentile distance from train (without a holdout: the 1st
      percentile of train series' distances to other train series);
    * ``mia_auc``: a distance attack on membership; members (train, subsampled to the holdout's
      size) and non-members (holdout) are scored by minus their distance to the closest synthetic
      series; the AUC of members vs non-members (0.5 ideal, 1 = membership fully revealed).
    """
    rng = np.random.RandomState(seed)
    not_computed: dict = {}
    d_syn, exact = _dcr(syn, train)
    out: dict = {"dcr_synthetic": _summary(d_syn), "exact_copies": int(exact.sum()), "exact_copies_share": float(exact.mean())}
    if holdout is not None:
        d_ho, ho_exact = _dcr(holdout, train)
        out["dcr_holdout"] = _summary(d_ho)
        med = out["dcr_holdout"]["median"]
        if med > 0:
            out["dcr_ratio"] = out["dcr_synthetic"]["median"] / med
        else:
            not_computed["privacy.dcr_ratio"] = "the holdout's median distance to train is 0"
        adjusted, raw, expected = _share_closer(d_syn, nearest(syn, holdout)[0], len(train), len(holdout))
        out.update({"share_closer_to_train": adjusted, "share_closer_to_train_raw": raw,
                    "share_closer_expected_raw": expected})
        threshold = float(np.percentile(d_ho, NEAR_COPY_PERCENTILE))
        out["near_copy_threshold_source"] = "1st percentile of the holdout's distances to train"
        out["holdout_near_copies_share"] = float(np.mean(d_ho <= threshold))
        out["holdout_exact_copies"], out["holdout_exact_copies_share"] = int(ho_exact.sum()), float(ho_exact.mean())
        members = train[subsample(len(train), len(holdout), rng)]
        out["mia_auc"] = _auc(-nearest(members, syn)[0], -nearest(holdout, syn)[0])
        out["mia_members"], out["mia_nonmembers"] = len(members), len(holdout)
    else:
        for key in ("dcr_ratio", "share_closer_to_train", "mia_auc"):
            not_computed[f"privacy.{key}"] = NEEDS_HOLDOUT
        q = np.zeros(len(train), dtype=bool)
        q[subsample(len(train), min(2000, len(train) // 2), rng)] = True
        threshold = float(np.percentile(nearest(train[q], train[~q])[0], NEAR_COPY_PERCENTILE))
        out["near_copy_threshold_source"] = ("1st percentile of train series' distances to other train series "
                                             "(no holdout given)")
    near = d_syn <= threshold
    out.update({"near_copy_threshold": threshold, "near_copies": int(near.sum()), "near_copies_share": float(near.mean())})
    return out, not_computed
