"""Generators compared by the benchmark. Each takes (task, seed, smoke) and returns the synthetic set
plus fit and sample seconds; the harness measures memory and evaluates."""

from __future__ import annotations

import os
import time
from functools import partial
from typing import Callable

import numpy as np
import torch

from tsynth import SeriesSet
from tsynth.prior import Prior, resolve_prior
from tsynth.privacy import likelihood_mia
from tsynth.synthesizer import Synthesizer

from .peers import BUDGET_S, dgan, par
from .tasks import Task


def _like(task: Task, values: np.ndarray, prefix: str) -> SeriesSet:
    n = len(values)
    return SeriesSet(values.astype(np.float32), np.full(n, values.shape[1]), [f"{prefix}_{i}" for i in range(n)],
                     task.train.channels)


def step_errors(real: np.ndarray, synthetic: np.ndarray, suffix: str) -> dict:
    """mean_err and pct_err (as the evaluation defines them) of a larger sample: with only as many synthetic
    series as train, these figures are dominated by sampling noise."""
    from tsynth.evaluate.fidelity import step_stats

    (m_r, p_r), (m_s, p_s) = step_stats(real.astype(np.float64)), step_stats(synthetic.astype(np.float64))
    return {f"mean_err{suffix}": float(np.abs(m_s - m_r).mean()), f"pct_err{suffix}": float(np.abs(p_s - p_r).mean())}


