"""Evaluation on cases whose answer is known: copies of train, the holdout itself, noise, shuffled steps."""

import json

import numpy as np
import pandas as pd
import pytest

from tsynth import SeriesSet
from tsynth.errors import ConfigError, DataError
from tsynth.evaluate import Evaluation, discriminative_score, evaluate

LENGTH = 48


def make(n, seed=0, prefix="s", channels=1):
    """Noisy daily sinusoids with random phase and level; 'winter' series sit 2 units higher."""
    rng = np.random.RandomState(seed)
    t = np.arange(LENGTH)
    winter = rng.rand(n) < 0.5
    level = np.where(winter, 2.0, 0.0) + 0.5 * rng.randn(n)
    phase = rng.rand(n) * 2 * np.pi
    x = level[:, None] + np.sin(2 * np.pi * t / 24 + phase[:, None]) + 0.2 * rng.randn(n, LENGTH)
    vals = x[:, :, None]
    names = ["value"]
    if channels == 2:  # a second channel that follows the first
        vals = np.stack([x, 0.8 * x + 0.3 * rng.randn(n, LENGTH)], axis=2)
        names = ["load", "price"]
    return SeriesSet(vals, np.full(n, LENGTH), [f"{prefix}{i}" for i in range(n)], names,
                     attributes=pd.DataFrame({"season": np.where(winter, "winter", "summer")}))


def renamed(s, values=None, prefix="syn", attributes=True):
    """``s`` (or other values in its shape) as a synthetic set with fresh item ids."""
    values = s.values if values is None else values
    return SeriesSet(values, np.full(len(values), values.shape[1]), [f"{prefix}{i}" for i in range(len(values))],
                     s.channels, attributes=s.attributes if attributes else None)


@pytest.fixture(scope="module")
def sets():
    return make(400).split(0.25, seed=0)          # 300 train, 100 holdout items


@pytest.fixture(scope="module")
def copy_eval(sets):
    train, holdout = sets
    return evaluate(train, renamed(train), holdout, fast=True)


@pytest.fixture(scope="module")
def holdout_eval(sets):
    train, holdout = sets
    return evaluate(train, renamed(holdout), holdout, fast=True)


def status(ev, figure_start):
    return next(r["status"] for r in ev.summary["verdict"] if r["figure"].startswith(figure_start))


def test_copy_of_train_raises_the_privacy_alarms(copy_eval):
    p = copy_eval.privacy
    assert p["dcr_ratio"] == 0.0
    assert p["share_closer_to_train"] > 0.99
    assert p["exact_copies"] == 300 and p["exact_copies_share"] == 1.0
    assert p["near_copies_share"] == 1.0
    assert p["mia_auc"] > 0.95
    assert copy_eval.fidelity["disc_gbm"] < 0.02            # copies are indistinguishable from train...
    assert copy_eval.fidelity["mean_err"] == 0.0
    for fig in ("distance to closest record", "share of synthetic", "exact copies", "near copies", "membership"):
        assert status(copy_eval, fig) == "warn"               # ...and every privacy row says so


def test_holdout_as_synthetic_is_the_ideal(holdout_eval):
    f, p, ref = holdout_eval.fidelity, holdout_eval.privacy, holdout_eval.holdout_reference
    assert f["disc_gbm"] < 0.15
    assert p["dcr_ratio"] == pytest.approx(1.0)
    assert p["exact_copies"] == 0 and p["holdout_exact_copies"] == 0
    # these synthetic series *are* the holdout: each sits on a non-member, so the attack points the other way
    assert p["mia_auc"] == 0.0 and p["share_closer_to_train"] == 0.0
    assert f["disc_gbm"] == ref["disc_gbm"] and f["mean_err"] == ref["mean_err"]   # scored exactly like the yardstick
    assert status(holdout_eval, "discriminative") == "pass"
    assert status(holdout_eval, "distance to closest record") == "pass"
    assert holdout_eval.utility["forecast"]["ratio"] == pytest.approx(1.0, abs=0.05)
    assert holdout_eval.utility["forecast"]["tstr_mae"] < holdout_eval.utility["forecast"]["persistence_mae"]


def test_white_noise_raises_the_fidelity_alarms(sets):
    train, holdout = sets
    rng = np.random.RandomState(1)
    noise = train.values.mean() + train.values.std() * rng.randn(300, LENGTH, 1)
    ev = evaluate(train, renamed(train, noise), holdout, fast=True)
    assert ev.fidelity["disc_gbm"] > 0.35
    assert ev.fidelity["acf_err"] > 0.2 > 20 * ev.holdout_reference["acf_err"]
    assert ev.fidelity["coverage"]["precision"] < 0.5
    assert status(ev, "discriminative") == "warn" and status(ev, "autocorrelation error") == "warn"
    assert ev.privacy["exact_copies"] == 0


