"""What tells synthetic series from real ones (tsynth.evaluate.tells), on hourly sets whose difference is known:
a fresh draw of the same process, one whose noise is smoother (same spread, same marginal), one whose days differ
from each other where the real ones repeat their own day, and one with gaps."""

import numpy as np
import pytest

from tsynth import SeriesSet
from tsynth.evaluate import evaluate, render_report
from tsynth.evaluate.tells import FAMILIES, family_features, feature_discrimination

N, DAYS = 150, 4


def meters(seed, smooth=False, n=N, days=DAYS):
    """(n, days * 24, 1): a level per series, a daily sine, Gaussian noise of spread 0.5. ``smooth``: the noise is
    an AR(1) process of the same spread (steps follow each other)."""
    rng = np.random.RandomState(seed)
    t = np.arange(days * 24)
    if smooth:
        e = rng.randn(n, len(t))
        noise = np.zeros_like(e)
        noise[:, 0] = e[:, 0]
        for k in range(1, len(t)):
            noise[:, k] = 0.9 * noise[:, k - 1] + np.sqrt(1 - 0.81) * e[:, k]
    else:
        noise = rng.randn(n, len(t))
    x = rng.rand(n, 1) + np.sin(2 * np.pi * (t % 24) / 24) + 0.5 * noise
    return x[:, :, None]


def scores(other, real=None):
    out = feature_discrimination(meters(0) if real is None else real, other, cycle=24, seed=0)
    return {k: v["disc_gbm"] for k, v in out["families"].items()}, out


def test_a_fresh_draw_is_not_told_apart_by_any_family():
    s, out = scores(meters(1))
    assert set(s) == set(FAMILIES) and not out["left_out"]
    assert max(s.values()) < 0.12, s


def test_smoother_steps_are_told_by_roughness_and_autocorrelation_not_by_the_values():
    s, out = scores(meters(1, smooth=True))
    assert s["roughness"] > 0.4 and s["autocorrelation"] > 0.4, s
    # the rest tells less: the same marginal, though a smooth series' own mean, spread and mean day wander more
    assert min(s["roughness"], s["autocorrelation"]) > max(s["values_sorted"], s["moments"], s["cycle_profile"]) + 0.1, s
    assert out["most_telling"] in ("roughness", "autocorrelation")


def own_days(seed, repeat, n=N, days=DAYS):
    """(n, days * 24, 1): each series a random day of 24 standard normal values plus noise of spread 0.1; with
    ``repeat`` the series repeats its first day, else every day is drawn anew."""
    rng = np.random.RandomState(seed)
    day = rng.randn(n, days, 24)
    if repeat:
        day[:] = day[:, :1]
    return (day.reshape(n, -1) + 0.1 * rng.randn(n, days * 24))[:, :, None]


def test_days_that_differ_where_real_ones_repeat_are_told_by_the_cycle_families():
    same, _ = scores(own_days(1, repeat=True), real=own_days(0, repeat=True))
    assert max(same.values()) < 0.12, same
    s, _ = scores(own_days(1, repeat=False), real=own_days(0, repeat=True))
    assert s["cycle_deviation"] > 0.45 and s["autocorrelation"] > 0.45, s  # lag 24 is among the lags
    assert s["roughness"] < s["cycle_deviation"] - 0.2, s  # step to step, both are alike


def test_gaps_are_read_as_missing_and_short_or_acyclic_series_leave_families_out():
    x = meters(1)
    x[::3, 10:15] = np.nan  # every third series misses five hours
    s, out = scores(x)
    assert all(np.isfinite(v) for v in s.values()) and max(s.values()) < 0.2, s
    held = family_features(np.array([[[1.0], [1.0], [np.nan], [2.0], [2.0], [3.0]]]), "roughness", None)
    assert held[0, 2] == pytest.approx(2 / 3)  # of the three step pairs without a gap, two hold the value
    short = feature_discrimination(meters(0, days=1), meters(1, days=1), cycle=24)
    assert set(short["left_out"]) == {"cycle_profile", "cycle_deviation"}
    assert "fewer than two cycles" in short["left_out"]["cycle_profile"]
    acyclic = feature_discrimination(meters(0), meters(1), cycle=None)
    assert set(acyclic["left_out"]) == {"cycle_profile", "cycle_deviation"}
    assert set(acyclic["families"]["autocorrelation"]) >= {"disc_gbm", "auc", "features"}
    assert acyclic["families"]["autocorrelation"]["features"] == 2  # lags 1 and 2 only
    with pytest.raises(ValueError, match="unknown feature family"):
        family_features(meters(0), "spectrum", 24)


def as_set(x, prefix):
    n = len(x)
    return SeriesSet(x, np.full(n, x.shape[1]), [f"{prefix}{i}" for i in range(n)], ["load"],
                     start=["2024-01-01"] * n, freq="h")


def test_evaluate_reports_the_families_in_full_mode_beside_the_holdout_and_leaves_them_out_when_fast(tmp_path):
    train, holdout, smooth = as_set(meters(0, n=80), "t"), as_set(meters(1, n=80), "h"), as_set(meters(2, n=80, smooth=True), "s")
    ev = evaluate(train, smooth, holdout)
    tells, ref = ev.fidelity["tells"], ev.holdout_reference["tells"]
    assert tells["families"]["roughness"]["disc_gbm"] > 0.3 > ref["families"]["roughness"]["disc_gbm"]
    assert "tells" in ev.summary["seconds"] and "tells_holdout_reference" in ev.summary["seconds"]
    html = render_report(ev, train, smooth, holdout, tmp_path / "r.html").read_text()
    assert "What tells the series apart" in html and "roughness: mean absolute first" in html
    fast = evaluate(train, smooth, holdout, fast=True)
    assert "tells" not in fast.fidelity and "fidelity.tells" in fast.not_computed
