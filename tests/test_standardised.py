"""Series standardised one by one (z-normalised archives): detected outside DP, and samples standardised alike."""

import logging

import numpy as np
import pytest
import torch

from tsynth import SeriesSet, Synthesizer
from tsynth.data import standardise, standardised_ddof, standardised_kind


def curves(n: int = 60, length: int = 24, ddof: int | None = 1, seed: int = 0) -> SeriesSet:
    """Noisy daily curves of different levels and spreads, each z-normalised with ``ddof`` (None: left raw)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    vals = (rng.uniform(1, 5, (n, 1)) + rng.uniform(0.5, 2, (n, 1)) * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 1, (n, 1)))
            + 0.2 * rng.normal(size=(n, length)))
    if ddof is not None:
        vals = (vals - vals.mean(1, keepdims=True)) / vals.std(1, ddof=ddof, keepdims=True)
    return SeriesSet.from_arrays(list(vals), [f"d{i}" for i in range(n)], ["load"])


def test_standardised_series_are_told_by_their_degrees_of_freedom():
    assert standardised_ddof(curves(ddof=1)) == 1
    assert standardised_ddof(curves(ddof=0)) == 0
    assert standardised_ddof(curves(ddof=None)) is None
    off = curves(ddof=1)
    off.values[3, :, 0] *= 1.01  # one series of sixty with a standard deviation of 1.01
    assert standardised_ddof(off) is None
    gappy = curves(ddof=1)
    gappy.values[:, 5, 0] = np.nan  # readings missing after standardising: the rest no longer is
    assert standardised_ddof(gappy) is None
    x = gappy.values.copy()
    gappy.values[:] = standardise(x, 1)  # standardised over the readings there are
    assert standardised_ddof(gappy) == 1 and np.isnan(gappy.values[:, 5]).all()
    flat = curves(ddof=0)
    flat.values[2] = 0.0  # a constant series, standardised: all 0, which says nothing either way
    assert standardised_ddof(flat) == 0 and standardised_kind(flat)[2] == -1
    assert (np.delete(standardised_kind(flat), 2) == 0).all()
    flat.values[:] = 0.0
    assert standardised_ddof(flat) is None


def test_each_series_is_told_standardised_or_not():
    assert (standardised_kind(curves(ddof=1)) == 1).all() and (standardised_kind(curves(ddof=0)) == 0).all()
    assert (standardised_kind(curves(ddof=None)) == -1).all()
    off = curves(ddof=0)
    off.values[3, :, 0] *= 1.01
    off.values[7, 5, 0] = np.nan  # a reading missing after standardising: the rest no longer is
    assert list(np.flatnonzero(standardised_kind(off) != 0)) == [3, 7] and (standardised_kind(off)[[3, 7]] == -1).all()


def test_standardise_centres_constant_series_and_keeps_gaps():
    x = np.array([[[1.0, 10.0], [3.0, 10.0], [np.nan, 10.0], [5.0, 10.0]]], dtype=np.float32)  # (1, 4, 2)
    out = standardise(x, 1)
    assert out.dtype == np.float32 and np.isnan(out[0, 2, 0])
    np.testing.assert_allclose(out[0, [0, 1, 3], 0], [-1.0, 0.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(out[0, :, 1], 0.0)  # constant: centred only, nothing divided by zero


@pytest.mark.parametrize("codec", ["token", "step"])
def test_samples_are_standardised_where_the_training_series_are(codec, tmp_path, caplog):
    torch.set_num_threads(1)
    data = curves(ddof=1)
    with caplog.at_level(logging.INFO, logger="tsynth"):
        syn = Synthesizer("local", codec=codec, epochs=2, n_bins=32, ensemble=1).fit(data, progress=False)
    assert "standardised each on its own" in caplog.text and syn.info["codec"]["standardised"] == 1
    out = syn.sample(30, seed=0)
    np.testing.assert_allclose(out.values.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.values.std(1, ddof=1), 1.0, atol=1e-5)
    longer = syn.sample(5, length=60, seed=1) if codec == "step" else out
    np.testing.assert_allclose(longer.values.std(1, ddof=1), 1.0, atol=1e-5)
    syn.save(tmp_path / "m")
    again = Synthesizer.load(tmp_path / "m").sample(30, seed=0)
    np.testing.assert_array_equal(again.values, out.values)


def test_raw_series_sample_as_drawn():
    torch.set_num_threads(1)
    raw = Synthesizer("local", codec="token", epochs=2, n_bins=32, ensemble=1).fit(curves(ddof=None), progress=False)
    assert raw.info["codec"].get("standardised") is None
    assert np.abs(raw.sample(30, seed=0).values.std(1, ddof=1) - 1.0).max() > 0.1


def test_dp_fits_release_whether_the_series_are_standardised(monkeypatch):
    """Under DP the fact is a Gaussian release of its own (items counted by kind), composed with DP-SGD: 300
    standardised items lead the other counts by far more than the margin at epsilon 8 (noise multiplier 22.5), 300
    raw ones trail it; at epsilon 0.5 the noise is too large for 300 items, and the series are left as drawn. The
    secret seed is fixed here (a fit draws it from the OS), so that the noise, and the test, are deterministic."""
    import tsynth.privacy as privacy

    monkeypatch.setattr(privacy.secrets, "randbits", lambda bits: 20261205)
    torch.set_num_threads(1)
    for ddof, epsilon, told in ((1, 8.0, 1), (None, 8.0, None), (1, 0.5, None)):
        data = curves(n=300, length=12, ddof=ddof, seed=1)
        dp = Synthesizer("local", dp_epsilon=epsilon, epochs=1, n_bins=32, batch_size=32).fit(data, progress=False)
        release = [r for r in dp.info["privacy"]["releases"] if r["what"].startswith("standardised")]
        assert len(release) == 1 and release[0]["standardised_ddof"] == told, (ddof, epsilon, release)
        assert dp.info["codec"].get("standardised") == told
        assert dp.info["privacy"]["epsilon"] <= epsilon * 1.05
        out = dp.sample(20, seed=0).values
        spread = np.abs(out.std(1, ddof=1) - 1.0).max()
        assert spread < 1e-5 if told == 1 else spread > 1e-3
