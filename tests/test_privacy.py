"""Differential privacy of the local backend: accounting, refusals, public preprocessing."""

import logging

import numpy as np
import pytest
import torch

from tsynth import SeriesSet
from tsynth.errors import ConfigError
from tsynth.synthesizer import Synthesizer


def items(n=80, length=16, seed=0):
    rng = np.random.default_rng(seed)
    vals = np.sin(np.arange(length)[None] / 3 + rng.uniform(0, 6, size=(n, 1))) + 0.1 * rng.normal(size=(n, length))
    return SeriesSet.from_arrays(list(vals), [f"u{i}" for i in range(n)])


def test_dp_fit_reports_epsilon_within_target(caplog):
    torch.set_num_threads(1)
    data = items()
    data.values[0, 0, 0] = 9.0  # outside the public bounds [-5, 5]: clipped and counted
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        syn = Synthesizer("local", dp_epsilon=3.0, epochs=2, n_bins=32, batch_size=16).fit(data, progress=False)
    assert "outside the codec's range" in caplog.text
    priv = syn.info["privacy"]
    assert priv["unit"] == "item" and priv["items"] == 80
    assert 0 < priv["epsilon"] <= 3.0 * 1.05
    assert priv["noise_multiplier"] > 0.3 and priv["delta"] < 1 / 80
    codec = syn.info["codec"]
    assert codec["binning"] == "uniform" and codec["scaling"] == "none" and codec["value_range"] == [-5.0, 5.0]
    assert syn.info["training"]["valid_series"] == 0          # no data-dependent early stopping under DP
    out = syn.sample(10, seed=0)
    assert out.values.shape == (10, 16, 1) and np.isfinite(out.values).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"dp_epsilon": 0}, "positive"),
    ({"dp_epsilon": 8, "dp_delta": 0.5}, "delta"),
    ({"dp_epsilon": 8, "conditions": ["item_id"]}, "item-id conditioning is refused"),
    ({"dp_epsilon": 8, "ensemble": 2}, "ensemble"),
])
def test_dp_refusals(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Synthesizer("local", epochs=1, **kwargs).fit(items(), progress=False)


def test_dp_needs_enough_items():
    with pytest.raises(ConfigError, match="too few"):
        Synthesizer("local", dp_epsilon=8, epochs=1).fit(items(n=30), progress=False)
