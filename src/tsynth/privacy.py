"""Differential privacy for the local backend: DP-SGD with opacus, at the level of the item.

The guarantee, in words: for any one item (a meter, a customer) and everything it contributed, the
trained model -- and so every series sampled from it -- is (epsilon, delta)-indistinguishable from a
model trained without that item. Mechanics: each step draws items by Poisson sampling (rate q), takes
one window of each drawn item, clips each item's gradient to ``max_grad_norm`` and adds Gaussian noise
calibrated by opacus' accountant (PRV by default) for the requested epsilon over all planned steps.
Bounding every item to one window per step is what makes the per-example analysis an item-level one.

Data-dependent preprocessing is kept public: under DP the codec uses user-given value bounds
(``value_range``, default [-5, 5] in units of the data after the optional per-series z-score), uniform
bins and no data-fitted scaler; values outside the bounds are clipped and counted. Conditions are off by
default and item-id conditioning is refused (an id token per item would let the model memorise it).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError

log = logging.getLogger("tsynth")


@dataclass
class DPSettings:
    """What the user asks for: a target epsilon (and delta, clipping norm)."""

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"

    def check(self, n_items: int) -> float:
        """Validate against the number of items; returns the delta to use."""
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"dp epsilon must be a positive number, got {self.epsilon}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"dp max_grad_norm must be positive, got {self.max_grad_norm}")
        if n_items < 50:
            raise ConfigError(f"{n_items} items are too few for a meaningful DP guarantee (need at least 50)")
        delta = self.delta if self.delta is not None else min(1e-5, 0.1 / n_items)
        if not 0 < delta < 1 / n_items:
            raise ConfigError(f"dp delta must lie in (0, 1/number of items = {1 / n_items:.2e}), got {delta}")
        return delta


class DPEngine:
    """DP-SGD plumbing used by :func:`tsynth.train.train_lm` (attach, batches, step, detach)."""

    def __init__(self, settings: DPSettings, item_index: np.ndarray) -> None:
        self.settings = settings
        self.item_index = np.asarray(item_index)
        self.items = np.unique(self.item_index)
        self.rows_of = [np.flatnonzero(self.item_index == it) for it in self.items]  # windows of each item
        self.delta = settings.check(len(self.items))
        self.noise_multiplier = None
        self.sample_rate = None
        self.accountant = None
        self.steps = 0

    def attach(self, model, optimizer, batch: int, epochs: int, steps_per_epoch: int):
        """Wrap model and optimizer; the noise is calibrated for ``epochs * steps_per_epoch`` steps."""
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        n_items = len(self.items)
        self.sample_rate = min(1.0, batch / n_items)
        total_steps = epochs * steps_per_epoch
        self.noise_multiplier = get_noise_multiplier(target_epsilon=self.settings.epsilon, target_delta=self.delta,
                                                     sample_rate=self.sample_rate, steps=total_steps,
                                                     accountant=self.settings.accountant)
        self.accountant = create_accountant(self.settings.accountant)
        model.config._attn_implementation = "eager"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = GradSampleModule(model, loss_reduction="mean", strict=False)
        dp_opt = DPOptimizer(optimizer, noise_multiplier=self.noise_multiplier, max_grad_norm=self.settings.max_grad_norm,
                             expected_batch_size=max(1, round(self.sample_rate * n_items)), loss_reduction="mean")
        log.info("DP-SGD: noise multiplier %.3f, sample rate %.4f, %d steps, target epsilon %.2f at delta %.1e",
                 self.noise_multiplier, self.sample_rate, total_steps, self.settings.epsilon, self.delta)
        return wrapped, dp_opt

    def batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        """One epoch of Poisson-sampled batches: each item joins with probability q, with one random window."""
        steps = max(1, round(1 / self.sample_rate))
        out = []
        for _ in range(steps):
            take = torch.rand(len(self.items), generator=gen) < self.sample_rate
            rows = []
            for k in np.flatnonzero(take.numpy()):
                cand = self.rows_of[k]
                rows.append(int(cand[torch.randint(len(cand), (1,), generator=gen)]))
            out.append(torch.as_tensor(rows, dtype=torch.long))
        return out

    def step(self, model, optimizer, tokens: torch.Tensor, loss_fn) -> torch.Tensor:
        """One DP-SGD step on a Poisson batch (an empty batch is skipped: conservative for the accountant)."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        if len(tokens) == 0:
            optimizer.zero_grad(set_to_none=True)
            return torch.tensor(float("nan"))
        loss = loss_fn(model, tokens, reduction="none").mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def detach(self, model):
        """The plain model inside the opacus wrapper."""
        return model._module if hasattr(model, "_module") else model

    def close(self, model) -> None:
        """Remove opacus' hooks and per-sample gradients once training is over."""
        if hasattr(model, "remove_hooks"):
            model.remove_hooks()
        for p in self.detach(model).parameters():
            p.grad_sample = None

    def epsilon(self) -> float:
        """The accountant's epsilon for the steps taken, at ``self.delta``."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.steps else 0.0

    def report(self) -> dict:
        """Privacy accounting for ``tsynth.json`` and the report."""
        return {"epsilon": self.epsilon(), "target_epsilon": self.settings.epsilon, "delta": self.delta,
                "max_grad_norm": self.settings.max_grad_norm, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps, "accountant": self.settings.accountant,
                "unit": "item", "items": int(len(self.items)),
                "guarantee": (f"({self.epsilon():.2f}, {self.delta:.1e})-differential privacy for each item: "
                              "any one item's data changes the probability of any trained model, and so of any "
                              f"sampled series, by at most a factor e^{self.epsilon():.2f} (plus {self.delta:.1e})")}


def dp_gaussian(values: np.ndarray, epsilon: float, delta: float, clip: float | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """A differentially private multivariate Gaussian: the DP baseline tsynth's DP models must beat.

    Each flattened series is clipped to L2 norm ``clip`` (default 1.5 * sqrt(dimension), a public choice
    for standardised data); its sum, its outer-product sum and the count are released with the Gaussian
    mechanism (add/remove adjacency, one item = one row), the three releases composed by opacus' RDP
    accountant to the target (epsilon, delta). Returns the noisy mean, a positive semi-definite noisy
    covariance and the accounting.
    """
    from opacus.accountants import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"epsilon must be a positive number, got {epsilon}")
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    n, d = x.shape
    clip = float(clip if clip is not None else 1.5 * math.sqrt(d))
    norms = np.linalg.norm(x, axis=1)
    clipped = int((norms > clip).sum())
    x = x * np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]
    sigma = get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=1.0, steps=3, accountant="rdp")
    rng = np.random.default_rng(seed)
    count = max(n + rng.normal(0, sigma), 2.0)
    mean = (x.sum(0) + rng.normal(0, sigma * clip, d)) / count
    noise = rng.normal(0, sigma * clip ** 2, (d, d))
    second = (x.T @ x + np.triu(noise) + np.triu(noise, 1).T) / count
    cov = second - np.outer(mean, mean)
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    cov = (v * np.maximum(w, 1e-6)) @ v.T
    acct = RDPAccountant()
    acct.history = [(sigma, 1.0, 3)]
    return mean, cov, {"epsilon": float(acct.get_epsilon(delta)), "delta": delta, "noise_multiplier": sigma,
                       "clip": clip, "clipped_rows": clipped, "unit": "item"}
