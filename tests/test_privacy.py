"""Differential privacy of the local backend: accounting, refusals, public preprocessing."""

import logging

import numpy as np
import pytest
import torch

from tsynth import SeriesSet
from tsynth.backends.local import DP_MIN_PROB
from tsynth.codecs.values import ValueCodec
from tsynth.errors import ConfigError
from tsynth.privacy import EPSILON_TOLERANCE
from tsynth.synthesizer import Synthesizer


def items(n=80, length=16, seed=0):
    rng = np.random.default_rng(seed)
    vals = np.sin(np.arange(length)[None] / 3 + rng.uniform(0, 6, size=(n, 1))) + 0.1 * rng.normal(size=(n, length))
    return SeriesSet.from_arrays(list(vals), [f"u{i}" for i in range(n)])


def test_dp_fit_reports_epsilon_within_target(caplog):
    torch.set_num_threads(1)
    data = items()
    data.values[0, 0, 0] = 9.0  # outside the public bounds [-5, 5]: clipped and counted
    data.values[1:, :2, 0] = 0.0  # held by every other item for two steps: a point mass and a held value without DP
    assert ValueCodec(n_bins=32).fit(data).repeats[0] > 0
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        syn = Synthesizer("local", dp_epsilon=3.0, epochs=2, n_bins=32, batch_size=16).fit(data, progress=False)
    assert "outside the codec's range" in caplog.text
    priv = syn.info["privacy"]
    assert priv["unit"] == "item" and priv["items"] == 80
    # the noise is calibrated to spend the target, or less by at most EPSILON_TOLERANCE (the steps are the plan's)
    assert 3.0 - EPSILON_TOLERANCE <= priv["epsilon"] <= 3.0 * 1.05
    assert priv["noise_multiplier"] > 0.3 and priv["delta"] < 1 / 80
    codec = syn.info["codec"]
    assert codec["binning"] == "uniform" and codec["scaling"] == "none" and codec["value_range"] == [-5.0, 5.0]
    assert syn.info["training"]["valid_series"] == 0          # no data-dependent early stopping under DP
    assert syn.info["training"]["smoothing"] == 2.0            # nor a label smoothing measured on the data
    assert codec["point_mass_series"] == 0 and syn.backend.codec.point_masses == []  # nor the values that recur
    assert "repeats" not in codec and syn.backend.codec.repeats == []  # nor how often a value is held
    out = syn.sample(10, seed=0)
    assert out.values.shape == (10, 16, 1) and np.isfinite(out.values).all()
    assert syn.backend.options.min_prob == DP_MIN_PROB > 0  # a DP model draws above a floor (saved with it)
    assert Synthesizer("local", dp_epsilon=3.0, min_prob=0.0).backend.options.min_prob == 0.0  # unless told


def test_dp_refuses_data_mostly_outside_the_public_range():
    from tsynth.backends.local import check_dp_range

    data = items()
    raw = SeriesSet(data.values * 300 + 2000, data.lengths, data.item_id, data.channels)  # "kW"
    with pytest.raises(ConfigError, match=r"100% of the training values lie outside the DP value range \[-5.0, 5.0\]"):
        Synthesizer("local", dp_epsilon=8.0, prior="none", epochs=1).fit(raw, progress=False)
    codec = ValueCodec(n_bins=32, binning="uniform", scaling="none", value_range=(-5.0, 5.0)).fit(data)
    check_dp_range(codec, data)  # every value inside
    part = data.values.copy()
    part[:, :4] = 9.0  # 4 of 16 steps outside: 25 %, at the limit
    check_dp_range(codec, SeriesSet(part, data.lengths, data.item_id, data.channels))
    part[:, 4] = 9.0
    with pytest.raises(ConfigError, match="31% of the training values"):
        check_dp_range(codec, SeriesSet(part, data.lengths, data.item_id, data.channels))


def test_dp_profile_keeps_a_one_sided_range_inside_the_bins(caplog):
    """Values in [0, 1] less their step's released mean lie partly below 0: the bins must still hold them all."""
    data = items(n=400)  # enough items that the noisy release follows the mean
    unit = SeriesSet((data.values + 1.3) / 2.6, data.lengths, data.item_id, data.channels)  # in [0, 1]
    daily = 0.25 * np.sin(2 * np.pi * np.arange(16) / 16)  # a per-step mean that swings 0.25 - 0.75
    unit = SeriesSet(unit.values * 0.5 + 0.25 + daily[None, :, None], data.lengths, data.item_id, data.channels)
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        syn = Synthesizer("local", dp_epsilon=8.0, prior="none", value_range=(0.0, 1.0), epochs=1, n_bins=32,
                          batch_size=16).fit(unit, progress=False)
    assert "outside the codec's range" not in caplog.text
    codec = syn.backend.codec
    assert codec.outside_share(unit) == 0.0
    centre = np.asarray(codec.profile) * np.asarray(codec.scale)  # the released per-step mean, in data units
    truth = unit.values.mean(axis=0)[:, 0]
    assert np.corrcoef(centre[:, 0], truth)[0, 1] > 0.95  # it follows the swing (the release is noisy, not flat)
    units = codec.to_units(np.array([[[0.0]] * 16, [[1.0]] * 16]))  # the range's bounds at every step
    assert units.min() >= codec.edges[0] - 1e-9 and units.max() <= codec.edges[-1] + 1e-9
    out = syn.sample(20, seed=0)
    assert np.isfinite(out.values).all() and -1.0 <= out.values.min() and out.values.max() <= 2.0  # [0, 1] -/+ the swing


