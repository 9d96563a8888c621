"""Differential privacy for the local backend: DP-SGD with opacus, at the level of the item.

The guarantee, in words: for any one item (a meter, a customer) and everything it contributed, the
trained model -- and so every series sampled from it -- is (epsilon, delta)-indistinguishable from a
model trained without that item. Mechanics: each step draws items by Poisson sampling (rate q), takes
one window of each drawn item, clips each item's gradient to ``max_grad_norm`` and adds Gaussian noise
calibrated by opacus' accountant (PRV by default) for the requested epsilon over all planned steps.
Bounding every item to one window per step is what makes the per-example analysis an item-level one.

Data-parallel (``--processes N`` / ``accelerate launch``): the processes share the secret seed (rank 0's), so
they draw the same Poisson sample of items; each trains on the drawn items of its share (item k belongs to
process k mod N), clips its per-item gradients and sums them; the sums are added up across the processes and
only process 0 adds the noise (opacus' ``DistributedDPOptimizer`` around ``DPDDP``). The update is the one a
single process would make from the same sample, so the noise multiplier, the sampling rate over the global
batch and the accounting are those of a one-process fit. A process none of whose items was drawn in a step
runs one row with weight zero (its clipped gradient is exactly zero) so that it still takes part in the sum;
a step in which no item at all was drawn is skipped by every process.

Data-dependent preprocessing is kept public or made private: under DP the codec uses user-given value bounds
(``value_range``, default [-5, 5] in units of the data after the optional per-series z-score) and no data-fitted
scaler; the bins are the public prior's (or uniform without a prior); values outside the bounds are clipped and
counted. The per-step mean profile (the step model's: the mean of each position of the day or week) is released
with the Gaussian mechanism (:func:`dp_profile`) and composed with DP-SGD by the same accountant, as is whether the
series are standardised each on its own (:meth:`DPEngine.release_standardised`: noisy counts of the items by kind).
A token model whose draws stray from the released profile draws from its exponential tilt toward it
(:func:`fit_tilt`, :func:`tilt_keep`): post-processing of the model and the release, at no cost in budget.
Conditions are off by default and item-id conditioning is refused (an id token per item would let the model
memorise it). Noise and sampling use a secret seed from the OS, never the recorded training seed.

Also here: the DP Gaussian baseline (:func:`dp_gaussian`), the memorization guard for non-DP models
(:func:`memorization_guard`) and the likelihood membership-inference audit (:func:`likelihood_mia`).
"""

from __future__ import annotations

import logging
import math
import secrets
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from .data import SeriesSet

log = logging.getLogger("tsynth")

# Share of epsilon spent on releasing the per-step mean profile (the rest goes to DP-SGD): DP-SGD alone leaves a
# profile shared by all items (a daily load curve) unlearnt (docs/privacy.md)
PROFILE_SHARE = 0.25
# Share of epsilon spent on releasing whether the series are standardised each on its own (a noisy count of items
# per kind), so that samples of a z-normalised archive are standardised alike, as they are without DP
STANDARDISED_SHARE, STANDARDISED_MARGIN = 0.02, 4.0
# The calibrated DP-SGD noise spends the target epsilon or up to this much less (as opacus' get_noise_multiplier)
EPSILON_TOLERANCE = 0.01
# A DP token model's draws are tilted toward the released per-step mean (fit_tilt): series drawn to fit the tilt,
# its ridge (in units of the codec's scale) and the quantile of the fit's draws at which the weights are capped
TILT_DRAWS, TILT_RIDGE, TILT_CAP_QUANTILE = 2000, 0.01, 0.99
TILT_MIN_GAP = 2.0  # the draws' mean gap to the release, in multiples of the release's error, that a tilt needs
MIA_MAX_BEYOND = 0.25  # the likelihood audit leaves out holdout series with more values beyond the training range


