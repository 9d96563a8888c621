"""The local backend: value codec, training loop, constrained sampling, artifact round trip."""

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tsynth import SeriesSet
from tsynth.artifact import FORMAT_VERSION
from tsynth.codecs.values import ValueCodec, choose_scaling, settle
from tsynth.errors import ArtifactError, ConfigError, DataError
from tsynth.backends.local import SMALL_DATA_DROPOUT
from tsynth.synthesizer import Synthesizer
from tsynth.train import (FACTORED_POSITIONS_FROM, build_model, factor_positions, sequence_loss, smoothed_kernel,
                          step_smoothing)

# the token model (what priors are); tests/test_long_series.py covers the step model, the default without a prior
FAST = dict(epochs=3, preset="tiny", n_bins=32, ensemble=1, codec="token", prior="none")


def daily_profiles(n=40, length=24, seed=0, levels=None):
    """Noisy daily curves with a season attribute, hourly time stamps."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    season = rng.choice(["winter", "summer"], size=n)
    phase = np.where(season == "winter", 0.0, 1.5)
    vals = np.sin(2 * np.pi * t[None] / 24 + phase[:, None]) + 0.2 * rng.normal(size=(n, length))
    if levels is not None:
        vals = levels[:, None] * (2.0 + vals)
    start = pd.Timestamp("2024-01-01 00:00") + pd.to_timedelta(rng.integers(0, 3, size=n) * 24, unit="h")
    return SeriesSet.from_arrays(list(vals), [f"MT_{i:03d}" for i in range(n)], ["load"], start=start.to_numpy(),
                                 freq="h", attributes=pd.DataFrame({"season": season}))


def test_codec_roundtrip_stays_within_bins():
    data = daily_profiles()
    codec = ValueCodec(n_bins=64).fit(data)
    tokens = codec.encode(data)
    assert tokens.shape == (40, codec.sequence_length(24))
    p = codec.prefix_length
    values = tokens[:, p: p + 24]
    back = codec.decode(tokens[:, :p], values, np.full(40, 24), np.random.default_rng(0))
    width = np.diff(codec.edges).max() * codec.scale[0]
    assert np.abs(back.values - data.values).max() <= width + 1e-6
    assert codec.scaling == "global"


def test_value_bins_are_the_encoded_value_tokens():
    data = daily_profiles()
    codec = ValueCodec(n_bins=64).fit(data)
    bins, levels = codec.value_bins(data)
    p = codec.prefix_length
    assert levels is None and bins.shape == (40, 24, 1)
    assert np.array_equal(codec.encode(data)[:, p: p + 24], codec.value_offset + bins[..., 0])


def test_value_positions_are_step_plus_channel():
    torch.manual_seed(0)
    c = FACTORED_POSITIONS_FROM
    model = build_model(40, 2 + 5 * c + 1, "tiny")  # bos + one condition, 5 steps x c channels, eos
    before = model.transformer.wpe.weight.detach().clone()
    factor_positions(model, 2, c)
    wpe = model.transformer.wpe.weight.detach()
    assert torch.equal(wpe[:2], before[:2])  # the prefix keeps its own positions
    value = wpe[2: 2 + 5 * c].reshape(5, c, -1)
    # the same channel differs by the same vector at every step; the same step by the same across channels
    assert torch.allclose(value[1:] - value[:-1], (value[1:] - value[:-1])[:, :1].expand(-1, c, -1), atol=1e-6)
    assert torch.allclose(value[:, 1:] - value[:, :1], (value[:1, 1:] - value[:1, :1]).expand(5, -1, -1), atol=1e-6)
    assert abs(float(wpe[2:].std()) - model.config.initializer_range) < 0.003  # GPT-2's init scale kept
    narrow = build_model(40, 2 + 5 * (c - 1) + 1, "tiny")
    kept = narrow.transformer.wpe.weight.detach().clone()
    factor_positions(narrow, 2, c - 1)
    assert torch.equal(narrow.transformer.wpe.weight.detach(), kept)  # fewer channels: GPT-2's own init


def test_step_smoothing_is_half_each_channels_median_step():
    # channel 0 moves by 1 bin a step, channel 1 by 3, channel 2 by 10 (capped at 2 bins): up, down, up...
    bins = 50 + (np.arange(12) % 2)[None, :, None] * np.array([1, 3, 10])[None, None, :] + np.zeros((5, 1, 1), int)
    assert step_smoothing(bins, np.full(5, 12)) == [0.5, 1.5, 2.0]
    shorter = bins.copy()
    shorter[:, 6:] = 0  # beyond each series' length: not a step
    assert step_smoothing(shorter, np.full(5, 6)) == [0.5, 1.5, 2.0]
    assert step_smoothing(bins[:, :1], np.ones(5, int)) == [2.0, 2.0, 2.0]  # nothing to measure


def test_loss_smooths_each_channel_with_its_own_width():
    torch.manual_seed(0)
    v_lo, v_hi, first = 3, 19, 2   # 16 value tokens from id 3; values start at sequence position 2
    logits = torch.randn(2, 9, 20)
    targets = torch.randint(v_lo, v_hi, (2, 9))
    targets[:, 0] = 1               # a condition token: plain cross-entropy
    kernels = torch.stack([smoothed_kernel(16, 0.0), smoothed_kernel(16, 2.0)])
    logp = torch.log_softmax(logits, -1)
    expected = []
    for j in range(9):              # target j is the token at position j + 1: channel (j + 1 - first) % 2
        t = targets[:, j]
        if j == 0:
            expected.append(-logp[:, j].gather(-1, t[:, None])[:, 0])
        else:
            soft = kernels[(j + 1 - first) % 2][t - v_lo]
            expected.append(-(soft * logp[:, j, v_lo:v_hi]).sum(-1))
    got = sequence_loss(logits, targets, v_lo, v_hi, kernels, first, reduction="none")
    assert torch.allclose(got, torch.stack(expected, 1).mean(1), atol=1e-5)
    one = sequence_loss(logits, targets, v_lo, v_hi, kernels[1:], first, reduction="none")
    assert not torch.allclose(one, got)  # one width for both channels is another loss


def counts_and_readings(n=60, length=24, seed=0):
    """Two channels: integer counts (every value held by many series) and continuous readings."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=(n, length)).astype(float)
    readings = rng.normal(size=(n, length))
    readings[0] = 7.25  # one series repeats one value: held by one series only
    return SeriesSet(np.stack([counts, readings], axis=2).astype(np.float32), np.full(n, length),
                     [f"s{i}" for i in range(n)], ["count", "reading"])


