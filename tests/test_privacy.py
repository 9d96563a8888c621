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
    data.values[1:, 0, 0] = 0.0  # held by every other item: a point mass without DP
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
    assert syn.info["training"]["smoothing"] == 2.0            # nor a label smoothing measured on the data
    assert codec["point_mass_series"] == 0 and syn.backend.codec.point_masses == []  # nor the values that recur
    out = syn.sample(10, seed=0)
    assert out.values.shape == (10, 16, 1) and np.isfinite(out.values).all()


def test_dp_refuses_data_mostly_outside_the_public_range():
    from tsynth.backends.local import check_dp_range
    from tsynth.codecs.values import ValueCodec

    data = items()
    raw = SeriesSet(data.values * 300 + 2000, data.lengths, data.item_id, data.channels)  # "kW"
    with pytest.raises(ConfigError, match=r"100% of the training values lie outside the DP value range \[-5.0, 5.0\]"):
        Synthesizer("local", dp_epsilon=8.0, prior="none", epochs=1).fit(raw, progress=False)
    codec = ValueCodec(n_bins=32, binning="uniform", scaling="none", value_range=(-5.0, 5.0)).fit(data)
    check_dp_range(codec, data, (-5.0, 5.0))  # every value inside
    part = data.values.copy()
    part[:, :4] = 9.0  # 4 of 16 steps outside: 25 %, at the limit
    check_dp_range(codec, SeriesSet(part, data.lengths, data.item_id, data.channels), (-5.0, 5.0))
    part[:, 4] = 9.0
    with pytest.raises(ConfigError, match="31% of the training values"):
        check_dp_range(codec, SeriesSet(part, data.lengths, data.item_id, data.channels), (-5.0, 5.0))


@pytest.mark.parametrize("kwargs, message", [
    ({"dp_epsilon": 0}, "positive"),
    ({"dp_epsilon": 8, "dp_delta": 0.5}, "delta"),
    ({"dp_epsilon": 8, "conditions": ["item_id"]}, "item-id conditioning is refused"),
    ({"dp_epsilon": 8, "ensemble": 2}, "ensemble"),
])
def test_dp_refusals(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Synthesizer("local", epochs=1, **kwargs).fit(items(), progress=False)


def test_dp_fit_refuses_to_resume(tmp_path):
    with pytest.raises(ConfigError, match="cannot resume"):
        Synthesizer("local", dp_epsilon=8, epochs=1, prior="none").fit(items(), checkpoint_dir=tmp_path, resume=True,
                                                                          progress=False)


def test_dp_needs_enough_items():
    with pytest.raises(ConfigError, match="too few"):
        Synthesizer("local", dp_epsilon=8, epochs=1).fit(items(n=30), progress=False)


def walks(n, length=24, seed=0):
    rng = np.random.default_rng(seed)
    return SeriesSet.from_arrays(list(np.cumsum(rng.normal(size=(n, length)), axis=1)), [f"w{seed}_{i}" for i in range(n)])


def test_memorization_guard_drops_near_copies_and_counts_them():
    from tsynth.privacy import memorization_guard

    train, holdout, fresh = walks(40, seed=1), walks(40, seed=2), walks(30, seed=3)
    near = train.values[:5] + 1e-3
    synthetic = SeriesSet.concat([fresh, SeriesSet(near, np.full(5, 24), [f"c{i}" for i in range(5)], train.channels)])
    kept, report = memorization_guard(synthetic, train, holdout, percentile=5)
    assert report["dropped"] >= 5 and report["kept"] == len(kept) == 35 - report["dropped"]
    assert not any(i.startswith("c") for i in kept.item_id)
    assert report["dropped"] <= 5 + 4  # fresh series fall below the holdout's 5th percentile about 5% of the time
    _, loo = memorization_guard(synthetic, train, None)
    assert loo["threshold_source"].startswith("5th percentile of train leave-one-out")
    with pytest.raises(ConfigError, match="percentile"):
        memorization_guard(synthetic, train, holdout, percentile=0)


def test_likelihood_audit_detects_a_memorising_model():
    from tsynth.privacy import likelihood_mia

    torch.set_num_threads(1)
    train, holdout = walks(16, seed=4), walks(16, seed=5)
    syn = Synthesizer("local", prior="none", ensemble=1, epochs=60, n_bins=64, dropout=0.0,
                      learning_rate=1e-2).fit(train, progress=False)  # 16 items: no validation, it memorises
    audit = likelihood_mia(syn, train, holdout)
    assert audit["auc"] > 0.8 and audit["mean_loss_members"] < audit["mean_loss_nonmembers"]
    assert likelihood_mia(syn, holdout, holdout)["auc"] == 0.5
    assert audit["left_out"] == 0

    # non-members mostly beyond the training range are left out and counted: the codec's edge bins, not the
    # series, would set their likelihood
    beyond = holdout.values.copy()
    beyond[:4] += 1000.0
    beyond[4, :3] += 1000.0  # 3 of 24 values beyond: kept
    mixed = SeriesSet(beyond, holdout.lengths, holdout.item_id, holdout.channels)
    part = likelihood_mia(syn, train, mixed)
    assert (part["left_out"], part["nonmembers"], part["members"]) == (4, 12, 12)
    assert part["auc"] > 0.8
    beyond[4:] += 1000.0
    none = likelihood_mia(syn, train, SeriesSet(beyond, holdout.lengths, holdout.item_id, holdout.channels))
    assert none["auc"] is None and none["left_out"] == 16 and "beyond the training range" in none["reason"]