@dataclass
class DPSettings:
    """What the user asks for: a target epsilon (and delta, clipping norm)."""

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "prv"
    profile_share: float = PROFILE_SHARE

    def check(self, n_items: int) -> float:
        """Validate against the number of items; returns the delta to use."""
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"dp epsilon must be a positive number, got {self.epsilon}")
        if not 0 <= self.profile_share < 1:
            raise ConfigError(f"dp profile_share must lie in [0, 1), got {self.profile_share}")
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

    def __init__(self, settings: DPSettings, item_index: np.ndarray, cpu: bool = True) -> None:
        from .distributed import broadcast_seed, process_rank, world_size

        self.settings = settings
        self.item_index = np.asarray(item_index)
        self.items = np.unique(self.item_index)
        self.rows_of = [np.flatnonzero(self.item_index == it) for it in self.items]  # windows of each item
        self.delta = settings.check(len(self.items))
        self.noise_multiplier: Any = None   # a float once attach() has run
        self.sample_rate: Any = None
        self.epoch_steps = 0  # steps of one epoch of batches(), set by attach()
        self.accountant: Any = None
        self.steps = 0
        self.releases: list[dict] = []  # Gaussian releases before training (the profile), composed with DP-SGD
        # noise and item sampling must not be predictable from the artifact (tsynth.json records the training
        # seed): they draw from a seed taken from the OS, so DP runs are not bit-reproducible; data-parallel
        # processes all take process 0's
        self.rank, self.world = process_rank(), world_size()
        self.secret_seed = broadcast_seed(secrets.randbits(63), cpu)
        self.rng = torch.Generator().manual_seed(self.secret_seed)

    def release_profile(self, scaled: np.ndarray, item_index: np.ndarray | None = None,
                        what: str = "per-step mean profile") -> np.ndarray:
        """Release the per-step mean of the items' series (codec units, shape (steps, channels)) with the
        Gaussian mechanism in a Fourier basis, denoised, for ``profile_share`` of epsilon; the release is
        composed with DP-SGD by the accountant. ``scaled`` (rows, steps, channels); ``item_index``: each row's
        item (default: the engine's, one per training row); ``what`` names the release in the accounting."""
        from opacus.accountants.utils import get_noise_multiplier

        share = self.settings.profile_share
        sigma = get_noise_multiplier(target_epsilon=share * self.settings.epsilon, target_delta=self.delta,
                                     sample_rate=1.0, steps=1, accountant=self.settings.accountant)
        profile, info = dp_profile(scaled, self.item_index if item_index is None else item_index, sigma,
                                   np.random.default_rng(self.secret_seed + 1))
        self.releases.append({"what": what, "noise_multiplier": sigma, **info})
        return profile

    def release_standardised(self, data: SeriesSet) -> int | None:
        """Whether the series of ``data`` are standardised each on its own, and with which ddof, for
        ``STANDARDISED_SHARE`` of epsilon: each item counts once, as standardised with ddof 1, with ddof 0 (every
        series of the item alike) or neither; the three counts are released with the Gaussian mechanism (adding or
        removing an item moves one count by 1). A ddof is taken only where its noisy count leads both others by
        ``STANDARDISED_MARGIN`` standard deviations of a difference of two noisy counts, so raw series are all but
        never standardised by mistake (small data or a small epsilon leave standardised series as drawn).
        Returns 1, 0 or None; the release is composed with DP-SGD by the accountant."""
        import pandas as pd
        from opacus.accountants.utils import get_noise_multiplier

        from .data import standardised_kind

        sigma = get_noise_multiplier(target_epsilon=STANDARDISED_SHARE * self.settings.epsilon,
                                     target_delta=self.delta, sample_rate=1.0, steps=1,
                                     accountant=self.settings.accountant)
        kind = pd.Series(standardised_kind(data)).groupby(pd.factorize(data.item_id)[0])
        per_item = np.where(kind.nunique() == 1, kind.first(), -1)  # an item of mixed kinds counts as neither
        counts = np.array([np.sum(per_item == k) for k in (1, 0, -1)], dtype=float)
        # its own offset of the secret seed: the profile release takes +1 and DP-SGD's noise +2
        noisy = counts + np.random.default_rng(self.secret_seed + 3).normal(0.0, sigma, 3)
        lead = int(np.argmax(noisy[:2]))
        ahead = noisy[lead] - max(noisy[1 - lead], noisy[2]) > STANDARDISED_MARGIN * sigma * math.sqrt(2)
        ddof = (1, 0)[lead] if ahead else None
        self.releases.append({"what": "standardised series (items: ddof 1, ddof 0, neither)", "noise_multiplier": sigma,
                              "noisy_counts": [round(float(c), 1) for c in noisy], "standardised_ddof": ddof})
        return ddof

    def steps_per_epoch(self, batch: int) -> int:
        """The DP-SGD steps of one epoch of :meth:`batches` at an expected ``batch`` items a step: as many as it
        takes for each item to be drawn once on average (items / batch, rounded, at least 1). The number of an
        item's windows does not count: a step draws items, and each drawn item gives one window."""
        return max(1, round(len(self.items) / min(batch, len(self.items))))

    def attach(self, model, optimizer, batch: int, epochs: int, device: torch.device | str = "cpu"):
        """Wrap model and optimizer; the noise is calibrated for the ``epochs * steps_per_epoch(batch)`` steps that
        :meth:`batches` will take and drawn on ``device``, where the model trains."""
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
        from opacus.optimizers import DistributedDPOptimizer, DPOptimizer

        n_items = len(self.items)
        self.sample_rate = min(1.0, batch / n_items)
        self.epoch_steps = self.steps_per_epoch(batch)
        total_steps = epochs * self.epoch_steps
        pre = [(r["noise_multiplier"], 1.0, 1) for r in self.releases]
        if pre:
            self.noise_multiplier = _calibrate(self.settings, self.delta, pre, self.sample_rate, total_steps)
        else:
            self.noise_multiplier = get_noise_multiplier(target_epsilon=self.settings.epsilon, target_delta=self.delta,
                                                         sample_rate=self.sample_rate, steps=total_steps,
                                                         accountant=self.settings.accountant)
        self.accountant = create_accountant(self.settings.accountant)
        self.accountant.history = list(pre)
        model.config._attn_implementation = "eager"
        model = model.to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wrapped = GradSampleModule(DPDDP(model) if self.world > 1 else model, loss_reduction="mean", strict=False)
        # the clipped sums are divided by the expected batch; each process' share of it, as the processes' updates
        # are averaged after the sums are added up
        optimizer_class = DistributedDPOptimizer if self.world > 1 else DPOptimizer
        dp_opt = optimizer_class(optimizer, noise_multiplier=self.noise_multiplier,
                                 max_grad_norm=self.settings.max_grad_norm,
                                 expected_batch_size=max(1, round(self.sample_rate * n_items)) / self.world,
                                 loss_reduction="mean",
                                 generator=torch.Generator(device=device).manual_seed(self.secret_seed + 2))
        log.info("DP-SGD: noise multiplier %.3f, sample rate %.4f, %d steps, target epsilon %.2f at delta %.1e%s",
                 self.noise_multiplier, self.sample_rate, total_steps, self.settings.epsilon, self.delta,
                 f", {self.world} processes" if self.world > 1 else "")
        return wrapped, dp_opt

    def batches(self) -> list[tuple[torch.Tensor, bool]]:
        """One epoch of Poisson-sampled batches: each item joins with probability q, with one random window.
        Each is ``(rows, live)``: this process' rows of the sample, or, where none of its items was drawn but
        another process' were, one placeholder row with ``live`` False (see the module docstring). A step
        that drew no item at all gives no rows."""
        gen = self.rng
        out = []
        for _ in range(self.epoch_steps):
            take = torch.rand(len(self.items), generator=gen) < self.sample_rate
            rows, drawn = [], 0
            for k in np.flatnonzero(take.numpy()):
                cand = self.rows_of[k]
                row = int(cand[torch.randint(len(cand), (1,), generator=gen)])  # drawn for every item, everywhere
                drawn += 1
                if k % self.world == self.rank:
                    rows.append(row)
            if rows or not drawn:
                out.append((torch.as_tensor(rows, dtype=torch.long), True))
            else:
                out.append((torch.as_tensor(self.rows_of[0][:1], dtype=torch.long), False))
        return out

    def step(self, model, optimizer, tokens: torch.Tensor, loss_fn, live: bool = True) -> torch.Tensor | None:
        """One DP-SGD step on a Poisson batch; returns its mean loss (None for an empty batch or a placeholder
        row). A batch empty everywhere is skipped (conservative for the accountant); a placeholder row (``live``
        False) enters with weight zero."""
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps += 1
        if len(tokens) == 0:
            optimizer.zero_grad(set_to_none=True)
            return None
        loss = loss_fn(model, tokens, reduction="none").mean()
        with warnings.catch_warnings():  # opacus' hooks on modules whose inputs need no gradient: expected here
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            (loss if live else loss * 0.0).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach() if live else None

    def detach(self, model):
        """The plain model inside the opacus wrappers (``GradSampleModule``, and ``DPDDP`` across processes)."""
        from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP

        model = model._module if hasattr(model, "_module") else model
        return model.module if isinstance(model, DPDDP) else model

    def close(self, model) -> None:
        """Remove opacus' hooks and per-sample gradients once training is over."""
        if hasattr(model, "remove_hooks"):
            model.remove_hooks()
        for p in self.detach(model).parameters():
            p.grad_sample = None

    def epsilon(self) -> float:
        """The accountant's epsilon for the releases and the steps taken, at ``self.delta``."""
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.accountant and self.accountant.history else 0.0

    def report(self) -> dict:
        """Privacy accounting for ``tsynth.json`` and the report."""
        spent = self.epsilon()
        return {"epsilon": spent, "target_epsilon": self.settings.epsilon, "delta": self.delta,
                "max_grad_norm": self.settings.max_grad_norm, "noise_multiplier": self.noise_multiplier,
                "sample_rate": self.sample_rate, "steps": self.steps, "accountant": self.settings.accountant,
                "unit": "item", "items": int(len(self.items)), "releases": self.releases,
                "guarantee": (f"({spent:.2f}, {self.delta:.1e})-differential privacy for each item: "
                              "any one item's data changes the probability of any trained model, and so of any "
                              f"sampled series, by at most a factor e^{spent:.2f} (plus {self.delta:.1e})")}