def roundtrip(codec, data, seed=0):
    tokens = codec.encode(data)
    p = codec.prefix_length
    return codec.decode(tokens[:, :p], tokens[:, p:p + data.length * data.n_channels], data.lengths,
                        np.random.default_rng(seed)).values


def test_point_masses_decode_shared_values_exactly_in_their_proportions():
    data = counts_and_readings()
    codec = ValueCodec(n_bins=8).fit(data)  # coarse bins: several counts share a bin
    counts, readings = data.values[..., 0], data.values[..., 1]
    pm = codec.point_masses
    assert pm[0]["values"] and sorted(pm[0]["values"]) == pm[0]["values"]
    assert sum(pm[0]["counts"]) == counts.size and sum(pm[0]["rest"]) == 0
    assert pm[1]["values"] == [] and sum(pm[1]["rest"]) == readings.size  # 7.25: one series holds it
    back = np.concatenate([roundtrip(codec, data, seed) for seed in range(20)])
    assert np.array_equal(back[..., 0], np.round(back[..., 0]))  # counts stay integers
    assert set(np.unique(back[..., 0])) <= set(np.unique(counts))
    for v in np.unique(counts):  # each count as often as in the training data (20 draws of each value)
        assert abs((back[..., 0] == v).mean() - (counts == v).mean()) < 0.01, v
    assert not np.isin(back[..., 1], readings).any()  # continuous values: never a training value
    plain = ValueCodec(n_bins=8, point_mass_series=0).fit(data)
    assert plain.point_masses == [] and not np.isin(roundtrip(plain, data)[..., 0], counts).any()


def test_token_decoding_holds_values_for_runs_as_the_data_does():
    """Readings on a fixed resolution (ItalyPowerDemand's, a price that does not move) hold their value for runs of
    steps; a continuous reading never does. The token codec learns each channel's share of exact repeats among steps
    that stay in their bin and decodes the data's own tokens with that share; a codec without point masses (as under
    DP) has none, and a loaded codec keeps them."""
    rng = np.random.default_rng(3)
    held = np.round(np.cumsum(rng.normal(0, 0.4, (40, 48)), axis=1))  # whole units: runs of one reading
    smooth = np.cumsum(rng.normal(0, 0.05, (40, 48)), axis=1)
    data = SeriesSet(np.stack([held, smooth], axis=2).astype(np.float32), np.full(40, 48),
                     [f"s{i}" for i in range(40)], ["held", "smooth"])
    codec = ValueCodec(n_bins=16, point_mass_series=1000).fit(data)  # no value is a point mass: repeats alone
    assert codec.point_masses == [] and codec.repeats[0] > 0.5 and codec.repeats[1] == 0.0, codec.repeats
    bins = codec.value_bins(data)[0]
    same_bin = bins[:, 1:] == bins[:, :-1]
    back = np.concatenate([roundtrip(codec, data, seed) for seed in range(5)])
    exact = back[:, 1:] == back[:, :-1]
    share = (exact & np.tile(same_bin, (5, 1, 1))).sum(axis=(0, 1)) / (5 * same_bin.sum(axis=(0, 1)))
    assert abs(share[0] - codec.repeats[0]) < 0.03 and share[1] == 0.0, (share, codec.repeats)
    assert not (exact & ~np.tile(same_bin, (5, 1, 1))).any()  # a value is only held within its bin
    assert ValueCodec.from_dict(codec.to_dict()).repeats == codec.repeats
    plain = ValueCodec(n_bins=16, point_mass_series=0).fit(data)
    assert plain.repeats == [] and "repeats" not in plain.to_dict()
    assert not (roundtrip(plain, data)[:, 1:] == roundtrip(plain, data)[:, :-1]).any()


def slow_rates(n=160, length=52, seed=0):
    """Slowly changing yearly rates (like the World Bank's fertility rates): a level, a trend and a bend per series,
    with a little noise; every value continuous, so none is a point mass."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length)[None, :]
    x = rng.normal(4, 1, (n, 1)) + rng.normal(-1.5, 0.5, (n, 1)) * t + rng.normal(0, 0.5, (n, 1)) * t ** 2
    x = x + rng.normal(0, 0.002, x.shape)
    return SeriesSet(x[..., None].astype(np.float32), np.full(n, length), [f"s{i}" for i in range(n)], ["rate"])


def second_difference(x):
    """The median over series of the mean absolute second difference relative to the series' spread."""
    return float(np.median(np.abs(np.diff(x[..., 0], 2, axis=1)).mean(axis=1) / x[..., 0].std(axis=1)))


def test_smooth_data_settles_inside_its_bins_and_rough_data_is_decoded_as_drawn():
    """Values drawn each on its own inside narrow bins are far rougher than slowly changing rates. The codec learns
    how far a decoded value may move towards its neighbours, never out of its bin, and keeps it in tsynth.json; a
    random walk and a codec without point masses (as under DP) decode as drawn."""
    data = slow_rates()
    codec = ValueCodec().fit(data)
    assert len(codec.settle) == 1 and codec.settle[0] > 0, codec.settle
    as_drawn = ValueCodec.from_dict({**codec.to_dict(), "settle": []})
    back, drawn = roundtrip(codec, data), roundtrip(as_drawn, data)
    bins = codec.value_bins(data)[0]
    back_bins = codec.value_bins(SeriesSet(back, data.lengths, data.item_id, data.channels))[0]
    assert (back_bins != bins).mean() < 1e-3 and np.abs(back_bins.astype(int) - bins).max() <= 1  # float32 at edges
    real = second_difference(data.values)
    assert second_difference(drawn) > 2 * real and second_difference(back) < 1.5 * real, (
        real, second_difference(drawn), second_difference(back))
    assert not (back[:, 1:] == back[:, :-1]).any()  # no value meets its neighbour at a bin edge
    assert ValueCodec.from_dict(codec.to_dict()).settle == codec.settle
    assert "settle" not in as_drawn.to_dict()
    rng = np.random.default_rng(1)
    walk = SeriesSet(np.cumsum(rng.normal(size=(160, 52, 1)), axis=1).astype(np.float32), np.full(160, 52),
                     [f"w{i}" for i in range(160)], ["walk"])
    assert ValueCodec().fit(walk).settle == []
    assert ValueCodec(point_mass_series=0).fit(data).settle == []