def test_dp_profile_keeps_a_sharp_mean_day_and_shrinks_noise_away():
    """The release keeps a mean day's sharp ramp (every Fourier frequency, denoised), and where the noise swamps
    the signal it gives a near-flat profile rather than the noise."""
    from opacus.accountants.utils import get_noise_multiplier

    from tsynth.privacy import dp_profile, fourier_basis

    basis = fourier_basis(24)
    assert np.allclose(basis.T @ basis, np.eye(24))
    rng = np.random.default_rng(0)
    ramp = np.where((np.arange(24) >= 7) & (np.arange(24) < 20), 0.9, -0.9)  # jumps at 7 and 20, as a day's load
    x = ramp[None, :, None] + 0.5 * rng.normal(size=(800, 24, 1))
    sigma = get_noise_multiplier(target_epsilon=2.0, target_delta=1e-5, sample_rate=1.0, steps=1, accountant="prv")
    errors = []
    for seed in range(5):
        profile, info = dp_profile(x, np.arange(800), sigma, np.random.default_rng(seed))
        errors.append(np.abs(profile[:, 0] - x.mean(0)[:, 0]).mean())
        assert info["basis_size"] == 24 and 0 < info["kept"] <= 24
    # the noise alone is about 0.01 a step; the harmonics up to 3 cycles a day miss the jumps by 0.15 on average
    assert max(errors) < 0.05
    flat, info = dp_profile(x, np.arange(800), 1e4, np.random.default_rng(0))  # noise 60 a coefficient
    assert info["kept"] < 24 and np.abs(flat).mean() < 30  # unshrunk, the noise is about 49 a step


def test_tilt_moves_draws_onto_a_target_mean():
    """The tilt's weights bring the draws' mean onto the target, even where part of the target lies out of reach
    (every draw sums to zero, the target does not); keeping draws by it gives that mean, reproducibly."""
    from tsynth.privacy import fit_tilt, tilt_keep

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(4000, 12, 2))
    draws -= draws.mean(axis=1, keepdims=True)  # each series centred, as standardised samples are
    target = np.zeros((12, 2))
    target[:6, 0], target[6:, 0] = 0.2, -0.2
    target[:, 1] = 0.05  # a mean no centred draw can have: the ridge keeps lambda finite
    exact = {"noise_sd": 1e-3, "kept": 24, "basis_size": 24}  # a release whose noise is far below the gap
    tilt = fit_tilt(draws, target, exact)
    assert np.isfinite(tilt["lambda"]).all() and 0.05 < tilt["kept"] < 1.0
    assert tilt["gap_before"] > 0.1 and tilt["gap_after"] < 0.05
    fresh = rng.normal(size=(40000, 12, 2))
    fresh -= fresh.mean(axis=1, keepdims=True)
    keep = tilt_keep(fresh, tilt, np.random.default_rng(1))
    assert np.array_equal(keep, tilt_keep(fresh, tilt, np.random.default_rng(1)))
    assert np.abs(fresh[keep].mean(axis=0)[:, 0] - target[:, 0]).mean() < 0.05  # 0.2 untilted
    assert np.abs(fresh[keep, :6, 0].mean() - 0.2) < 0.05
    # a release as noisy as the gap: moving onto it would trade the draws' error for its noise, so no tilt
    noisy = {"noise_sd": 0.2, "kept": 24, "basis_size": 24}
    assert fit_tilt(draws, target, noisy)["lambda"] is None and fit_tilt(draws, target, noisy)["release_error"] == 0.2