def test_time_shuffled_series_keep_marginals_but_raise_alarms(sets, holdout_eval):
    train, _ = sets
    rng = np.random.RandomState(2)
    shuffled = np.stack([v[rng.permutation(LENGTH)] for v in train.values])
    ev = evaluate(train, renamed(train, shuffled), fast=True)
    assert ev.fidelity["wasserstein"] < 1e-6                   # the same values, in another order
    assert ev.fidelity["disc_gbm"] > 0.25
    ref = holdout_eval.holdout_reference
    assert ev.fidelity["acf_err"] > 0.2 > 20 * ref["acf_err"]
    assert ev.fidelity["step_corr_err"] > 0.1 > 2 * ref["step_corr_err"]


def test_no_holdout_says_what_cannot_be_computed(sets):
    train, _ = sets
    ev = evaluate(train, renamed(train), fast=True)
    for key in ("privacy.dcr_ratio", "privacy.share_closer_to_train", "privacy.mia_auc", "utility.forecast",
                "utility.classification", "holdout_reference"):
        assert "needs a holdout" in ev.not_computed[key]
    assert "dcr_ratio" not in ev.privacy and ev.holdout_reference == {}
    assert ev.privacy["exact_copies_share"] == 1.0             # copies are still caught without a holdout
    assert "no holdout" in ev.privacy["near_copy_threshold_source"] and ev.privacy["near_copy_threshold"] > 0
    assert status(ev, "distance to closest record") == "info"


def test_nonfinite_synthetic_series_are_excluded_and_counted(sets):
    train, holdout = sets
    vals = holdout.values.copy()
    vals[:5, 3, 0] = np.nan
    vals[5:7, 10, 0] = np.inf
    ev = evaluate(train, renamed(holdout, vals), fast=True)
    assert ev.fidelity["excluded_nonfinite"] == 7
    assert ev.summary["n_synthetic"] == 100 and ev.summary["n_synthetic_used"] == 93
    assert status(ev, "synthetic series left out") == "warn"
    assert np.isfinite(ev.fidelity["mean_err"])


def test_to_dict_is_json_safe_with_every_section(holdout_eval):
    assert isinstance(holdout_eval, Evaluation)
    d = json.loads(json.dumps(holdout_eval.to_dict(), allow_nan=False))
    assert set(d) == {"fidelity", "utility", "privacy", "validity", "holdout_reference", "not_computed", "summary"}
    assert d["summary"]["headline"]["dcr_ratio"] == pytest.approx(1.0)
    assert d["not_computed"]["fidelity.channel_corr_err"] == "univariate data"
    assert d["fidelity"]["acf_curves"]["lags"] == list(range(1, LENGTH))
    assert d["fidelity"]["cross_lag_corr"]["lag"] == 24


def test_discriminative_score_is_deterministic_and_takes_either_shape(sets):
    train, holdout = sets
    a = discriminative_score(train.values, holdout.values, seed=3)
    b = discriminative_score(train.values.reshape(300, -1), holdout.values.reshape(100, -1), seed=3)
    assert a == b
    assert a["disc"] == pytest.approx(abs(a["auc"] - 0.5)) and a["disc_acc"] == pytest.approx(abs(a["accuracy"] - 0.5))
    assert (a["n_real"], a["n_synthetic"], a["folds"]) == (300, 100, 5)
    same = discriminative_score(train.values, train.values, seed=0)   # identical windows share a fold
    assert same["disc"] == 0.0


def test_full_mode_repeats_the_discriminative_score(sets):
    train, holdout = sets
    ev = evaluate(train, renamed(holdout), holdout, fast=False)
    rep = ev.fidelity["disc_gbm_repeats"]
    assert len(rep["values"]) == 3 and rep["values"][0] == ev.fidelity["disc_gbm"]
    assert rep["mean"] == pytest.approx(np.mean(rep["values"])) and rep["mean"] < 0.15
    assert "fidelity.disc_gbm_repeats" not in ev.not_computed


def test_classification_utility_uses_the_shared_label(holdout_eval, sets):
    c = holdout_eval.utility["classification"]
    assert c["label"] == "season" and c["classes"] == ["summer", "winter"]
    assert c["trtr_acc"] > 0.9 and abs(c["tstr_acc"] - c["trtr_acc"]) < 0.1
    train, holdout = sets
    ev = evaluate(train, renamed(holdout, attributes=False), holdout, fast=True)
    assert "classification" not in ev.utility and "no categorical attribute" in ev.not_computed["utility.classification"]
    with pytest.raises(DataError, match="label 'colour' is not an attribute of the train set"):
        evaluate(train, renamed(holdout), holdout, label="colour", fast=True)