def test_a_slow_reading_on_a_fixed_resolution_passes_through_the_readings_between():
    """A sensor read to 0.1 that moves slowly (interpolated weather): its readings are point masses, several to a
    bin. Drawn anew at every step they jump between any of their bin's, and repeat by themselves on top of the
    held share; settled, each takes the mass of its bin nearest to where it settled, the held share counts only
    what the data holds beyond the repeats that come by themselves, and the round trip is as rough as the data
    and holds as often."""
    rng = np.random.default_rng(2)
    t = np.arange(48)[None, :]
    x = np.round(15 + 3 * np.sin(t / 12 + rng.uniform(0, 6, (200, 1))) + rng.normal(0, 1, (200, 1)), 1)
    data = SeriesSet(x[..., None].astype(np.float32), np.full(200, 48), [f"s{i}" for i in range(200)], ["temp"])
    codec = ValueCodec(n_bins=32).fit(data)
    assert codec.point_masses and codec.settle and codec.settle[0] > 0, codec.settle
    as_drawn = ValueCodec(n_bins=32).fit(data)
    bins = as_drawn.value_bins(data)[0]
    as_drawn.settle = []
    as_drawn.bins.fit_repeats(data.values.astype(np.float64), bins)  # the share before the repeats by themselves
    assert codec.repeats[0] < as_drawn.repeats[0]
    back, drawn = roundtrip(codec, data), roundtrip(as_drawn, data)
    on_resolution = np.isin(back, data.values).mean()  # the point masses stay readings of the data's
    assert on_resolution > 0.9 and abs(on_resolution - np.isin(drawn, data.values).mean()) < 0.02

    def held(v):
        return float((v[:, 1:] == v[:, :-1]).mean())

    assert abs(held(back) - held(data.values)) < 0.5 * (held(drawn) - held(data.values)), (
        held(back), held(drawn), held(data.values))
    real = second_difference(data.values)
    assert abs(np.log(second_difference(back) / real)) < 0.5 * np.log(second_difference(drawn) / real) > 0.5, (
        real, second_difference(back), second_difference(drawn))


def test_settle_leaves_values_beside_gaps_and_fixed_values_where_they_were_drawn():
    x = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.2, 0.8])[None, :, None]
    lo, hi = np.zeros_like(x), np.ones_like(x)
    valid = np.array([True, True, True, False, True, True, True])[None, :, None]
    movable = valid & (np.arange(7) != 5)[None, :, None]
    out = settle(x, lo, hi, movable, valid, [0.9])
    assert np.isclose(out[0, 1, 0], 0.7)  # between its neighbours 0.5 and 0.9
    unmoved = [0, 2, 3, 4, 5, 6]  # the ends, both sides of the gap, the gap, the fixed value
    assert np.array_equal(out[0, unmoved, 0], x[0, unmoved, 0])
    assert np.array_equal(settle(x, lo, hi, movable, valid, [0.0]), x)


def test_held_values_follow_the_series_level_where_levels_span_orders_of_magnitude():
    """Meters that all read in whole kW: a small one holds its reading for runs of steps, a large one hardly
    ever. With per-series scaling the codec learns the held share by level group (quarters of the series by mean)
    and decoding gives each series its group's share, read from its own drawn level; one share for all would put
    holds on the large meters and too few on the small ones. A loaded codec keeps the groups; global scaling has
    none."""
    rng = np.random.default_rng(5)
    level = np.exp(rng.uniform(0.0, 7.0, 160))
    day = 1 + 0.3 * np.sin(2 * np.pi * np.arange(48) / 24)
    kw = np.round(level[:, None] * day[None, :] * (1 + rng.normal(0, 0.1, (160, 48))))
    data = SeriesSet(kw[..., None].astype(np.float32), np.full(160, 48), [f"m{i}" for i in range(160)], ["kw"])
    codec = ValueCodec(n_bins=32, scaling="series").fit(data)
    groups = codec.repeat_groups[0]
    assert len(groups["edges"]) == 3 and groups["shares"][0] > 0.5 > 0.1 > groups["shares"][-1], codec.repeat_groups
    assert groups["shares"][0] > codec.repeats[0] > groups["shares"][-1]
    quarter = np.searchsorted(groups["edges"], kw.mean(axis=1), side="right")
    bins = codec.value_bins(data)[0][..., 0]
    same_bin = bins[:, 1:] == bins[:, :-1]
    back = np.stack([roundtrip(codec, data, seed)[..., 0] for seed in range(4)])
    exact = (back[:, :, 1:] == back[:, :, :-1]) & same_bin[None]
    for g in (0, 3):  # the decoded share among steps that stay in their bin is the group's
        share = exact[:, quarter == g].sum() / (4 * same_bin[quarter == g].sum())
        assert abs(share - groups["shares"][g]) < 0.05, (g, share, groups["shares"])
    assert ValueCodec.from_dict(codec.to_dict()).repeat_groups == codec.repeat_groups
    assert ValueCodec(n_bins=32, scaling="global").fit(data).repeat_groups == []


def test_point_masses_need_enough_series():
    data = counts_and_readings()
    data.values[:3, :, 1] = 1.5  # three series hold 1.5

    def reading_masses(k):  # in the data's units
        codec = ValueCodec(n_bins=8, point_mass_series=k).fit(data)
        return np.asarray(codec.point_masses[1]["values"]) * codec.scale[1] + codec.loc[1]

    assert np.allclose(reading_masses(3), [1.5]) and reading_masses(4).size == 0


