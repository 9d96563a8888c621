"""Evaluate synthetic series against the real ones: fidelity, utility, privacy and validity.

``evaluate(train, synthetic, holdout)`` returns an :class:`Evaluation` (plain dicts, ``.to_dict()``
for JSON); ``evaluate_to_dir`` also writes ``metrics.json`` and a self-contained ``report.html``.
The holdout (real series the generator never saw) is the yardstick: every fidelity figure is also
computed for the holdout scored as if it were synthetic (``holdout_reference``), and the privacy
figures compare synthetic series with it. Figures that cannot be computed are listed, with the
reason, in ``not_computed``.

Beside the figures on whole series, ``fidelity["shape"]`` scores every series standardised on its
own (the shape-level score) and, for long series with a known frequency, ``fidelity["long"]``
holds calendar profiles, autocorrelation at the data's daily and weekly periods, daily and weekly
totals, level stability and sub-window discriminative scores (see :mod:`.longseries`), and (full mode)
``fidelity["tells"]`` says what gives the samples away: the discriminative score on per-series features, one
family at a time (sorted values, moments, autocorrelation, roughness, the mean cycle, the cycles' deviations from
it; see :mod:`.tells`), with the holdout's figures beside them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import SeriesSet, atomic_write
from ..errors import ConfigError, DataError
from .fidelity import discriminative_score, fidelity_metrics, one_thread, prepare, summary_block
from .longseries import calendar, gap_share, series_figures, subwindow_steps
from .privacy import NEEDS_HOLDOUT, privacy_metrics
from .report import render_report, verdict_rows
from .utility import pick_label, utility_metrics
from .tells import feature_discrimination

__all__ = ["evaluate", "Evaluation", "evaluate_to_dir", "discriminative_score", "render_report"]

DISC_REPEATS = 3          # full mode: disc_gbm repeated with this many seeds (mean and spread reported)
VALIDITY_KEYS = ("requested", "parsed", "right_length", "retried", "dropped")


@dataclass
class Evaluation:
    """Every figure of one evaluation, grouped as in the report; ``to_dict()`` is JSON-safe."""

    fidelity: dict
    utility: dict
    privacy: dict
    validity: dict
    holdout_reference: dict
    not_computed: dict
    summary: dict

    def to_dict(self) -> dict:
        """A nested dict of plain Python values (NaN and inf become None)."""
        return json_safe(asdict(self))


def json_safe(x: Any) -> Any:
    """``x`` with numpy values turned into Python ones, tuples into lists and NaN/inf into None."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _lags(lags, cross_lag, length: int) -> tuple[list[int], int]:
    lags = list(range(1, min(length - 1, 48) + 1)) if lags is None else sorted({int(k) for k in lags})
    cross_lag = (24 if length > 24 else length // 2) if cross_lag is None else int(cross_lag)
    for k in [*lags, cross_lag]:
        if not 1 <= k < length:
            raise ConfigError(f"lag {k} is outside 1..{length - 1} for series of length {length}")
    if not lags:
        raise ConfigError("lags is empty")
    return lags, cross_lag


def validity_shares(counts: dict | None) -> dict:
    """Validity counts of a text backend with each as a share of the answers requested."""
    if counts is None:
        return {}
    unknown = set(counts) - set(VALIDITY_KEYS)
    if unknown or "requested" not in counts:
        raise DataError(f"validity counts need 'requested' and only {', '.join(VALIDITY_KEYS)}; got {sorted(counts)}")
    for k, v in counts.items():
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise DataError(f"validity count {k!r} must be a non-negative integer, got {v!r}")
    if counts["requested"] == 0:
        raise DataError("validity count 'requested' is 0")
    out = {k: int(v) for k, v in counts.items()}
    out.update({f"{k}_share": v / counts["requested"] for k, v in counts.items() if k != "requested"})
    return out


def evaluate(train: SeriesSet, synthetic: SeriesSet, holdout: SeriesSet | None = None, *,
             validity: dict | None = None, label: str | None = None, lags=None, cross_lag: int | None = None,
             seed: int = 0, fast: bool = False, freq: str | None = None, subwindow: int | None = None) -> Evaluation:
    """Score ``synthetic`` against ``train`` (the generator's training data) and ``holdout``.

    All sets must be regular with the same length and channels. Real series may hold gaps (NaN);
    synthetic series holding inf, or NaN where the real data has no gaps, are left out and counted
    (``fidelity["excluded_nonfinite"]``); ``fidelity["gap_share"]`` compares the share of missing
    values. ``freq``: the data's frequency when the sets carry none (it sets the daily and weekly
    periods of the long-series figures); ``subwindow``: steps of the sub-windows scored for long
    series (default a week, or the most whole days that fit twice). ``validity``: counts from a text
    backend (``requested``, ``parsed``, ``right_length``, ``retried``, ``dropped``). ``label``: the
    attribute for classification utility (default: a categorical attribute all sets share).
    ``lags`` (default 1..min(length-1, 48)) for autocorrelation; ``cross_lag`` (default 24, or
    length // 2 for short series) for the step-0 vs step-``cross_lag`` figures. ``fast`` runs the
    discriminative score once instead of three times. Deterministic for a given ``seed``; runs on one
    thread (see :func:`fidelity.one_thread`).
    """
    with one_thread():
        return _evaluate(train, synthetic, holdout, validity, label, lags, cross_lag, seed, fast, freq, subwindow)


def _evaluate(train, synthetic, holdout, validity, label, lags, cross_lag, seed, fast, freq, subwindow) -> Evaluation:
    started = time.perf_counter()
    prep = prepare(train, synthetic, holdout, freq)
    lags, cross_lag = _lags(lags, cross_lag, prep.train.shape[1])
    cal = calendar(prep.freq)
    block = summary_block(prep.train.shape[1], prep.train.shape[2], cal.per_day)
    subwindow_steps(prep.train.shape[1], cal, subwindow)      # a bad subwindow is refused before any work
    val = validity_shares(validity)
    label, no_label = pick_label(prep, label)
    seconds: dict = {}
    not_computed: dict = {}

    def timed(part, fn, *args, **kwargs):
        t = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[part] = round(time.perf_counter() - t, 3)
        return result

    fid = timed("fidelity", fidelity_metrics, prep.train, prep.synthetic, lags, cross_lag, seed,
                1 if fast else DISC_REPEATS, block)
    fid["excluded_nonfinite"] = prep.excluded_nonfinite
    fid["gap_share"] = gap_share(prep, "synthetic")
    fid["shape"], long, nc = timed("shape_and_long", series_figures, prep, "synthetic", cross_lag, subwindow, seed)
    not_computed.update(nc)
    if long is not None:
        fid["long"] = long
    cycle = fid["shape"]["cycle_lag"]
    if fast:
        not_computed["fidelity.disc_gbm_repeats"] = "fast mode runs the discriminative score once"
        not_computed["fidelity.tells"] = "fast mode leaves out the per-feature-family discriminative scores"
    else:
        fid["tells"] = timed("tells", feature_discrimination, prep.with_gaps("train"), prep.with_gaps("synthetic"),
                             cycle, seed)
    if prep.train.shape[2] == 1:
        not_computed["fidelity.channel_corr_err"] = "univariate data"
    if prep.holdout is not None:
        ref = timed("holdout_reference", fidelity_metrics, prep.train, prep.holdout, lags, cross_lag, seed, 1, block)
        ref["gap_share"] = gap_share(prep, "holdout")
        ref["shape"], long, _ = timed("shape_and_long_holdout_reference", series_figures, prep, "holdout", cross_lag,
                                      subwindow, seed)
        if long is not None:
            ref["long"] = long
        if not fast:
            ref["tells"] = timed("tells_holdout_reference", feature_discrimination, prep.with_gaps("train"),
                                 prep.with_gaps("holdout"), cycle, seed)
    else:
        ref = {}
        not_computed["holdout_reference"] = NEEDS_HOLDOUT
    priv, nc = timed("privacy", privacy_metrics, prep.train, prep.synthetic, prep.holdout, seed)
    not_computed.update(nc)
    util, nc = timed("utility", utility_metrics, prep, label, no_label, seed)
    not_computed.update(nc)
    if not val:
        not_computed["validity"] = "no validity counts given (text backends report them)"
    seconds["total"] = round(time.perf_counter() - started, 3)
    shape, long = fid["shape"], fid.get("long")
    summary = {
        "n_train": len(prep.train), "n_synthetic": prep.n_synthetic_given, "n_synthetic_used": len(prep.synthetic),
        "n_holdout": None if prep.holdout is None else len(prep.holdout),
        "length": prep.train.shape[1], "channels": prep.channels, "lags": [lags[0], lags[-1]], "cross_lag": cross_lag,
        "seed": seed, "fast": fast, "freq": prep.freq, "long_series": long is not None, "cycle_lag": shape["cycle_lag"],
        "headline": {"disc_gbm": fid["disc_gbm"], "disc_gbm_auc": fid["disc_gbm_auc"],
                     "dcr_ratio": priv.get("dcr_ratio"), "exact_copies": priv["exact_copies"],
                     "mia_auc": priv.get("mia_auc"), "shape_disc_gbm": shape["disc_gbm"],
                     "acf_err_cycle": shape["acf_err_cycle"],
                     "subwindow_disc_gbm": long["subwindow"]["disc_gbm"] if long and "subwindow" in long else None},
        "verdict": verdict_rows(fid, priv, util, val, ref),
        "seconds": seconds,
    }
    return Evaluation(fid, util, priv, val, ref, not_computed, summary)


def evaluate_to_dir(train: SeriesSet, synthetic: SeriesSet, holdout: SeriesSet | None, out_dir: str | os.PathLike, *,
                    title: str | None = None, extra: dict | None = None, evaluation: Evaluation | None = None,
                    **kwargs: Any) -> Evaluation:
    """Evaluate (``kwargs`` as for :func:`evaluate`) and write ``metrics.json`` and ``report.html``
    into ``out_dir``, each atomically. ``extra``: run details (model, settings) stored under
    ``"extra"`` in metrics.json and listed in the report. ``evaluation``: one already made of these sets
    (e.g. on a subsample, :mod:`tsynth.evalscale`), written instead of evaluating again."""
    ev = evaluation if evaluation is not None else evaluate(train, synthetic, holdout, **kwargs)
    out = Path(out_dir)
    metrics = ev.to_dict()
    if extra:
        metrics["extra"] = json_safe(extra)
    text = json.dumps(metrics, indent=2, allow_nan=False)
    atomic_write(out / "metrics.json", lambda f: Path(f).write_text(text, encoding="utf-8"))
    render_report(ev, train, synthetic, holdout, out / "report.html", title=title, extra=extra)
    return ev
