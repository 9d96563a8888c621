"""Distances between series: the closest-record search the evaluation and the memorization guard share.

It sits beside ``data`` (below the engine and the evaluation) so that both can use it without one
importing the other.
"""

from __future__ import annotations

import numpy as np


def flatten(x: np.ndarray) -> np.ndarray:
    """(n, length, channels) or (n, features) -> (n, features) float64, rows in order."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return x.reshape(len(x), -1)


def pairwise_sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared l2 distances between the rows of ``a`` and ``b`` (clipped at 0)."""
    d = (a ** 2).sum(axis=1)[:, None] + (b ** 2).sum(axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Distance (l2 on flattened windows) from each query row to its closest reference row, and that
    row's position; computed in chunks so 10,000 x 10,000 windows stay small in memory.

    Both sides are centred on the references' mean first, which keeps the rounding error of the
    expanded form small; the winning distance is then recomputed exactly.
    """
    q, r = flatten(queries), flatten(refs)
    centre = r.mean(axis=0)
    q, r = q - centre, r - centre
    idx = np.empty(len(q), dtype=np.int64)
    for s in range(0, len(q), chunk):
        idx[s: s + chunk] = pairwise_sq_dist(q[s: s + chunk], r).argmin(axis=1)
    return np.sqrt(((q - r[idx]) ** 2).sum(axis=1)), idx