def test_point_masses_count_items_not_overlapping_windows():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(12, 200)).astype(float)  # 12 items: every count held by all of them
    readings = rng.normal(size=(12, 200))  # each reading held by one item only
    long = SeriesSet(np.stack([counts, readings], axis=2).astype(np.float32), np.full(12, 200),
                     [f"item{i}" for i in range(12)], ["count", "reading"])
    wins = long.sliding_windows(24, stride=1)  # each reading sits in up to 24 windows of its item
    pm = ValueCodec(n_bins=8).fit(wins).point_masses
    assert len(pm[0]["values"]) == 6 and sum(pm[0]["counts"]) == len(wins) * 24
    assert pm[1]["values"] == [] and sum(pm[1]["rest"]) == len(wins) * 24
    as_items = SeriesSet(wins.values, wins.lengths, [f"w{i}" for i in range(len(wins))], wins.channels)
    assert len(ValueCodec(n_bins=8).fit(as_items).point_masses[1]["values"]) > 1000  # each window its own item


def test_no_point_masses_with_series_scaling(caplog):
    data = daily_profiles(levels=10.0 ** np.linspace(0, 4, 40))
    data.values[:, :3, 0] = 0.0  # a value every series holds
    with caplog.at_level(logging.INFO, logger="tsynth"):
        codec = ValueCodec(n_bins=64).fit(data)
    assert codec.scaling == "series" and codec.point_masses == [] and "per-series scaling" in caplog.text


def test_point_masses_saved_beside_the_model(tmp_path):
    torch.set_num_threads(1)
    syn = Synthesizer("local", **FAST).fit(counts_and_readings(), progress=False)
    path = syn.save(tmp_path / "m")
    doc = json.loads((path / "tsynth.json").read_text())
    assert doc["codec"]["point_masses_per_channel"][0] > 0
    out = Synthesizer.load(path).sample(30, seed=2).values
    np.testing.assert_array_equal(out, syn.sample(30, seed=2).values)
    assert np.array_equal(out[..., 0], np.round(out[..., 0]))
    (path / "point_masses.npz").unlink()
    with pytest.raises(ArtifactError, match="point_masses.npz is missing"):
        Synthesizer.load(path)


def test_codec_series_scaling_reproduces_levels():
    levels = 10.0 ** np.linspace(0, 4, 40)  # levels over four orders of magnitude
    data = daily_profiles(levels=levels)
    codec = ValueCodec(n_bins=64).fit(data)
    assert codec.scaling == "series"
    tokens = codec.encode(data)
    p = codec.prefix_length
    back = codec.decode(tokens[:, :p], tokens[:, p: p + 24], np.full(40, 24), np.random.default_rng(0))
    ratio = back.values.mean(axis=(1, 2)) / data.values.mean(axis=(1, 2))
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio


def test_auto_scaling_judges_the_typical_channel():
    rng = np.random.default_rng(0)
    level = 1.0 + rng.random((200, 1, 1))  # levels within 2x
    steady = level * (1.0 + 0.1 * rng.normal(size=(200, 24, 3)))
    switch = np.where(rng.random((200, 1, 1)) < 0.4, 0.0, 10.0 ** rng.uniform(-2, 0, (200, 1, 1)))
    lights = switch * rng.random((200, 24, 1))  # off in 40 % of the series, on at levels spanning 100x
    mixed = SeriesSet.from_arrays(list(np.concatenate([steady, lights], axis=2)), None, ["a", "b", "c", "lights"])
    assert choose_scaling(mixed) == "global"
    clients = SeriesSet.from_arrays(list(10.0 ** rng.uniform(0, 3, (200, 1, 1)) * steady), None, ["a", "b", "c"])
    assert choose_scaling(clients) == "series"
    some_off = steady[..., :1] * (rng.random((200, 1, 1)) > 0.3)  # zero series are not a level span
    assert choose_scaling(SeriesSet.from_arrays(list(some_off), None, ["a"])) == "global"


def test_codec_conditions_and_unknown_fallback(caplog):
    data = daily_profiles()
    codec = ValueCodec(n_bins=16, conditions="auto").fit(data)
    assert [f.name for f in codec.fields] == ["season", "dayofweek"]
    unknown = codec.field_offset(0)
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        ids = codec.condition_ids({"season": "autumn"})
    assert ids[0] == unknown and "never seen" in caplog.text
    with pytest.raises(ConfigError, match="unknown condition 'colour'"):
        ValueCodec(conditions=["colour"]).fit(data)


def test_codec_saved_as_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    codec = ValueCodec(n_bins=16).fit(daily_profiles())
    codec.hf_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok("<bos> <v_3> <v_0> <eos>", add_special_tokens=False)["input_ids"]
    assert ids == [1, codec.value_offset + 3, codec.value_offset, 2]


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    data = daily_profiles(n=60)
    syn = Synthesizer("local", conditions=["item_id", "season"], **FAST).fit(data, progress=False)
    return data, syn


def test_fit_records_training_figures(fitted):
    _, syn = fitted
    tr = syn.info["training"]
    assert tr["train_series"] + tr["valid_series"] == 60 and tr["valid_series"] > 0
    m = tr["members"][0]
    assert m["epochs_run"] == 3 and len(m["train_loss"]) == 3 and len(m["valid_loss"]) == 3
    assert m["train_loss"][-1] < m["train_loss"][0]
    # one label-smoothing width for the one channel: half its median step (noisy sines move by several bins)
    assert len(tr["smoothing"]) == 1 and 0.5 <= tr["smoothing"][0] <= 2.0


def test_sample_exact_length_seeded_and_conditioned(fitted):
    data, syn = fitted
    a = syn.sample(20, seed=1, temperature=1.0)
    b = syn.sample(20, seed=1, temperature=1.0)
    c = syn.sample(20, seed=2, temperature=1.0)
    assert a.values.shape == (20, 24, 1) and (a.lengths == 24).all() and np.isfinite(a.values).all()
    np.testing.assert_array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)
    assert set(a.item_id) <= set(data.item_id)            # unconditional: ids drawn from training ids
    assert set(a.attributes["season"]) <= {"winter", "summer"}
    cond = syn.sample(5, conditions={"item_id": "MT_007", "season": "summer"}, seed=0)
    assert list(cond.item_id) == ["MT_007"] * 5 and list(cond.attributes["season"]) == ["summer"] * 5