def horizon_stats(real: SeriesSet, synthetic: SeriesSet, week: int = 168) -> dict:
    """How series far longer than the training ones hold their shape: the hour-of-day and day-of-week profiles
    (means over series, in the data's units) of the synthetic first and last whole weeks against the real
    series' profiles, and the mean level and spread of those weeks against the real first and last weeks.
    Assumes hourly series that start at the same hour of the week (as the electricity tasks do)."""
    def weeks(values: np.ndarray, first: int) -> np.ndarray:
        return values[:, first:first + week, 0].astype(np.float64)

    def profiles(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.nanmean(x.reshape(len(x), -1, 24), axis=(0, 1)), np.nanmean(x.reshape(len(x), 7, 24), axis=(0, 2))

    last_real = (real.length // week - 1) * week
    last_syn = (synthetic.length // week - 1) * week
    hod, dow = profiles(np.concatenate([weeks(real.values, 0), weeks(real.values, last_real)]))
    out = {"horizon": int(synthetic.length), "last_week_start": int(last_syn)}
    for name, x in (("first", weeks(synthetic.values, 0)), ("last", weeks(synthetic.values, last_syn))):
        h, d = profiles(x)
        out[f"{name}_week_hour_profile_err"] = float(np.abs(h - hod).mean())
        out[f"{name}_week_weekday_profile_err"] = float(np.abs(d - dow).mean())
        out[f"{name}_week_level"] = float(np.nanmean(x))
        out[f"{name}_week_std"] = float(np.nanmean(np.nanstd(x, axis=1)))
    for name, x in (("real_first", weeks(real.values, 0)), ("real_last", weeks(real.values, last_real))):
        out[f"{name}_week_level"] = float(np.nanmean(x))
        out[f"{name}_week_std"] = float(np.nanmean(np.nanstd(x, axis=1)))
    return out


def holdout(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """Real unseen data scored as if synthetic: the floor a perfect generator reaches."""
    return task.holdout, 0.0, 0.0, {}


def copy(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """A verbatim copy of train: the fidelity ceiling and the privacy failure."""
    return task.train, 0.0, 0.0, {}


def gaussian(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """A multivariate Gaussian over the flattened window (mean + full covariance)."""
    t0 = time.time()
    x = task.train.values.reshape(len(task.train), -1).astype(np.float64)
    mean, cov = x.mean(0), np.cov(x, rowvar=False)
    fit_s = time.time() - t0
    t0 = time.time()
    draws = np.random.default_rng(seed).multivariate_normal(mean, cov, size=len(task.train), method="eigh")
    return _like(task, draws.reshape(-1, *task.train.values.shape[1:]), "gaussian"), fit_s, time.time() - t0, {}


def dp_gaussian(task: Task, seed: int, smoke: bool, epsilon: float = 8.0) -> tuple[SeriesSet, float, float, dict]:
    """The DP baseline: a Gaussian whose mean and covariance are released with the Gaussian mechanism."""
    from tsynth.privacy import dp_gaussian as fit_dp_gaussian

    t0 = time.time()
    x = task.train.values.reshape(len(task.train), -1)
    mean, cov, acct = fit_dp_gaussian(x, epsilon, delta=min(1e-5, 0.1 / len(x)), seed=seed)
    fit_s = time.time() - t0
    t0 = time.time()
    draws = np.random.default_rng(seed).multivariate_normal(mean, cov, size=len(task.train), method="eigh")
    return _like(task, draws.reshape(-1, *task.train.values.shape[1:]), "dpgauss"), fit_s, time.time() - t0, {"privacy": acct}


def check_no_leak(task: Task, prior: Prior | None) -> None:
    """Refuse to score a task with a prior whose corpus mentions the task's data (name, description, origin)."""
    if prior is None:
        return
    for src in prior.doc["corpus"]["sources"]:
        text = " ".join(str(src.get(k, "")) for k in ("name", "description", "origin")).lower()
        hits = [n for n in task.data_names if n.lower() in text]
        if hits:
            raise SystemExit(f"{task.name}: the prior at {prior.path} saw {src['name']!r}, which mentions {hits}: "
                             "scoring with it would leak the task's data")


def tsynth_local(task: Task, seed: int, smoke: bool, **options) -> tuple[SeriesSet, float, float, dict]:
    """tsynth's local backend with its default settings (smoke: 1 epoch of one model, not an ensemble,
    no time limit, and 5 extra draws instead of 1000). Without DP the fit gets the peers' wall-clock budget
    (``BUDGET_S`` as the backend's time limit; it binds on stocks24 and energy24); a DP fit cannot be cut short,
    so a task may cap its epochs (``Task.dp_epochs``)."""
    opts = {"seed": seed, **options, **({"epochs": 1, "ensemble": 1} if smoke else {})}
    if "dp_epsilon" not in opts:
        if not smoke:   # a time limit first times a few training steps: longer than the smoke epoch
            opts["time_limit_s"] = BUDGET_S
    else:
        if task.dp_value_range is not None:
            opts.setdefault("value_range", task.dp_value_range)
        if task.dp_epochs is not None:
            opts.setdefault("epochs", task.dp_epochs)
    check_no_leak(task, resolve_prior(opts.get("prior", "auto"), "dp_epsilon" in opts, opts.get("domain"),
                                      task.train.freq, task.train.n_channels))
    t0 = time.time()
    syn = Synthesizer("local", **opts).fit(task.train, progress=False)
    fit_s = time.time() - t0
    # the draws run as `tsynth sample` runs in a process of its own: torch on every core (the harness's worker
    # keeps one thread, for the fit's member processes and the scores), batches one at a time (sample.default_workers)
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        t0 = time.time()
        synthetic = syn.sample(len(task.train), seed=seed)
        sample_s = time.time() - t0
        t0 = time.time()
        more = syn.sample(5 if smoke else 1000, seed=seed + 1)
        sample_1000_s = time.time() - t0  # the draw alone (the audit below scores every member on train and holdout)
    finally:
        torch.set_num_threads(threads)
    members = syn.info["training"]["members"]
    audit = likelihood_mia(syn, task.train, task.holdout, seed=seed)
    if task.horizon is not None and syn.info["codec"].get("kind") == "step":
        t1 = time.time()
        long = syn.sample(len(task.train), length=task.horizon, seed=seed + 2)
        horizon = {**horizon_stats(task.train, long), "sample_s": time.time() - t1}
    else:
        horizon = None
    extra = {"privacy": syn.info.get("privacy"), **step_errors(task.train.values, more.values, "_1000"),
             "sample_1000_s": sample_1000_s, "epochs": [m["epochs_run"] for m in members],
             "time_limited": any(m["time_limited"] for m in members), "time_limit_s": opts.get("time_limit_s"),
             "mia_likelihood_auc": audit["auc"],
             "mia_likelihood_left_out": audit["left_out"],
             "prior": (syn.info.get("prior") or {}).get("sources"),
             "smoothing": syn.info["training"]["smoothing"],
             "point_masses": sum(syn.info["codec"].get("point_masses_per_channel", [])),
             "best_epoch": [m["best_epoch"] for m in members],
             "valid_loss": [min(m["valid_loss"]) if m["valid_loss"] else None for m in members],
             "parameters": syn.info["training"]["parameters"], "horizon": horizon}
    return synthetic, fit_s, sample_s, extra


def tsynth_pretrained(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """LoRA on SmolLM2-135M-Instruct, the recipe's own method (``benchmarks/bench_pretrained.py``)."""
    from .bench_pretrained import tsynth_pretrained as run

    return run(task, seed, smoke)


DP_EPSILONS = (1.0, 3.0, 8.0)
GENERATORS: dict[str, Callable] = {
    "holdout": holdout,
    "copy": copy,
    "gaussian": gaussian,
    "tsynth": tsynth_local,
    "tsynth-e12": partial(tsynth_local, ensemble=12),
    "tsynth-pretrained": tsynth_pretrained,
    "tsynth-token": partial(tsynth_local, codec="token"),  # the token model from scratch (the default until the step model)
    "tsynth-step": partial(tsynth_local, codec="step"),  # the step model, also where the default is the token model
    "tsynth-token-noprior": partial(tsynth_local, codec="token", prior="none"),  # the token model, never from a prior
    "tsynth-prior": partial(tsynth_local, prior="default", ensemble=6),
    "tsynth-load": partial(tsynth_local, prior="load", ensemble=6),  # the default before PRIOR_ENSEMBLE (rows)
    "tsynth-load-e12": partial(tsynth_local, prior="load", ensemble=12),
    "tsynth-load-e24": partial(tsynth_local, prior="load", ensemble=24),
    **{f"dp-gaussian-eps{e:g}": partial(dp_gaussian, epsilon=e) for e in DP_EPSILONS},
    **{f"tsynth-dp-eps{e:g}": partial(tsynth_local, dp_epsilon=e) for e in DP_EPSILONS},
    "tsynth-dp-eps8-noprior": partial(tsynth_local, dp_epsilon=8.0, prior="none"),
    "tsynth-dp-eps8-load": partial(tsynth_local, dp_epsilon=8.0, prior="load"),
    "tsynth-dp-eps8-step": partial(tsynth_local, dp_epsilon=8.0, codec="step"),  # what long series and gaps train
    "dgan": dgan,
    "par": par,
}
