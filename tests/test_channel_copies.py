"""Channels that repeat another channel exactly: learnt once, copied into every sample (outside DP)."""

import numpy as np
import pytest
import torch

from tsynth import SeriesSet, Synthesizer
from tsynth.data import duplicate_channels


def sensors(n: int = 60, length: int = 12, seed: int = 0) -> SeriesSet:
    """Three channels, the third a copy of the first (as energy24's rv2 is of rv1)."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, length))
    b = np.cumsum(rng.normal(size=(n, length)), axis=1)
    return SeriesSet.from_arrays(list(np.stack([a, b, a], axis=-1)), [f"s{i}" for i in range(n)], ["rv1", "t", "rv2"])


def test_duplicate_channels_are_found_only_where_every_value_repeats():
    data = sensors()
    assert duplicate_channels(data) == {2: 0}
    data.values[5, 3, 2] += 1e-6
    assert duplicate_channels(data) == {}
    gaps = sensors()
    gaps.values[1, 4, [0, 2]] = np.nan  # missing in both: still a copy
    assert duplicate_channels(gaps) == {2: 0}


@pytest.mark.parametrize("codec", ["token", "step"])
def test_samples_copy_the_repeated_channel(codec, tmp_path):
    torch.set_num_threads(1)
    syn = Synthesizer("local", codec=codec, epochs=2, n_bins=16, ensemble=1).fit(sensors(), progress=False)
    assert syn.info["channel_copies"] == {"channels": ["rv1", "t", "rv2"], "copies": {"rv2": "rv1"}}
    assert syn.backend.values_codec().channels == ["rv1", "t"]  # the model learns two channels
    out = syn.sample(20, seed=0)
    assert out.channels == ["rv1", "t", "rv2"] and out.values.shape == (20, 12, 3)
    np.testing.assert_array_equal(out.values[..., 2], out.values[..., 0])
    assert np.abs(out.values[..., 1] - out.values[..., 0]).max() > 0.1
    syn.save(tmp_path / "m")
    np.testing.assert_array_equal(Synthesizer.load(tmp_path / "m").sample(20, seed=0).values, out.values)
    assert np.isfinite(syn.backend.series_loss(sensors(n=5))).all()  # the audit reads data with every channel


def test_dp_fits_learn_every_channel():
    torch.set_num_threads(1)
    syn = Synthesizer("local", dp_epsilon=8.0, epochs=1, n_bins=16, batch_size=16).fit(sensors(n=80), progress=False)
    assert "channel_copies" not in syn.info and syn.backend.values_codec().channels == ["rv1", "t", "rv2"]