def _calibrate(settings: DPSettings, delta: float, pre: list[tuple], sample_rate: float, steps: int) -> float:
    """The DP-SGD noise multiplier whose composition with the ``pre`` releases spends the target epsilon, or
    less by at most ``EPSILON_TOLERANCE`` (opacus' ``get_noise_multiplier`` tolerance): a bisection that stops
    there, as each accountant call costs about half a second."""
    from opacus.accountants import create_accountant

    def eps(sigma: float) -> float:
        acct = create_accountant(settings.accountant)
        acct.history = [*pre, (sigma, sample_rate, steps)]
        return float(acct.get_epsilon(delta=delta))

    lo, hi = 0.3, 2.0
    spent = eps(hi)
    while spent > settings.epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"epsilon {settings.epsilon} is too small for {steps} DP-SGD steps after the profile release")
        spent = eps(hi)
    while settings.epsilon - spent > EPSILON_TOLERANCE and hi - lo > 1e-6 * hi:
        mid = (lo + hi) / 2
        e = eps(mid)
        if e > settings.epsilon:
            lo = mid
        else:
            hi, spent = mid, e
    return hi


def dp_profile(scaled: np.ndarray, item_index: np.ndarray, sigma: float,
               rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The Gaussian-mechanism release of the mean series, item level, in a Fourier basis, denoised.

    Each item's windows are averaged into one series (steps x channels) and written in the orthonormal basis of
    every Fourier frequency of the window (:func:`fourier_basis`); each item's coefficients are clipped to L2 norm
    ``clip`` = sqrt(steps x channels) (one unit per value), summed with N(0, (sigma * clip)^2) noise per
    coefficient and divided by the number of items (taken as public, as DP-SGD's sampling rate does). Then,
    post-processing only, each coefficient c is shrunk by the non-negative garrote, c * max(0, 1 - s^2 / c^2) with s
    the noise's standard deviation: the strong harmonics of a daily curve stay nearly whole, a coefficient at the
    noise's size goes to zero. A low-pass basis would cut the sharp features of a mean day (a morning ramp), and
    keeping every noisy coefficient as released would leave their noise on every step (docs/privacy.md).
    """
    x = np.nan_to_num(np.asarray(scaled, dtype=np.float64))
    n_steps, n_ch = x.shape[1], x.shape[2]
    items, index = np.unique(item_index, return_inverse=True)
    per_item = np.zeros((len(items), n_steps, n_ch))
    np.add.at(per_item, index, x)
    per_item /= np.bincount(index)[:, None, None]  # each item's mean window, (items, steps, channels)
    basis = fourier_basis(n_steps)
    coef = np.einsum("tk,itc->ikc", basis, per_item).reshape(len(items), -1)
    clip = float(np.sqrt(n_steps * n_ch))
    norms = np.linalg.norm(coef, axis=1)
    coef = coef * np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]
    noisy = (coef.sum(0) + rng.normal(0, sigma * clip, coef.shape[1])) / len(items)
    noise_sd = sigma * clip / len(items)
    shrunk = noisy * np.maximum(0.0, 1.0 - noise_sd ** 2 / np.maximum(noisy ** 2, 1e-300))
    profile = basis @ shrunk.reshape(basis.shape[1], n_ch)
    return profile, {"clip": clip, "basis_size": int(basis.shape[1]), "kept": int(np.count_nonzero(shrunk)),
                     "noise_sd": noise_sd, "clipped_items": int((norms > clip).sum())}


def fit_tilt(draws: np.ndarray, target: np.ndarray, release: dict) -> dict:
    """The exponential tilt that moves a DP model's draws onto the released per-step mean: weights
    exp(lambda . x) over the flattened draws x (``draws``: (n, steps, channels), values over the codec's scale)
    whose weighted mean is ``target`` (steps, channels), with a ridge of ``TILT_RIDGE`` on lambda (where no weights
    reach the target, e.g. a standardised series' mean, it comes as near as the ridge lets it). Drawing from the
    model and keeping a series with probability exp(min(0, lambda . x - cap)) (:func:`tilt_keep`) draws from the
    tilted distribution, its weights capped at the ``TILT_CAP_QUANTILE`` quantile of the fit's draws. Everything
    here post-processes the model and the release, so it costs no budget. The tilt is taken only where the draws'
    mean gap to the target passes ``TILT_MIN_GAP`` times the release's own error (:func:`release_error`, from
    ``release``, :func:`dp_profile`'s figures): nearer than that, moving the draws onto the release trades the
    model's error for the release's noise. Returns the tilt as ``tsynth.json`` keeps it: lambda (None where it is
    not taken), the cap, the share of draws kept, and the draws' mean gap to the target before and after."""
    from scipy.optimize import minimize

    x = np.nan_to_num(np.asarray(draws, dtype=np.float64)).reshape(len(draws), -1)
    goal = np.asarray(target, dtype=np.float64).ravel()
    gap, noise = float(np.abs(x.mean(0) - goal).mean()), release_error(release)
    if gap <= TILT_MIN_GAP * noise:
        return {"lambda": None, "draws": len(x), "gap_before": gap, "release_error": noise}

    def dual(lam: np.ndarray) -> tuple[float, np.ndarray]:
        a = x @ lam
        w = np.exp(a - a.max())
        total = w.sum()
        value = a.max() + math.log(total / len(x)) - lam @ goal + 0.5 * TILT_RIDGE * lam @ lam
        return value, (w @ x) / total - goal + TILT_RIDGE * lam

    lam = minimize(dual, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
    cap = float(np.quantile(x @ lam, TILT_CAP_QUANTILE))
    keep = _keep_probability(x, lam, cap)
    return {"lambda": lam.reshape(np.shape(target)).tolist(), "cap": cap, "kept": float(keep.mean()),
            "draws": len(x), "gap_before": gap, "release_error": noise,
            "gap_after": float(np.abs((keep @ x) / keep.sum() - goal).mean())}


def release_error(release: dict) -> float:
    """The typical error a step of a :func:`dp_profile` release carries from its noise: the noise's standard
    deviation per coefficient, over the share of the basis the garrote kept (the basis is orthonormal)."""
    return float(release["noise_sd"] * math.sqrt(release["kept"] / release["basis_size"]))


def tilt_keep(draws: np.ndarray, tilt: dict, rng: np.random.Generator) -> np.ndarray:
    """Which of ``draws`` (n, steps, channels; values over the codec's scale, steps at most the tilt's) to keep
    under ``tilt`` (:func:`fit_tilt`): each with probability exp(min(0, lambda . x - cap))."""
    x = np.nan_to_num(np.asarray(draws, dtype=np.float64))
    lam = np.asarray(tilt["lambda"])[: x.shape[1]]
    return rng.random(len(x)) < _keep_probability(x.reshape(len(x), -1), lam.ravel(), tilt["cap"])


def _keep_probability(x: np.ndarray, lam: np.ndarray, cap: float) -> np.ndarray:
    """Each flattened draw's (rows of ``x``) probability of being kept under a tilt: exp(min(0, lambda . x - cap))."""
    return np.exp(np.minimum(0.0, x @ lam - cap))


def fourier_basis(n_steps: int) -> np.ndarray:
    """The orthonormal real Fourier basis of ``n_steps`` steps, (steps, steps): the constant, then a cosine and a
    sine for each frequency below the Nyquist one, and that frequency's cosine where ``n_steps`` is even."""
    t = np.arange(n_steps) / n_steps
    cols = [np.ones(n_steps)]
    for f in range(1, (n_steps + 1) // 2):
        cols += [np.cos(2 * np.pi * f * t), np.sin(2 * np.pi * f * t)]
    if n_steps % 2 == 0 and n_steps > 1:
        cols.append(np.cos(np.pi * np.arange(n_steps)))
    basis = np.stack(cols, axis=1)
    return basis / np.linalg.norm(basis, axis=0)


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


def memorization_guard(synthetic: "SeriesSet", train: "SeriesSet", holdout: "SeriesSet | None" = None,
                       percentile: float = 5.0) -> tuple["SeriesSet", dict]:
    """Drop synthetic series that sit closer to a training series than fresh real data usually does.

    The threshold is the ``percentile``-th percentile of the holdout's distances to their closest train
    series (without a holdout: of train series' distances to the other train series). A heuristic, not a
    guarantee: it removes near-copies of the training series, but what a model learnt from an item still
    shapes every series it draws; only differential privacy bounds that. Returns the kept series and the
    counts.
    """
    from .distance import flatten, nearest

    if synthetic.length != train.length or synthetic.channels != train.channels:
        raise ConfigError(f"guard: synthetic series ({synthetic.length} steps, {synthetic.channels}) do not match the "
                          f"training series ({train.length} steps, {train.channels})")
    if not 0 < percentile < 100:
        raise ConfigError(f"guard percentile must lie in (0, 100), got {percentile}")
    ref = flatten(train.values).astype(np.float64)
    if holdout is not None:
        d_ref, source = nearest(flatten(holdout.values).astype(np.float64), ref)[0], "holdout"
    else:
        if len(ref) < 3:
            raise ConfigError("guard: at least 3 training series are needed without a holdout")
        d = np.array([nearest(ref[i: i + 1], np.delete(ref, i, axis=0))[0][0] for i in range(len(ref))])
        d_ref, source = d, "train leave-one-out"
    threshold = float(np.percentile(d_ref, percentile))
    vals = flatten(synthetic.values).astype(np.float64)
    finite = np.isfinite(vals).all(axis=1)
    dist = np.full(len(vals), np.inf)
    if finite.any():
        dist[finite] = nearest(vals[finite], ref)[0]
    keep = dist > threshold
    report = {"threshold": threshold, "threshold_source": f"{percentile:g}th percentile of {source} distances to train",
              "checked": len(synthetic), "dropped": int((~keep).sum()), "kept": int(keep.sum()),
              "caveat": "a heuristic against near-copies, not a privacy guarantee"}
    if report["dropped"]:
        log.info("memorization guard: dropped %d of %d synthetic series closer than %.4g to a training series",
                 report["dropped"], len(synthetic), threshold)
    return synthetic.subset(np.flatnonzero(keep)), report


def likelihood_mia(synthesizer, members: "SeriesSet", nonmembers: "SeriesSet", seed: int = 0) -> dict:
    """Membership-inference audit with the model's own likelihood (local backend): each series is scored
    by minus its mean per-token loss under the model (averaged over ensemble members); the AUC of training
    series (members, subsampled to the non-members' count) against unseen ones. 0.5: the model's
    likelihood does not reveal membership; 1: it does for every series.

    Non-members with more than ``MIA_MAX_BEYOND`` of their values beyond the members' range in their channel
    are left out (counted in ``left_out``): such values fall in the codec's edge bins, wide and never reached by
    training data in that channel, so their loss measures the bin, not the series (a blocked holdout of rising
    prices scored as runs of one edge token). With no non-member left, ``auc`` is None and ``reason`` says why.
    The loss is a bin's probability, not a density: where the holdout is another regime than training (a later
    period), bins of other widths still shift its score, and the AUC compares regimes, not membership.
    """
    from sklearn.metrics import roc_auc_score

    backend = synthesizer.backend
    if getattr(backend, "name", None) != "local":
        raise ConfigError("the likelihood audit needs a local-backend model")
    with warnings.catch_warnings():  # all-NaN channels (no values) give NaN bounds: nothing is beyond them
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(members.values, axis=(0, 1)), np.nanmax(members.values, axis=(0, 1))
    vals = nonmembers.values
    beyond = ((vals < lo) | (vals > hi)).sum(axis=(1, 2)) / np.maximum(np.isfinite(vals).sum(axis=(1, 2)), 1)
    out = beyond > MIA_MAX_BEYOND
    report = {"left_out": int(out.sum())}
    if out.any():
        log.warning("likelihood audit: left out %d of %d non-members with over %g%% of their values beyond the "
                    "training range of their channel (the codec's edge bins do not measure their likelihood)",
                    out.sum(), len(nonmembers), 100 * MIA_MAX_BEYOND)
        nonmembers = nonmembers.subset(np.flatnonzero(~out))
    if not len(nonmembers):
        return {**report, "auc": None, "members": len(members), "nonmembers": 0,
                "reason": "every non-member lies mostly beyond the training range"}
    rng = np.random.RandomState(seed)
    if len(members) > len(nonmembers):
        members = members.subset(np.sort(rng.choice(len(members), len(nonmembers), replace=False)))
    s_in, s_out = -backend.series_loss(members), -backend.series_loss(nonmembers)
    auc = float(roc_auc_score(np.r_[np.ones(len(s_in)), np.zeros(len(s_out))], np.r_[s_in, s_out]))
    return {**report, "auc": auc, "members": len(s_in), "nonmembers": len(s_out),
            "mean_loss_members": float(-s_in.mean()), "mean_loss_nonmembers": float(-s_out.mean())}