def test_multivariate_channel_correlation():
    train, holdout = make(200, channels=2).split(0.25, seed=0)
    good = evaluate(train, renamed(holdout), fast=True)
    rng = np.random.RandomState(4)
    broken = holdout.values.copy()
    broken[:, :, 1] = broken[rng.permutation(len(broken)), :, 1]      # channel 2 from another series
    bad = evaluate(train, renamed(holdout, broken), fast=True)
    assert good.fidelity["channel_corr_err"] < 0.05
    assert bad.fidelity["channel_corr_err"] > 0.3
    assert len(good.fidelity["wasserstein_by_channel"]) == 2


def test_validity_shares(sets):
    train, holdout = sets
    counts = {"requested": 100, "parsed": 90, "right_length": 85, "retried": 12, "dropped": 10}
    ev = evaluate(train, renamed(holdout), validity=counts, fast=True)
    assert ev.validity["parsed_share"] == 0.9 and ev.validity["right_length_share"] == 0.85
    assert ev.validity["retried_share"] == 0.12 and ev.validity["dropped_share"] == 0.1
    assert status(ev, "answers parsed") == "warn" and status(ev, "answers needing a retry") == "info"
    with pytest.raises(DataError, match="requested"):
        evaluate(train, renamed(holdout), holdout, validity={"parsed": 3}, fast=True)


def test_custom_lags(sets):
    train, holdout = sets
    ev = evaluate(train, renamed(holdout), lags=[1, 12, 24], cross_lag=12, fast=True)
    assert ev.fidelity["acf_curves"]["lags"] == [1, 12, 24]
    assert ev.fidelity["cross_lag_corr"]["lag"] == 12 and ev.fidelity["acf_at_cross_lag"]["lag"] == 12
    real_acf = ev.fidelity["acf_curves"]["real"][0]
    assert real_acf[2] > 0.3 and real_acf[1] < -0.3           # a daily cycle: high at lag 24, low at 12
    with pytest.raises(ConfigError, match="lag 48 is outside 1..47"):
        evaluate(train, renamed(holdout), holdout, lags=[48], fast=True)


# ---------------------------------------------------------------------- bad input
def test_mismatched_length(sets):
    train, holdout = sets
    with pytest.raises(DataError, match="synthetic series have length 40 but train series have length 48"):
        evaluate(train, renamed(holdout, holdout.values[:, :40]), holdout)


def test_mismatched_channels(sets):
    train, holdout = sets
    two = SeriesSet(np.repeat(holdout.values, 2, axis=2), holdout.lengths, holdout.item_id, ["a", "b"])
    with pytest.raises(DataError, match="holdout channels"):
        evaluate(train, renamed(holdout), two)


def test_empty_set(sets):
    train, holdout = sets
    empty = SeriesSet(np.zeros((0, LENGTH, 1)), [], [], ["value"])
    with pytest.raises(DataError, match="the synthetic set is empty"):
        evaluate(train, empty, holdout)


def test_holdout_sharing_items_with_train(sets):
    train, holdout = sets
    leaky = SeriesSet.concat([holdout, train.subset([0])])
    with pytest.raises(DataError, match=f"holdout shares 1 record.*'{train.item_id[0]}'"):
        evaluate(train, renamed(holdout), leaky)


def test_sliding_windows_of_one_item_are_told_apart_by_offset():
    long = SeriesSet.from_arrays([np.sin(np.arange(300) / 4.0)], ["only"]).sliding_windows(LENGTH, stride=4)
    n = len(long)
    train, holdout = long.subset(np.arange(0, n - 10)), long.subset(np.arange(n - 10, n))
    ev = evaluate(train, renamed(holdout), holdout, fast=True)
    assert ev.summary["n_holdout"] == 10
    with pytest.raises(DataError, match="holdout shares"):
        evaluate(train, renamed(holdout), long.subset(np.arange(n - 11, n)))


def test_ragged_and_all_nan_sets(sets):
    train, holdout = sets
    ragged = SeriesSet.from_arrays([np.ones(LENGTH), np.ones(LENGTH - 3)], ["a", "b"])
    with pytest.raises(DataError, match="synthetic series have different lengths"):
        evaluate(train, ragged, holdout)
    with pytest.raises(DataError, match="every one of the 100 synthetic series holds NaN"):
        evaluate(train, renamed(holdout, np.full_like(holdout.values, np.nan)), holdout)
