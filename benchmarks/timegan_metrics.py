"""The TimeGAN discriminative and predictive scores (Yoon et al. 2019), in torch, seeded, one thread.

These are the post-hoc GRU scores the TimeGAN and Diffusion-TS papers report, so the stocks24 /
energy24 rows can be set beside their published figures. Settings follow
``../shared/reference/baselines.md`` (which the peers' figures were measured with), not the issue's
"2-layer GRU": one GRU layer of ``max(dim // 2, 1)`` units, Adam (lr 1e-3), batches of 128 from each
set, an 80/20 split of each set, 3 repeats. As in TimeGAN, the inputs are expected in [0, 1] (the
TimeGAN protocol min-max scales every channel) and the predictor ends in a sigmoid.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

BATCH = 128
REPEATS = 3
DISC_ITERATIONS = 2000   # baselines.md
PRED_ITERATIONS = 5000   # TimeGAN's predictive_score_metrics


class _GRUHead(nn.Module):
    """One GRU layer and a linear head: on the last hidden state (``per_step=False``) or on every step."""

    def __init__(self, n_in: int, hidden: int, per_step: bool):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, h = self.gru(x)
        return self.head(out if self.per_step else h[-1]).squeeze(-1)


@contextlib.contextmanager
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(model: nn.Module, iterations: int, batch_fn, loss_fn) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(iterations):
        x, y = batch_fn()
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def _summary(name: str, runs: list[float]) -> dict:
    return {name: float(np.mean(runs)), f"{name}_sd": float(np.std(runs)), f"{name}_runs": runs}


def discriminative_score_gru(real: np.ndarray, synthetic: np.ndarray, *, iterations: int = DISC_ITERATIONS,
                             repeats: int = REPEATS, seed: int = 0) -> dict:
    """TimeGAN discriminative score: |accuracy - 0.5| of a GRU classifier, real vs synthetic windows.

    ``real`` and ``synthetic`` are (n, length, channels) arrays. Each repeat splits each set 80/20,
    trains for ``iterations`` steps on batches of 128 real + 128 synthetic training windows and
    scores the accuracy (threshold 0.5) on both test parts together. Returns ``disc_gru`` (mean over
    repeats), ``disc_gru_sd`` and ``disc_gru_runs``.
    """
    a, b = (torch.as_tensor(np.asarray(x, np.float32)) for x in (real, synthetic))
    dim = a.shape[2]
    runs = []
    with _one_torch_thread():
        for r in range(repeats):
            torch.manual_seed(seed + r)
            rng = np.random.RandomState(seed + r)
            pa, pb = rng.permutation(len(a)), rng.permutation(len(b))
            ka, kb = int(0.8 * len(a)), int(0.8 * len(b))
            a_tr, a_te, b_tr, b_te = a[pa[:ka]], a[pa[ka:]], b[pb[:kb]], b[pb[kb:]]

            def batch():
                xa = a_tr[rng.choice(len(a_tr), min(BATCH, len(a_tr)), replace=False)]
                xb = b_tr[rng.choice(len(b_tr), min(BATCH, len(b_tr)), replace=False)]
                return torch.cat([xa, xb]), torch.cat([torch.ones(len(xa)), torch.zeros(len(xb))])

            model = _GRUHead(dim, max(dim // 2, 1), per_step=False)
            _train(model, iterations, batch, nn.BCEWithLogitsLoss())
            with torch.no_grad():
                correct = (model(a_te) > 0).sum().item() + (model(b_te) <= 0).sum().item()
            runs.append(abs(correct / (len(a_te) + len(b_te)) - 0.5))
    return _summary("disc_gru", runs)


def _pred_xy(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """TimeGAN's task: the first dim-1 channels up to t predict the last channel at t+1 (univariate:
    the series up to t predicts itself at t+1)."""
    inputs = x[:, :-1, :-1] if x.shape[2] > 1 else x[:, :-1]
    return inputs, x[:, 1:, -1]


def predictive_score_gru(train_on: np.ndarray, test_on: np.ndarray, *, iterations: int = PRED_ITERATIONS,
                         repeats: int = REPEATS, seed: int = 0) -> dict:
    """TimeGAN predictive score: next-step MAE on ``test_on`` of a GRU trained on ``train_on``.

    Train on synthetic and test on the real holdout for ``pred``; train on real train for the
    yardstick ``pred_real``. Returns ``pred`` (mean over repeats), ``pred_sd`` and ``pred_runs``.
    """
    x_tr, y_tr = _pred_xy(torch.as_tensor(np.asarray(train_on, np.float32)))
    x_te, y_te = _pred_xy(torch.as_tensor(np.asarray(test_on, np.float32)))
    dim = train_on.shape[2]
    runs = []
    with _one_torch_thread():
        for r in range(repeats):
            torch.manual_seed(seed + r)
            rng = np.random.RandomState(seed + r)

            def batch():
                idx = rng.choice(len(x_tr), min(BATCH, len(x_tr)), replace=False)
                return x_tr[idx], y_tr[idx]

            model = _GRUHead(x_tr.shape[2], max(dim // 2, 1), per_step=True)
            _train(model, iterations, batch, lambda out, y: (torch.sigmoid(out) - y).abs().mean())
            with torch.no_grad():
                runs.append(float((torch.sigmoid(model(x_te)) - y_te).abs().mean()))
    return _summary("pred", runs)


def timegan_scores(train: np.ndarray, synthetic: np.ndarray, holdout: np.ndarray, *, iterations: int | None = None,
                   repeats: int = REPEATS, seed: int = 0) -> dict:
    """``disc_gru`` (real train vs synthetic), ``pred`` (trained on synthetic) and ``pred_real`` (trained on
    real train), both scored on the holdout. ``iterations`` overrides both defaults (smoke mode)."""
    disc = discriminative_score_gru(train, synthetic, iterations=iterations or DISC_ITERATIONS, repeats=repeats, seed=seed)
    pred_kw = {"iterations": iterations or PRED_ITERATIONS, "repeats": repeats, "seed": seed}
    pred = predictive_score_gru(synthetic, holdout, **pred_kw)
    real = predictive_score_gru(train, holdout, **pred_kw)
    return {**disc, **pred, **{k.replace("pred", "pred_real", 1): v for k, v in real.items()}}