def test_batches_on_several_threads_give_the_same_series(fitted):
    from tsynth.sample import generate

    _, syn = fitted
    models, codec = syn.backend.models, syn.backend.codec
    one = generate(models, codec, 23, batch_size=5, workers=1, seed=3)
    three = generate(models, codec, 23, batch_size=5, workers=3, seed=3)
    np.testing.assert_array_equal(one.values, three.values)
    assert list(one.item_id) == list(three.item_id)
    assert not np.array_equal(one.values[:5], one.values[5:10])  # each batch draws its own series


def test_tokens_are_drawn_with_their_probabilities_and_never_an_impossible_one():
    from tsynth.sample import draw_tokens

    gen = torch.Generator().manual_seed(0)
    n = 200_000
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0]).expand(n, 5).contiguous()
    for rows, top_p, expected in ((probs, 1.0, [0.1, 0, 0.6, 0.3, 0]), (probs * 3, 1.0, [0.1, 0, 0.6, 0.3, 0]),
                                  (probs, 0.65, [0, 0, 2 / 3, 1 / 3, 0])):
        counts = torch.bincount(draw_tokens(rows, top_p, gen), minlength=5)
        np.testing.assert_allclose((counts / n).numpy(), expected, atol=0.005)
        assert counts[1] == 0 and counts[4] == 0
    # one row of almost all mass on the last possible token: rounding never reaches the impossible tail
    tail = torch.zeros(n, 6)
    tail[:, 0], tail[:, 3] = 1e-7, 1.0
    assert set(draw_tokens(tail, 1.0, gen).tolist()) <= {0, 3}


def test_a_sampling_floor_cuts_only_unlikely_value_tokens():
    from tsynth.sample import floor_values

    probs = torch.tensor([[0.05, 0.02, 0.5, 0.3, 0.1, 0.03],     # ids 1-4 are values: 0.02 falls below the floor
                          [0.6, 0.1, 0.1, 0.1, 0.06, 0.04]])     # every value below it: the likeliest is kept
    out = floor_values(probs, 1, 5, 0.15)
    np.testing.assert_allclose(out[0].numpy(), [0.05, 0.0, 0.5, 0.3, 0.0, 0.03])
    np.testing.assert_allclose(out[1].numpy(), [0.6, 0.1, 0.1, 0.1, 0.0, 0.04])
    assert floor_values(probs, 1, 5, 0.0) is probs
    np.testing.assert_allclose(floor_values(probs * 4, 1, 5, 0.15).numpy(), out.numpy() * 4)  # a share of the row


def test_a_high_sampling_floor_draws_the_likeliest_value_every_step(fitted):
    """With a floor above every runner-up, each value position keeps its likeliest token alone: series drawn
    with different seeds from the same conditions are then the same; with no floor they differ."""
    _, syn = fitted
    assert syn.backend.options.min_prob == 0.0  # without DP no floor is the default
    cond = [{"item_id": "MT_007", "season": "summer"}] * 6
    bins = syn.backend.codec.value_bins  # tokens, not values: decoding places each value in its bin by the seed
    greedy = [bins(syn.sample(6, conditions=cond, seed=s, min_prob=0.999))[0] for s in (0, 1)]
    np.testing.assert_array_equal(greedy[0], greedy[1])
    free = [bins(syn.sample(6, conditions=cond, seed=s))[0] for s in (0, 1)]
    assert not np.array_equal(free[0], free[1])
    with pytest.raises(ConfigError, match="min_prob"):
        syn.sample(3, min_prob=1.0)


def test_cached_sampling_follows_the_model_token_by_token(fitted):
    """Greedy decoding (a vanishing nucleus) through the preallocated cache picks, at every position, the
    allowed token a full forward pass over the prefix ranks first: through the model's own forward and its cache,
    and through the stacked members' (tsynth.stacked)."""
    from tsynth.sample import _generate_batch, _OneByOne
    from tsynth.stacked import stack_members

    _, syn = fitted
    model, codec = syn.backend.models[0], syn.backend.codec
    device = next(model.parameters()).device  # cuda after a fit where there is one
    ranges = codec.prefix_slots() + [(codec.value_offset, codec.value_offset + codec.n_value_tokens)] * 24
    for decoder in (_OneByOne([model]), stack_members([model])):
        prefix, values, _ = _generate_batch(decoder, codec, [{}] * 4, 4, 24, 1.0, 1e-9,
                                            torch.Generator().manual_seed(0), device)
        tokens = torch.from_numpy(np.concatenate([prefix, values], axis=1))
        with torch.no_grad():
            logits = model(input_ids=tokens[:, :-1].to(device)).logits.cpu()
        for pos, (lo, hi) in enumerate(ranges, start=1):
            expected = logits[:, pos - 1, lo:hi].argmax(-1) + lo
            assert torch.equal(tokens[:, pos], expected), pos

def test_sample_bad_requests(fitted):
    _, syn = fitted
    with pytest.raises(ConfigError, match="positive"):
        syn.sample(0)
    with pytest.raises(ConfigError, match="temperature"):
        syn.sample(3, temperature=0)
    with pytest.raises(ConfigError, match=r"longer than this token model draws \(\d+ steps.*--codec step"):
        syn.sample(3, length=100)   # a token model ends near its training length