def test_dp_token_model_samples_from_its_tilt(tmp_path, monkeypatch):
    """A DP token model with a released profile keeps a tilt toward it (tsynth.json), draws from it by default,
    reproducibly and with the series' names in order, nearer the release than plain draws (tilt=False). (The tilt
    is taken here whatever the draws' gap, which the gate has its own test for. This one-epoch model's draws spread
    about 3 a step, so the tilt is fitted on many draws and judged on many, or the mean of the draws is mostly
    their own noise; the DP noise's seed is fixed.)"""
    monkeypatch.setattr("tsynth.privacy.TILT_MIN_GAP", 0.0)
    monkeypatch.setattr("tsynth.backends.local.TILT_DRAWS", 20000)
    monkeypatch.setattr("tsynth.privacy.secrets.randbits", lambda bits: 20261208)
    torch.set_num_threads(1)
    data = items(n=200)
    syn = Synthesizer("local", dp_epsilon=8.0, prior="none", epochs=1, n_bins=32, batch_size=32).fit(
        data, progress=False)
    tilt = syn.info["tilt"]
    assert np.shape(tilt["lambda"]) == (16, 1) and tilt["gap_after"] < tilt["gap_before"]
    assert 0.0 < tilt["kept"] <= 1.0
    target = np.asarray(syn.backend.codec.profile)[:, 0] * syn.backend.codec.scale[0]  # the release, data units
    tilted, plain = syn.sample(5000, seed=0), syn.sample(5000, seed=0, tilt=False)
    assert tilted.values.shape == plain.values.shape == (5000, 16, 1)
    assert list(tilted.item_id[:3]) == ["synthetic_0", "synthetic_1", "synthetic_2"]
    assert np.array_equal(tilted.values, syn.sample(5000, seed=0).values)
    gap = [np.abs(s.values[:, :, 0].mean(axis=0) - target).mean() for s in (tilted, plain)]
    assert gap[0] < 0.8 * gap[1], gap
    again = Synthesizer.load(syn.save(tmp_path / "m"))
    assert again.info["tilt"] == tilt and np.array_equal(again.sample(50, seed=2).values, syn.sample(50, seed=2).values)
    from tsynth.cli import main

    for k, (flags, kwargs) in enumerate((([], {}), (["--no-tilt"], {"tilt": False}))):
        out = tmp_path / f"s{k}.csv"
        assert main(["sample", str(tmp_path / "m"), "-n", "50", "--seed", "2", *flags, "-o", str(out)]) == 0
        written = SeriesSet.read(out).values
        assert np.allclose(written, syn.sample(50, seed=2, **kwargs).values, atol=1e-5)


def test_set_profile_remaps_the_range_onto_fixed_edges():
    """The same with a prior's fixed (unequal) edges: the public range less the profile maps inside them, and a
    value equal to its step's profile sits at the edges' centre (the prior was pretrained on centred series)."""

    data = items()
    edges = np.concatenate([[-5.0], np.sort(np.random.default_rng(0).normal(size=30)), [5.0]])
    grid = np.linspace(0.0, 10.0, 11)
    values = np.broadcast_to(grid[:, None, None], (11, 16, 1))
    for centre, centred in [(np.linspace(2.0, 4.0, 16), True), (np.linspace(0.0, 10.0, 16), True),
                            (np.linspace(2.0, 4.0, 16), False)]:
        codec = ValueCodec(n_bins=31, binning="quantile", scaling="none", value_range=(0.0, 10.0)).fit(data, edges=edges)
        codec.set_profile((centre[:, None] - 5.0) / 1.0, centred=centred)  # the release, in the first mapping's units
        units = codec.to_units(values)
        assert units.min() >= edges[0] - 1e-9 and units.max() <= edges[-1] + 1e-9  # the whole range inside
        back = (units + codec._profile(16)) * np.asarray(codec.scale) + np.asarray(codec.loc)  # decoding's inverse
        np.testing.assert_allclose(back[:, :, 0], values[:, :, 0], atol=1e-9)
        at_centre = codec.to_units(centre[None, :, None])
        if centred:
            np.testing.assert_allclose(at_centre, 0.0, atol=1e-9)  # the centre stays where the prior expects it
            assert abs(units.max() - edges[-1]) < 1e-9  # the side farther from the centre (up) fills its half
        else:
            assert abs(units.min() - edges[0]) < 1e-9 and abs(units.max() - edges[-1]) < 1e-9  # spans the edges
            assert abs(at_centre).min() > 1  # off the centre: from scratch only coverage counts
    with pytest.raises(ConfigError, match="scaling 'none'"):
        ValueCodec(n_bins=8).fit(data).set_profile(np.zeros((16, 1)), centred=False)


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


def test_dp_processes_split_each_poisson_sample_by_item():
    """Data-parallel DP-SGD: from one secret seed, the processes' live rows together are exactly the one-process
    sample, each row of an item the process owns (item k: process k mod 2); a process with none of the drawn
    items gets one placeholder row (not live), and a step that drew nothing is empty everywhere."""
    from tsynth.privacy import DPEngine, DPSettings

    items = np.repeat(np.arange(100), 3)  # three windows per item
    draws = []
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        engine = DPEngine(DPSettings(epsilon=8.0), items)
        engine.rank, engine.world = rank, world
        engine.rng = torch.Generator().manual_seed(5)
        engine.sample_rate = 0.02  # two items a step on average: steps where one process draws none of its own
        engine.epoch_steps = engine.steps_per_epoch(2)
        draws.append(engine.batches())
    one, zero, first = draws
    seen = set()
    for (rows, _), (r0, live0), (r1, live1) in zip(one, zero, first):
        together = sorted([*(r0.tolist() if live0 else []), *(r1.tolist() if live1 else [])])
        assert together == sorted(rows.tolist())
        if live0:
            assert all(items[r] % 2 == 0 for r in r0.tolist())
        if live1:
            assert all(items[r] % 2 == 1 for r in r1.tolist())
        for r, live in ((r0, live0), (r1, live1)):
            assert live or len(r) == 1  # a placeholder is one row
        seen.add("empty" if not len(rows) else "one side" if not (live0 and live1) else "both")
        if not len(rows):
            assert len(r0) == len(r1) == 0 and live0 and live1
    assert seen == {"empty", "one side", "both"}


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