def test_save_load_same_samples_and_plain_hf_loading(fitted, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, syn = fitted
    path = syn.save(tmp_path / "m")
    doc = json.loads((path / "tsynth.json").read_text())
    assert doc["format_version"] == FORMAT_VERSION and doc["backend"] == "local"
    again = Synthesizer.load(path)
    np.testing.assert_allclose(again.sample(8, seed=3).values, syn.sample(8, seed=3).values)
    model = AutoModelForCausalLM.from_pretrained(path / "model")
    tok = AutoTokenizer.from_pretrained(path / "model")
    assert model.config.vocab_size == len(tok)


def test_load_rejects_other_format_version(fitted, tmp_path):
    _, syn = fitted
    path = syn.save(tmp_path / "m")
    doc = json.loads((path / "tsynth.json").read_text())
    doc["format_version"] = FORMAT_VERSION + 1
    (path / "tsynth.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="format version"):
        Synthesizer.load(path)


def test_too_few_series():
    with pytest.raises(DataError, match="too few"):
        Synthesizer("local", **FAST).fit(daily_profiles(n=5), progress=False)


def test_unknown_option():
    with pytest.raises(ConfigError, match="unknown option"):
        Synthesizer("local", colour="blue")


def test_time_limit_plans_the_steps_that_fit():
    from tsynth.train import TrainConfig, TrainResult, _lr_factor, steps_that_fit

    # 10 steps per epoch at 1 s each, validation 2 s: 30 s hold two full epochs (24 s) and 4 steps + validation
    assert steps_that_fit(30.0, 1.0, 2.0, 10, 0) == 24
    assert steps_that_fit(30.0, 1.0, 2.0, 10, 6) == 4 + 20          # finish this epoch (6 s), two more (24 s)
    assert steps_that_fit(5.0, 1.0, 2.0, 10, 3) == 3                # not even this epoch: 3 steps, then validate
    assert steps_that_fit(1.0, 1.0, 2.0, 10, 3) == 0
    result = TrainResult(steps_planned=100)
    assert _lr_factor(0, result, 30) == pytest.approx(1 / 30)        # plain: three epochs of warm-up
    result.time_limited = True
    assert _lr_factor(0, result, 30) == pytest.approx(1 / 10)        # limited: a tenth of the planned steps
    assert _lr_factor(100, result, 30) == pytest.approx(0.0)         # the cosine ends with the plan
    with pytest.raises(ConfigError, match="time_limit_s"):
        TrainConfig(time_limit_s=0)


def test_time_limit_plan_grows_when_the_first_steps_were_slow(monkeypatch):
    from tsynth import train

    clock = [0.0]
    monkeypatch.setattr(train.time, "time", lambda: clock[0])
    # 100 steps an epoch, 3 epochs configured, 120 s allowed; validation: 10 batches of 0.2 s. The first 5 steps
    # take 2 s each (start-up), the rest 0.5 s: 10 + 2 (validation) + 0.5 s a step leave room for ~215 steps
    def validate_batch():
        clock[0] += 0.2

    limit = train._TimeLimit(120.0, 100, 300, validate_batch, 10)
    result = train.TrainResult(epochs_planned=3, steps_planned=300)
    plans = []
    while result.steps < result.steps_planned:
        clock[0] += 2.0 if result.steps < 5 else 0.5
        result.steps += 1
        limit.after_step(result)
        plans.append(result.steps_planned)
        if result.steps % 100 == 0 or result.steps >= result.steps_planned:
            limit.validation_starts()
            clock[0] += 2.0
            limit.validation_ends()
            limit.after_epoch(result)
    assert plans[4] < 60                                  # planned from the slow start: (120 - 10 - 2) / 2 s
    assert result.time_limited and 200 <= result.steps <= 216 and result.epochs_planned == 3
    assert 110 <= clock[0] <= 120                          # the run used the limit and kept to it
    roomy = train._TimeLimit(1e6, 100, 300, validate_batch, 10)
    result = train.TrainResult(epochs_planned=3, steps_planned=300)
    for _ in range(5):
        result.steps += 1
        roomy.after_step(result)
    assert result.steps_planned == 300 and not result.time_limited   # never beyond the configured epochs


def test_fit_with_time_limit_stops_inside_the_first_epoch():
    torch.set_num_threads(1)
    syn = Synthesizer("local", **{**FAST, "epochs": 50, "batch_size": 4},
                      time_limit_s=1e-3).fit(daily_profiles(n=30), progress=False)
    member = syn.info["training"]["members"][0]
    assert member["time_limited"] and member["epochs_run"] == 1 and member["epochs_planned"] == 1
    assert member["steps"] == member["steps_planned"] == 1         # one step of a 7-step epoch, then validation
    assert len(member["valid_loss"]) == 1 and member["best_epoch"] == 1
    assert syn.sample(3, seed=0).values.shape == (3, 24, 1)
    roomy = Synthesizer("local", **FAST, time_limit_s=1e6).fit(daily_profiles(n=30), progress=False)
    assert not roomy.info["training"]["members"][0]["time_limited"]
    assert roomy.info["training"]["members"][0]["epochs_run"] == 3
    with pytest.raises(ConfigError, match="time limit is not supported with differential privacy"):
        Synthesizer("local", dp_epsilon=8.0, time_limit_s=60)


def test_interrupted_fit_resumes_from_checkpoint(tmp_path, caplog):
    """A fit stopped after epoch 2 resumes at epoch 3 with the losses of an uninterrupted fit; saving checkpoints of
    the tied-weight model logs nothing (accelerate warns of the shared tensor at every save)."""
    torch.set_num_threads(1)
    data = daily_profiles(n=30)
    ckpt = tmp_path / "ckpt"

    def stop_after_two(event):
        if event["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Synthesizer("local", **{**FAST, "epochs": 4}).fit(data, checkpoint_dir=ckpt, callback=stop_after_two,
                                                         progress=False)
    progress = json.loads((ckpt / "member_0" / "progress.json").read_text())
    assert progress["epoch"] == 2
    epochs = []
    syn = Synthesizer("local", **{**FAST, "epochs": 4}).fit(data, checkpoint_dir=ckpt, resume=True, progress=False,
                                                           callback=lambda e: epochs.append(e["epoch"]))
    assert epochs == [3, 4]
    assert syn.info["training"]["members"][0]["epochs_run"] == 4
    full = Synthesizer("local", **{**FAST, "epochs": 4}).fit(data, progress=False)
    np.testing.assert_allclose(syn.info["training"]["members"][0]["train_loss"],
                               full.info["training"]["members"][0]["train_loss"], rtol=1e-4)
    assert "shared tensor" not in caplog.text



def test_a_run_killed_while_saving_a_checkpoint_resumes_from_the_previous_one(tmp_path, monkeypatch):
    """A kill after epoch 2's state is written but before the pointer moves: resume starts from epoch 1's
    complete state, not from a half-replaced one."""
    import tsynth.train

    torch.set_num_threads(1)
    data, ckpt = daily_profiles(n=30), tmp_path / "ckpt"
    real_replace, pointer_moves = tsynth.train.os.replace, []

    def killed_at_the_second_pointer(src, dst):
        if str(dst).endswith("progress.json"):
            pointer_moves.append(dst)
            if len(pointer_moves) == 2:
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(tsynth.train.os, "replace", killed_at_the_second_pointer)
    with pytest.raises(KeyboardInterrupt):
        Synthesizer("local", **{**FAST, "epochs": 3}).fit(data, checkpoint_dir=ckpt, progress=False)
    monkeypatch.setattr(tsynth.train.os, "replace", real_replace)
    member = ckpt / "member_0"
    assert json.loads((member / "progress.json").read_text())["state"] == "epoch-1"
    assert (member / "epoch-1").is_dir() and (member / "epoch-2").is_dir()  # the new state, not yet pointed at
    epochs = []
    syn = Synthesizer("local", **{**FAST, "epochs": 3}).fit(data, checkpoint_dir=ckpt, resume=True, progress=False,
                                                           callback=lambda e: epochs.append(e["epoch"]))
    assert epochs == [2, 3]
    assert syn.info["training"]["members"][0]["epochs_run"] == 3
    assert sorted(p.name for p in member.glob("epoch-*")) == ["epoch-3"]  # older states removed

def test_variable_length_training_samples_variable_lengths():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    arrays = [np.sin(np.arange(n) / 3) + 0.1 * rng.normal(size=n) for n in rng.integers(10, 21, size=30)]
    data = SeriesSet.from_arrays(arrays)
    syn = Synthesizer("local", **{**FAST, "epochs": 6}).fit(data, progress=False)
    out = syn.sample(30, length=20, seed=0)
    assert out.lengths.max() <= 20 and out.lengths.min() >= 1
    assert all(np.isfinite(out.series(i)).all() for i in range(30))


def test_time_limit_trains_fewer_members_when_an_epoch_of_each_would_not_fit(tmp_path, caplog):
    """The limit is the whole fit's: without --ensemble, members are dropped (down to one round of workers)
    while MIN_MEMBER_EPOCHS epochs of each would not fit its share; a given ensemble size is kept; a resumed fit follows the
    plan kept with the checkpoints."""
    torch.set_num_threads(1)
    data = daily_profiles(n=30)
    opts = {k: v for k, v in FAST.items() if k != "ensemble"}
    with caplog.at_level("WARNING", logger="tsynth"):
        tight = Synthesizer("local", **opts, workers=1, time_limit_s=1e-3).fit(data, progress=False,
                                                                              checkpoint_dir=tmp_path / "ck")
    assert len(tight.backend.models) == 1 and "so 1 of 6 models are trained" in caplog.text
    plan = json.loads((tmp_path / "ck" / "plan.json").read_text())
    assert plan == tight.info["training"]["time_plan"] and plan["members"] == 1 and plan["epoch_s"] > 0
    assert plan["dropout"] == 0.0 and tight.backend.models[0].config.attn_pdrop == 0.0  # less than one epoch
    given = Synthesizer("local", **opts, ensemble=2, workers=1, time_limit_s=1e-3).fit(data, progress=False)
    assert [m["steps"] for m in given.info["training"]["members"]] == [1, 1]  # kept, each cut to one step
    roomy = Synthesizer("local", **opts, workers=1, time_limit_s=1e6).fit(data, progress=False)
    assert len(roomy.backend.models) == 6 and roomy.info["training"]["time_plan"]["dropout"] == SMALL_DATA_DROPOUT
    assert not any(m["time_limited"] for m in roomy.info["training"]["members"])
    (tmp_path / "planned").mkdir()
    (tmp_path / "planned" / "plan.json").write_text(json.dumps({"members": 2, "time_limit_s": 1e6, "epoch_s": 1.0,
                                                                "dropout": 0.1}))
    resumed = Synthesizer("local", **opts, workers=1, time_limit_s=1e-3).fit(data, progress=False, resume=True,
                                                                            checkpoint_dir=tmp_path / "planned")
    assert len(resumed.backend.models) == 2
    assert not any(m["time_limited"] for m in resumed.info["training"]["members"])


def test_ensemble_members_train_in_parallel_processes_deterministically():
    torch.set_num_threads(1)
    data = daily_profiles(n=30)
    events = []
    opts = {**FAST, "ensemble": 2, "epochs": 2}
    par = Synthesizer("local", **opts, workers=2).fit(data, progress=False, callback=events.append)
    seq = Synthesizer("local", **opts, workers=1).fit(data, progress=False)
    assert sorted((e["member"], e["epoch"]) for e in events) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert len(par.backend.models) == 2
    for a, b in zip(par.info["training"]["members"], seq.info["training"]["members"]):
        np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(par.sample(4, seed=0).values, seq.sample(4, seed=0).values, atol=1e-5)


KILLED_FIT = """
import sys
import numpy as np
from tsynth import SeriesSet, Synthesizer
rng = np.random.default_rng(0)
vals = np.sin(np.arange(24)[None] / 3 + rng.uniform(0, 6, (40, 1))) + 0.1 * rng.normal(size=(40, 24))
data = SeriesSet.from_arrays(list(vals), [f"u{i}" for i in range(40)])
Synthesizer("local", codec="token", epochs=100000, patience=100000, n_bins=32, ensemble=2, workers=2).fit(
    data, progress=False)
"""


def _processes_reading(directory) -> list[int]:
    """Pids of the processes whose command line names a path inside ``directory``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(directory) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads process command lines from /proc")
def test_members_stop_and_remove_their_inputs_when_the_fit_is_killed(tmp_path):
    """A fit killed outright (SIGKILL: nothing of it runs again) leaves no member training on and no training data
    behind in its temporary directory."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    fit = subprocess.Popen([sys.executable, "-c", KILLED_FIT], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_processes_reading(tmp_path)) < 2:
            time.sleep(0.5)
        members = _processes_reading(tmp_path)
        assert len(members) == 2 and len(list(tmp_path.glob("tsynth-members-*"))) == 1
    finally:
        fit.send_signal(signal.SIGKILL)
        fit.wait()
    deadline = time.time() + 30
    while time.time() < deadline and (_processes_reading(tmp_path) or list(tmp_path.glob("tsynth-members-*"))):
        time.sleep(0.5)
    assert _processes_reading(tmp_path) == [] and list(tmp_path.glob("tsynth-members-*")) == []


def test_a_worker_whose_fit_is_gone_before_it_starts_removes_its_inputs(tmp_path):
    """A fit killed while its member workers are still starting (importing torch) is gone before they could read who
    started them: each worker is told its parent's pid, so it still sees the fit gone, removes the private inputs
    directory (where job files with the encoded training data would lie) and exits."""
    import subprocess
    import sys
    import tempfile

    from tsynth.backends.local import MEMBERS_TMP_PREFIX

    inputs = Path(tempfile.mkdtemp(prefix=MEMBERS_TMP_PREFIX, dir=tmp_path))
    (inputs / "member_0.pt").write_bytes(b"encoded training data")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that is no longer anyone's parent
    worker = subprocess.Popen([sys.executable, "-m", "tsynth.backends.local", str(inputs), str(gone.pid)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert worker.wait(timeout=120) == 1
    assert not inputs.exists()


def test_stacked_members_compute_what_each_members_own_forward_does():
    """The ensemble decoded as one (weights stacked, one cache), each member over its own series, gives, position
    by position, the logits each member's own Hugging Face forward gives over its whole sequences; models that
    differ in shape, or are not GPT-2, are not stacked."""
    from tsynth.stacked import stack_members
    from tsynth.tokenmodel import build_model

    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = build_model(vocab_size=23, n_positions=16, preset="tiny", dropout=0.0).eval()
        with torch.no_grad():  # GPT-2's init leaves biases and layer norms at 0 and 1: give them values to check
            for name, p in model.named_parameters():
                if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                    p.add_(0.1 * torch.randn_like(p))
        models.append(model)
    rows = torch.randint(0, 23, (3, 5, 12), generator=torch.Generator().manual_seed(0))  # each member its own series
    stacked = stack_members(models)
    cache = stacked.start(5, 12)
    steps = torch.stack([stacked.step(rows[:, :, pos], pos, cache) for pos in range(12)], dim=2)  # (M, B, T, V)
    with torch.no_grad():
        own = torch.stack([m(input_ids=r).logits for m, r in zip(models, rows)])
    assert steps.shape == own.shape and torch.allclose(steps, own, atol=1e-5), (steps - own).abs().max()
    assert stack_members(models + [build_model(23, 24, "tiny", 0.0)]) is None  # another context length
    assert stack_members([torch.nn.Linear(2, 2)]) is None


def test_an_ensemble_draws_each_series_from_one_member(fitted):
    """Beside a fitted member, one that puts nearly all its mass on the top value bin: each series comes from one
    of them (the members take even shares of the series, in random order), so a series is at the top bin
    throughout or hardly at all, through the stacked members and one by one alike. The draw is reproducible,
    whatever the workers, and an ensemble of many members draws series in shares as even as their count allows."""
    import copy

    import tsynth.sample as sample

    _, syn = fitted
    good, codec = syn.backend.models[0], syn.backend.codec
    top = copy.deepcopy(good)
    with torch.no_grad():  # the last layer norm gives one vector e, and the output layer (untied) scores e for one token
        e = torch.ones_like(top.transformer.ln_f.bias) / top.config.n_embd ** 0.5
        top.transformer.ln_f.weight.zero_()
        top.transformer.ln_f.bias.copy_(e)
        head = torch.zeros_like(top.lm_head.weight)
        head[codec.value_offset + codec.n_value_tokens - 1] = 30 * e
        top.lm_head.weight = torch.nn.Parameter(head)
    ceiling = sample.generate([top], codec, 40, seed=0).values.min()
    assert (sample.generate([good], codec, 40, seed=0).values < ceiling).mean() > 0.9
    series = sample.generate([good, top], codec, 40, seed=3)
    at_top = (series.values >= ceiling).mean(axis=(1, 2))
    assert sorted(np.round(at_top).tolist()) == [0.0] * 20 + [1.0] * 20 and ((at_top < 0.3) | (at_top > 0.9)).all()
    two_workers = sample.generate([good, top], codec, 40, seed=3, batch_size=16, workers=2)
    one_worker = sample.generate([good, top], codec, 40, seed=3, batch_size=16, workers=1)
    np.testing.assert_array_equal(two_workers.values, one_worker.values)
    good.config.scale_attn_weights = False  # members that do not stack are decoded one by one, each its own rows
    try:
        assert sample.stack_members([good, top]) is None
        plain = (sample.generate([good, top], codec, 40, seed=3).values >= ceiling).mean(axis=(1, 2))
    finally:
        good.config.scale_attn_weights = True
    assert sorted(np.round(plain).tolist()) == [0.0] * 20 + [1.0] * 20
    many = [good] * 13 + [top] * 2  # 15 members, 40 series: each member draws 2 or 3 of them
    at_top = (sample.generate(many, codec, 40, seed=5, batch_size=16).values >= ceiling).mean(axis=(1, 2))
    assert 4 <= np.round(at_top).sum() <= 6
    one, again = (sample.generate(many, codec, 40, seed=4, batch_size=16) for _ in range(2))
    assert one.values.shape == (40, codec.length, codec.n_channels) and not np.isnan(one.values).any()
    np.testing.assert_array_equal(one.values, again.values)


def test_a_step_ensemble_averages_its_members_distributions():
    """Two step-model members that disagree on their favourite bin: the pooled distribution is the mean of theirs
    at the temperature (a mixture), so each member's favourite keeps at least half the mass that member gives it."""
    from tsynth.sample import pooled_probs

    a, b = torch.tensor([[3.0, 0.0, 2.0]]), torch.tensor([[0.0, 3.0, 2.0]])
    pooled = pooled_probs([a, b], 1.0)
    assert torch.allclose(pooled, (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2)
    assert pooled[0, 0] >= torch.softmax(a, -1)[0, 0] / 2 and pooled[0, 1] >= torch.softmax(b, -1)[0, 1] / 2
    assert pooled[0, 2] < pooled[0, 0]  # the token both find second best stays second
    hot = pooled_probs([a, b], 2.0)
    assert torch.allclose(hot, (torch.softmax(a / 2, -1) + torch.softmax(b / 2, -1)) / 2) and hot.max() < pooled.max()
    assert torch.allclose(pooled_probs([a], 1.0), torch.softmax(a, -1))
