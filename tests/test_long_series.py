"""Long series, many channels and gaps: the step codec, the step model, sliding generation, CLI and bad input."""

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tsynth import SeriesSet, Synthesizer
from tsynth.cli import main
from tsynth.codecs import steps as steps_module
from tsynth.codecs import profiles as profiles_module
from tsynth.codecs.calendar import calendar_values
from tsynth.codecs.steps import CROSS_RANK, OWN_LAGS, PANEL_MIN_SERIES, StepCodec, default_context
from tsynth.codecs.values import WIDE_BIN, WIDE_PIECES, ValueCodec
from tsynth.errors import ConfigError, DataError
from tsynth.prior import resolve_prior
from tsynth.stepgen import generate_steps
from tsynth import stepmodel
from tsynth.stepmodel import (INPUT_NOISE, KVCache, LinearLogSoftmaxAt, LogSoftmaxAt, StepModel, StepModelConfig,
                              bin_values, input_noise, noisy_inputs, support_bins, support_weights, window_loss)
from tsynth.train import TrainConfig, smoothed_kernel


def hourly_set(n: int = 24, days: int = 16, channels: int = 1, gaps: float = 0.0, seed: int = 0) -> SeriesSet:
    """Hourly series with a daily cycle, a per-series level and, optionally, missing readings."""
    rng = np.random.default_rng(seed)
    t = np.arange(24 * days)
    base = np.sin(2 * np.pi * t / 24)[None, :, None] * (1 + np.arange(channels))[None, None, :]
    vals = base + rng.normal(size=(n, 1, channels)) + 0.2 * rng.normal(size=(n, len(t), channels))
    if gaps:
        vals[rng.random(vals.shape[:2]) < gaps] = np.nan
    return SeriesSet(vals.astype(np.float32), np.full(n, len(t)), [f"m{i}" for i in range(n)],
                     [f"c{j}" for j in range(channels)], start=np.full(n, np.datetime64("2024-01-01T00:00")), freq="h")


def test_csv_nan_cells_are_gaps_and_text_formats_refuse_them(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("item_id,timestamp,value\na,2020-01-01 00:00,1\na,2020-01-01 01:00,\na,2020-01-01 02:00,3\n")
    data = SeriesSet.read(path)
    assert data.lengths.tolist() == [3] and np.isnan(data.values[0, 1, 0])
    assert data.missing().sum() == 1
    with pytest.raises(DataError, match=r"series 'a', step 1: a missing reading .*the chat format cannot"):
        from tsynth.codecs.chat import ChatCodec
        ChatCodec().fit(data)


def test_fill_gap_turns_missing_time_steps_into_gaps(tmp_path):
    path = tmp_path / "holes.csv"
    path.write_text("item_id,timestamp,value,region\na,2020-01-01 00:00,1,n\na,2020-01-01 03:00,4,n\n")
    data = SeriesSet.read(path, freq="h", fill="gap", attribute_cols=["region"])
    assert data.lengths.tolist() == [4]
    assert np.isnan(data.values[0, 1:3, 0]).all() and data.values[0, 3, 0] == 4
    assert data.attributes["region"].tolist() == ["n"]


def test_calendar_features_need_the_data_to_show_them():
    codec = StepCodec.fit(hourly_set(days=22), ValueCodec(), None)
    # 22 days: no week of the year; 24 series on one calendar: too few to learn each of its time steps
    assert [name for name, _ in codec.calendar] == ["time_of_day", "dayofweek"]
    assert codec.context == default_context("h", 22 * 24) == 96 and codec.long
    assert default_context("h", 336) == 336 and default_context("D", 400) == 400 and default_context("D", 600) == 56
    short = StepCodec.fit(hourly_set(days=3), ValueCodec(), None)
    assert [name for name, _ in short.calendar] == ["time_of_day"]  # 3 days show 3 of 7 weekdays
    t = np.array(["2024-01-01T05:00", "2024-01-07T23:00"], dtype="datetime64[ns]")  # a Monday, a Sunday
    assert calendar_values(t, [("time_of_day", 24), ("dayofweek", 7), ("weekofyear", 53)], "h").tolist() == \
        [[5, 0, 0], [23, 6, 0]]


def test_windows_carry_previous_values_gaps_and_padding():
    data = hourly_set(n=10, days=10, gaps=0.05)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 48)
    arrays = codec.encode(data)
    k = codec.n_bins
    assert arrays["ids"].shape == (10, 240, 1) and (arrays["ids"][np.isnan(data.values)] == k).all()
    prefix, prev, target, cal = codec.windows(arrays, np.array([0, 1]), np.array([0, 100]))
    assert prefix.shape == (2, codec.prefix_length) and target.shape == (2, 48, 1) and cal.shape == (2, 48, 2)
    assert prev[0, 0, 0] == k + 1  # <start> before a series' first step
    assert prev[1, 0, 0] == arrays["ids"][1, 99, 0] and (target[1, :, 0] == arrays["ids"][1, 100:148, 0]).all()
    assert (prev[1, 1:, 0] == target[1, :-1, 0]).all()
    # a window reaching past a series' end is padded there
    _, _, tail, _ = codec.windows(arrays, np.array([2]), np.array([220]))
    assert (tail[0, 20:, 0] == k + 2).all() and (tail[0, :20, 0] <= k).all()


@pytest.mark.parametrize("cross_prev", [True, False])
def test_cached_steps_match_the_whole_window(cross_prev):
    """Step-by-step generation with the key/value cache computes what the training forward pass computes (the
    seasonal inputs, a day back, included), with the heads' reading of the previous step and, as in models saved
    before it, without."""
    data = hourly_set(n=8, days=4, channels=3)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    config = {**codec.model_config(dict(n_layer=2, n_embd=32, n_head=4), 0.0), "cross_prev": cross_prev}
    model = StepModel(StepModelConfig(**config)).eval()
    rows, offsets = np.array([0, 1]), np.array([5, 40])
    prefix, prev, target, cal = (torch.as_tensor(a) for a in codec.windows(arrays, rows, offsets))
    season = torch.as_tensor(codec.lagged(arrays, rows, offsets, 24))[..., None]
    assert model.config.seasons == [24] and (season[0, :19] == codec.n_bins + 1).all()   # before the first step
    assert (season[1, :, 0, 0] == torch.as_tensor(arrays["ids"][1, 16:64, 0].astype(np.int64))).all()
    lags = model.config.own_lags
    own = torch.as_tensor(np.stack([codec.lagged(arrays, rows, offsets, lag) for lag in range(2, lags + 1)], axis=-1))
    assert lags == OWN_LAGS > 1 and (own[1, :, :, 0] == torch.as_tensor(arrays["ids"][1, 38:86].astype(np.int64))).all()
    with torch.no_grad():
        model.own_proj.weight.mul_(50.0)  # so that a wrong history shows in the head's output
        model.cross.out.mul_(50.0)  # and so does a wrong reading of the channels drawn before
        if cross_prev:
            model.cross.prev_out.mul_(50.0)  # or of the previous step's values
        full = model(prefix, prev, cal, season_ids=season)
        _, logits = model(prefix, prev, cal, targets=target, season_ids=season, own_ids=own)
        _, without = model(prefix, prev, cal, targets=target, season_ids=season)
        assert (logits - without).abs().max() > 0.1  # the head reads the channels' own history
        readout, model.cross = model.cross, None
        _, no_cross = model(prefix, prev, cal, targets=target, season_ids=season, own_ids=own)
        model.cross = readout
        no_prev = logits
        if cross_prev:
            prev_out = model.cross.prev_out.clone()
            model.cross.prev_out.zero_()
            _, no_prev = model(prefix, prev, cal, targets=target, season_ids=season, own_ids=own)
            model.cross.prev_out.copy_(prev_out)
            assert (logits - no_prev).abs().amax((0, 1, 3)).min() > 0.1  # every head reads the previous step's values
        assert (no_prev - no_cross)[:, :, 1:].abs().max() > 0.1  # and the channels before it in its step
        assert torch.allclose(no_prev[:, :, 0], no_cross[:, :, 0])  # the first channel has none before it
        cache = KVCache.empty(model.config, 2, "cpu")
        parts = [model.hidden(model.prefix_emb(prefix), 0, cache)]
        for t in range(prev.shape[1]):
            parts.append(model.hidden(model.step_inputs(prev[:, t:t + 1], cal[:, t:t + 1], season[:, t:t + 1]),
                                      codec.prefix_length + t, cache))
        step = torch.cat(parts, dim=1)
        assert torch.allclose(full, step, atol=1e-5)
        # the channel head, one channel at a time, matches the teacher-forced one
        h = full[:, codec.prefix_length + 3]
        before = model.chain_start(h, prev[:, 3])
        for c in range(3):
            assert torch.allclose(model.channel_logits(h, c, before, prev[:, 3, c], season[:, 3, c], own[:, 3, c]),
                                  logits[:, 3, c], atol=1e-5)
            before = before + model.chain(c, target[:, 3, c])


def test_log_softmax_at_the_support_has_autograd_gradients():
    """The training head's log-probabilities at a few bins (an index may repeat, as bins clamped at a grid's edge
    do) are those of the full log-softmax, and so are their gradients (its own backward pass)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 12, dtype=torch.float64, requires_grad=True)
    index = torch.cat([torch.zeros(3, 4, 2, dtype=torch.long), torch.randint(0, 12, (3, 4, 5))], dim=-1)
    weights = torch.rand(3, 4, 7, dtype=torch.float64)
    ours = LogSoftmaxAt.apply(logits, index)
    theirs = torch.log_softmax(logits, -1).gather(-1, index)
    assert torch.allclose(ours, theirs)
    grad, = torch.autograd.grad((ours * weights).sum(), logits)
    expected, = torch.autograd.grad((theirs * weights).sum(), logits)
    assert torch.allclose(grad, expected)
    assert torch.autograd.gradcheck(LogSoftmaxAt.apply, (logits, index))


def test_the_fused_value_head_gives_the_linear_layers_log_softmax_and_gradients(monkeypatch):
    """The training head on a CPU computes the value layer and its log-softmax a block of rows at a time (here
    blocks of 16 rows: 16, 16 and 3); the log-probabilities at the support and the gradients of the input, weight and
    bias are those of the layer followed by the full log-softmax."""
    monkeypatch.setattr(stepmodel, "CHUNK_VALUES", 40)
    torch.manual_seed(0)
    x = torch.randn(5, 7, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(12, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(12, dtype=torch.float64, requires_grad=True)
    index = torch.cat([torch.zeros(5, 7, 2, dtype=torch.long), torch.randint(0, 12, (5, 7, 4))], dim=-1)
    weights = torch.rand(5, 7, 6, dtype=torch.float64)
    ours = LinearLogSoftmaxAt.apply(x, weight, bias, index)
    theirs = torch.log_softmax(F.linear(x, weight, bias), -1).gather(-1, index)
    assert torch.allclose(ours, theirs)
    grads = torch.autograd.grad((ours * weights).sum(), (x, weight, bias))
    expected = torch.autograd.grad((theirs * weights).sum(), (x, weight, bias))
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e)
    assert torch.autograd.gradcheck(LinearLogSoftmaxAt.apply, (x, weight, bias, index))


def test_a_hooked_value_head_runs_as_its_module(monkeypatch):
    """Where something hooks the value layer (opacus does, for per-sample gradients under DP), the training head
    calls the layer as a module, so that the hooks see its input and output; without hooks (and with enough logits:
    here any) it takes the fused path, and both give the same loss."""
    monkeypatch.setattr(stepmodel, "FUSED_MIN_LOGITS", 0)
    fused_calls = []
    forward = LinearLogSoftmaxAt.forward
    monkeypatch.setattr(LinearLogSoftmaxAt, "forward",
                        staticmethod(lambda ctx, *args: fused_calls.append(1) or forward(ctx, *args)))
    data = hourly_set(n=4, days=3, channels=2)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=16, n_head=2), 0.0))).eval()
    loss = window_loss(codec, arrays, 1.0, 0.0, 0)
    rows = torch.tensor([[0, 0], [1, 0], [2, 0]])
    fused = loss(model, rows)
    assert len(fused_calls) == 1
    seen = []
    handle = model.value_head.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    try:
        hooked = loss(model, rows)
    finally:
        handle.remove()
    assert seen and seen[0][-1] == codec.n_bins + 1 and len(fused_calls) == 1
    assert torch.allclose(fused, hooked, atol=1e-6)


@pytest.mark.parametrize("channels,gaps,widths,n_bins,copy", [(1, 0.0, [2.0], 64, False), (1, 0.0, [2.0], 64, True),
                                                              (3, 0.1, [1.0], 48, True), (3, 0.1, [0.0], 16, True),
                                                              (2, 0.0, [0.5, 2.0], 64, True)])
def test_training_reads_the_head_where_targets_have_mass(channels, gaps, widths, n_bins, copy):
    """The training loss reads the head's log-probabilities near each target only (and normalises the copy
    components over a window of bins): those are the full distribution's values there, and the smoothed targets on
    those bins are the whole smoothing kernel's."""
    data = hourly_set(n=6, days=4, channels=channels, gaps=gaps)
    codec = StepCodec.fit(data, ValueCodec(n_bins=n_bins), 48)
    k = codec.n_bins
    arrays = codec.encode(data)
    torch.manual_seed(0)
    config = {**codec.model_config(dict(n_layer=1, n_embd=32, n_head=2), 0.0), "copy": copy}
    model = StepModel(StepModelConfig(**config)).eval()
    assert model.config.seasons == [24] and (model.copy_head is not None) == copy
    with torch.no_grad():  # sharpen the copy components, so that they matter
        if model.copy_head is not None:
            model.copy_head.bias.copy_(torch.tensor([3.0, 0.0, -4.0, 2.0, 0.0, 2.0]))
    rows, offsets = np.arange(6), np.array([0, 5, 10, 20, 30, 40])
    prefix, prev, target, cal = (torch.as_tensor(a) for a in codec.windows(arrays, rows, offsets))
    lags = model.config.seasons
    season = torch.as_tensor(np.stack([codec.lagged(arrays, rows, offsets, lag) for lag in lags], -1)) if lags else None
    assert (target == k).any() == (gaps > 0)
    with torch.no_grad():
        _, full = model(prefix, prev, cal, targets=target, season_ids=season)
        _, (near, missing) = model(prefix, prev, cal, targets=target, season_ids=season, support=3)
    assert torch.allclose(full.logsumexp(-1), torch.zeros(()), atol=1e-4)  # a distribution over bins and "missing"
    assert torch.allclose(full.gather(-1, support_bins(target, 3, k)), near, atol=1e-3)
    assert torch.allclose(full[..., k], missing, atol=1e-3)
    radius = int(np.ceil(4 * max(widths)))
    soft = support_weights(target, torch.tensor([widths[c % len(widths)] for c in range(channels)]), radius, k)
    kernels = torch.stack([smoothed_kernel(k, w) for w in widths])[torch.arange(channels) % len(widths)]
    whole = kernels[torch.arange(channels), target.clamp(max=k - 1)]
    spread = torch.zeros_like(whole).scatter_add_(-1, support_bins(target, radius, k), soft)
    assert torch.allclose(spread, whole, atol=1e-4)


def test_copy_components_normalise_over_a_window_as_over_the_grid():
    model = StepModel(StepModelConfig(n_bins=256, copy=True))
    gen = torch.Generator().manual_seed(0)
    centre = torch.rand(5000, generator=gen) * 264 - 4  # anchors on the grid, shifted by up to 4 bins
    sigma = 0.3 * torch.exp(torch.rand(5000, generator=gen) * np.log(300))  # 0.3 to 90 bins
    exact = torch.logsumexp(model._near(torch.arange(256.0), centre, sigma), dim=-1)
    assert (model._log_norm(centre, sigma) - exact).abs().max() < 1e-3


def test_the_loss_learns_and_counts_missing_readings():
    data = hourly_set(n=12, days=6, gaps=0.1)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=32, n_head=2), 0.0)))
    loss = window_loss(codec, arrays, 1.0, 0.0, 0)
    rows = torch.tensor([[i, -1] for i in range(12)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = float(loss(model, rows))
    for _ in range(30):
        opt.zero_grad()
        loss(model, rows).backward()
        opt.step()
    assert float(loss(model, rows)) < first - 0.5
    assert loss(model, rows, reduction="none").shape == (12,)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A step model fitted on 16 days of hourly series with gaps (context 48 steps)."""
    data = hourly_set(n=24, days=16, gaps=0.03, seed=1)
    syn = Synthesizer(epochs=30, ensemble=1, context=48, n_bins=32, preset="tiny").fit(data, progress=False)
    path = tmp_path_factory.mktemp("long") / "model"
    syn.save(path)
    return data, syn, path


def test_any_length_out_with_time_stamps_and_gap_choice(long_model):
    data, syn, path = long_model
    assert syn.info["codec"]["kind"] == "step" and syn.info["codec"]["long"]
    out = syn.sample(6, length=1000, start="2025-03-01 00:00", seed=3)  # 20x the context, 2.6x the training length
    assert out.lengths.tolist() == [1000] * 6 and out.freq == "h"
    assert str(out.start[0]) == "2025-03-01T00:00:00.000000000"
    assert np.isnan(syn.sample(6, length=1000, seed=3, gaps="none").values).sum() == 0
    again = Synthesizer.load(path).sample(6, length=1000, start="2025-03-01 00:00", seed=3)
    np.testing.assert_array_equal(np.nan_to_num(again.values, nan=-99), np.nan_to_num(out.values, nan=-99))
    # the model keeps the daily cycle it was shown, far beyond the context: mean lag-24 autocorrelation
    x = np.nan_to_num(out.values[:, 500:, 0] - np.nanmean(out.values[:, 500:, 0], axis=1, keepdims=True))
    acf24 = (x[:, 24:] * x[:, :-24]).sum(1) / (x * x).sum(1)
    assert acf24.mean() > 0.3


def test_step_model_loads_as_a_hugging_face_model(long_model):
    from transformers import AutoConfig, AutoModelForCausalLM

    _, _, path = long_model
    assert AutoConfig.from_pretrained(path / "model").model_type == "tsynth_step"
    assert isinstance(AutoModelForCausalLM.from_pretrained(path / "model"), StepModel)


def test_many_channels_share_a_position(tmp_path):
    from transformers import AutoModelForCausalLM

    data = hourly_set(n=20, days=2, channels=12, seed=2)
    syn = Synthesizer(epochs=1, ensemble=1, n_bins=16).fit(data, progress=False)
    cfg = syn.backend.models[0].config
    assert cfg.prefix_length + cfg.context == syn.backend.codec.prefix_length + 48  # positions: steps, not values
    out = syn.sample(5, seed=0)
    assert out.values.shape == (5, 48, 12) and not np.isnan(out.values).any()
    # the heads' readings of the channels before them save and load with the rest of the model
    assert cfg.cross_rank == CROSS_RANK
    assert syn.info["training"]["input_noise"] == INPUT_NOISE  # several channels: inputs moved while it trains
    syn.save(tmp_path / "model")
    np.testing.assert_array_equal(Synthesizer.load(tmp_path / "model").sample(5, seed=0).values, out.values)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model" / "model")
    assert torch.equal(loaded.cross.out, syn.backend.models[0].cross.out)


@pytest.mark.parametrize("channels", [1, 3])
def test_step_model_under_dp_reports_its_accounting(channels):
    """DP-SGD trains every part of the step model (with several channels, the heads' readings of the channels
    before them too) and reports its accounting."""
    data = hourly_set(n=60, days=2, channels=channels, seed=3).zscore()
    syn = Synthesizer(epochs=1, dp_epsilon=8.0, prior="none", codec="step", n_bins=16).fit(data, progress=False)
    assert syn.info["codec"]["kind"] == "step"
    assert 0 < syn.info["privacy"]["epsilon"] <= 8.0 + 1e-6
    assert syn.sample(3, seed=0).values.shape == (3, 48, channels)
    model = syn.backend.models[0]
    assert (model.cross is not None) == (channels > 1)


def test_cycle_profile_comes_off_before_binning_and_back_on_decoding(tmp_path):
    """A step codec with a cycle profile (the DP release, here the data's own mean day) takes each value's position
    in the day from its series' start, bins the value less the profile there, and decodes it back to within a bin;
    the public range less the profile still falls inside the bins, and the profile saves and loads."""
    data = hourly_set(n=30, days=3, seed=2).zscore()
    data = SeriesSet(data.values, data.lengths, data.item_id, data.channels, freq=data.freq,
                     start=np.asarray(data.start, dtype="datetime64[ns]") + np.timedelta64(5, "h") *
                     (np.arange(30) % 2))  # half the series start at 05:00
    codec = StepCodec.fit(data, ValueCodec(n_bins=64, binning="uniform", scaling="none", value_range=(-5, 5)),
                          None, dp=True)
    assert codec.cycle_length == 24
    phase = codec.cycle_phase(data.start, 3)
    assert phase[0].tolist() == [0, 1, 2] and phase[1].tolist() == [5, 6, 7]
    means = codec.cycle_means(data)  # (series, 24, channels) in the codec's units
    assert means.shape == (30, 24, 1)
    codec.set_cycle_profile(means.mean(axis=0))
    day = np.asarray(codec.cycle_profile)[:, 0]
    hours = np.arange(24)
    truth = np.sin(2 * np.pi * hours / 24) + np.sin(2 * np.pi * (hours - 5) / 24)  # each half's day, on the clock
    assert np.corrcoef(day, truth)[0, 1] > 0.99 and codec.values.profile is None
    lo, hi = codec.values.to_units(np.array([[[-5.0 - day.min()], [5.0 - day.max()]]]))[0, :, 0]
    assert codec.values.edges[0] <= lo + 1e-9 and hi <= codec.values.edges[-1] + 1e-9  # the range fits, less the profile
    arrays = codec.encode(data)
    width = (codec.values.edges[1] - codec.values.edges[0]) * float(np.asarray(codec.values.scale)[0])
    out = codec.decode(arrays["prefix"], arrays["ids"].astype(np.int64), data.lengths, np.random.default_rng(0),
                       list(data.item_id), data.start)
    assert np.abs(out.values - data.values).max() <= width + 1e-5
    loaded = StepCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    assert loaded.cycle_profile == codec.cycle_profile


def test_step_model_under_dp_releases_a_cycle_profile():
    """Under DP the step model starts from scratch; the mean of each hour of the day over the items is released
    (composed with DP-SGD) and the samples follow it: their mean day tracks the data's."""
    data = hourly_set(n=200, days=22, seed=4).zscore()
    syn = Synthesizer(epochs=1, dp_epsilon=8.0, context=24, batch_size=32, n_bins=32).fit(data, progress=False)
    priv = syn.info["privacy"]
    assert [r["what"] for r in priv["releases"]][0] == "mean profile by position in the cycle"
    assert 8.0 - 0.01 <= priv["epsilon"] <= 8.0 + 1e-6
    out = syn.sample(50, seed=0, length=48)
    day = np.nanmean(out.values[:, :, 0].reshape(50, 2, 24), axis=(0, 1))
    truth = np.nanmean(data.values[:, :48, 0].reshape(200, 2, 24), axis=(0, 1))
    assert np.corrcoef(day, truth)[0, 1] > 0.8


def test_step_model_under_dp_spends_its_target_on_series_of_several_windows(caplog):
    """Series longer than the step model sees whole take it under DP (with a warning of what to expect) and hold
    several windows each, but a DP-SGD step draws items, one window each: an epoch is items / batch steps, and the
    noise is calibrated for those steps, so the fit spends its target epsilon (calibrated for a pass over every
    window, it took a fraction of the steps it was calibrated for and spent a fraction of the target)."""
    from tsynth.backends.local import window_rows
    from tsynth.privacy import EPSILON_TOLERANCE

    data = hourly_set(n=60, days=22, seed=3).zscore()  # 528 hours: longer than the 512 steps seen whole
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        syn = Synthesizer(epochs=2, dp_epsilon=8.0, context=12, batch_size=16, n_bins=16).fit(data, progress=False)
    assert syn.info["codec"]["kind"] == "step"
    assert "the step model from scratch (series of 528 steps" in caplog.text and "no released profile" not in caplog.text
    assert len(window_rows(data.lengths, 12)) == 44 * 60  # an epoch's rows without DP: 44 windows a series
    priv = syn.info["privacy"]
    assert priv["steps"] == 2 * round(60 / 16)
    assert 8.0 - EPSILON_TOLERANCE <= priv["epsilon"] <= 8.0 + 1e-6


def test_dp_per_sample_gradients_are_the_model_gradients():
    """Under DP-SGD the per-sample gradients that opacus computes, averaged over the batch, are the plain gradients
    of every parameter of a several-channel step model: no part (the heads' readouts included) trains on noise
    alone."""
    from opacus import GradSampleModule
    data = hourly_set(n=8, days=4, channels=3)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=32, n_head=4), 0.0)))
    model.config._attn_implementation = "eager"
    wrapped = GradSampleModule(model, loss_reduction="mean", strict=False)
    window_loss(codec, codec.encode(data), 1.0, 0.0, seed=0)(wrapped, torch.tensor([[0, 0], [1, 5], [2, 9]])).backward()
    params = dict(model.named_parameters())
    assert {"cross.inp", "cross.out", "cross.prev_inp", "cross.prev_out"} <= params.keys()
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().max() > 0, name
        assert torch.allclose(p.grad_sample.mean(0), p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max())), name


def test_noisy_inputs_move_each_step_alike_in_every_view():
    """Training moves a share of the input values by about a bin, a step's value alike wherever the window shows
    it (as the previous value, an own lag, a day back), as one drawn value would be in generation; missing,
    ``<start>`` and pad ids stay, and moved ids stay inside the bins."""
    data = hourly_set(n=6, days=4, channels=3, gaps=0.05)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    arrays = codec.encode(data)
    rows, offsets = np.array([0, 1, 2, 3]), np.array([0, 10, 30, 48])
    lags = [1, 2, 3, 24]
    views = [(codec.lagged(arrays, rows, offsets, lag), lag) for lag in lags]
    k = codec.n_bins
    moved = noisy_inputs(np.random.default_rng(0), 0.5, k, views)
    for (before, _), after in zip(views, moved):
        special = before >= k
        assert np.array_equal(after[special], before[special])
        assert ((after[~special] >= 0) & (after[~special] < k)).all()
    changed = np.concatenate([(after != before)[before < k] for (before, _), after in zip(views, moved)])
    assert 0.15 < changed.mean() < 0.5  # half the values drawn, a rounded N(0, 1) bin move is 0 for 38 % of them
    # each series step's value, read through every view that shows it, is one value
    seen: dict = {}
    for (before, lag), after in zip(views, moved):
        for i, t, c in zip(*np.nonzero(before < k)):
            seen.setdefault((i, offsets[i] + t - lag, c), set()).add(int(after[i, t, c]))
    assert all(len(v) == 1 for v in seen.values()) and len(seen) > 300
    assert all(np.array_equal(a, b) for (b, _), a in zip(views, noisy_inputs(np.random.default_rng(0), 0.0, k, views)))


def test_input_noise_only_while_training_and_by_default_with_several_channels():
    assert input_noise(1, None) == 0.0 and input_noise(3, None) == INPUT_NOISE and input_noise(3, 0.0) == 0.0
    with pytest.raises(ConfigError, match="input_noise"):
        TrainConfig(input_noise=1.0)
    data = hourly_set(n=8, days=4, channels=3)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=32, n_head=4), 0.0)))
    rows = torch.tensor([[0, 0], [1, 5], [2, 9]])

    def loss(noise):
        torch.manual_seed(1)  # the same windows hidden from the seasonal and time inputs in training
        with torch.no_grad():
            return float(window_loss(codec, arrays, 1.0, 0.0, seed=0, noise=noise)(model, rows))
    model.eval()
    assert loss(0.5) == loss(0.0)  # scoring never moves the inputs
    model.train()
    assert loss(0.0) == loss(0.0) and loss(0.5) != loss(0.0)


def test_training_moves_the_channels_read_before_each_one_in_its_step():
    """The heads read the channels before theirs in the step moved as the other inputs are, each step's value as
    the next step's previous value shows it, while the loss scores the exact values; scoring moves nothing."""
    data = hourly_set(n=8, days=4, channels=3)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=32, n_head=4), 0.0)))
    seen = []
    model.register_forward_pre_hook(lambda _m, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
    rows = torch.tensor([[0, 0], [1, 5], [2, 9]])
    prefix, prev, target, calendar = codec.windows(arrays, rows[:, 0].numpy(), rows[:, 1].numpy())
    loss = window_loss(codec, arrays, 1.0, 0.0, seed=0, noise=0.5)
    model.train()
    loss(model, rows)
    (_, moved_prev, _), kwargs = seen[-1]
    assert np.array_equal(kwargs["targets"].numpy(), target)  # scored on the exact values
    chain = kwargs["chain_ids"].numpy()
    values = target < codec.n_bins
    assert 0.15 < (chain != target)[values].mean() < 0.5 and np.array_equal(chain[~values], target[~values])
    assert np.array_equal(chain[:, :-1], moved_prev.numpy()[:, 1:])  # one value, read alike in both places
    assert not np.array_equal(moved_prev.numpy(), prev)
    model.eval()
    loss(model, rows)
    assert seen[-1][1]["chain_ids"] is None and np.array_equal(seen[-1][0][1].numpy(), prev)
    # and the heads read them: moving the first channel changes what the later channels are given, not its own
    inputs = [torch.as_tensor(a) for a in (prefix, prev, calendar)]
    exact_ids = torch.as_tensor(target)
    moved = exact_ids.clone()
    moved[..., 0] = torch.where(moved[..., 0] < codec.n_bins - 1, moved[..., 0] + 1, moved[..., 0] - 1)
    with torch.no_grad():
        _, exact = model(*inputs, targets=exact_ids)
        _, shifted = model(*inputs, targets=exact_ids, chain_ids=moved)
    assert torch.equal(exact[..., 0, :], shifted[..., 0, :])
    assert (exact[..., 1:, :] - shifted[..., 1:, :]).abs().amax((0, 1, 3)).min() > 1e-4


def write_long_csv(path: Path, data: SeriesSet) -> Path:
    data.to_long().to_csv(path, index=False)
    return path


def test_cli_fit_long_series_and_sample_a_longer_one(tmp_path, capsys):
    data = write_long_csv(tmp_path / "meters.csv", hourly_set(n=12, days=8, gaps=0.02))
    model = tmp_path / "model"
    assert main(["fit", str(data), "-o", str(model), "--epochs", "1", "--ensemble", "1", "--context", "48",
                 "--n-bins", "16"]) == 0
    doc = json.loads((model / "tsynth.json").read_text())
    assert doc["codec"]["context"] == 48 and doc["codec"]["kind"] == "step"
    out = tmp_path / "year.parquet"
    assert main(["sample", str(model), "-n", "2", "--length", "400", "--start", "2024-06-01", "--gaps", "none",
                 "-o", str(out)]) == 0
    syn = SeriesSet.read(out)
    assert syn.lengths.tolist() == [400, 400] and not np.isnan(syn.values).any()
    assert pd.Timestamp(syn.start[0]) == pd.Timestamp("2024-06-01")


@pytest.mark.parametrize("args, message", [
    (["--length", "0"], "length must be at least 1"),
    (["--start", "not-a-date"], "start 'not-a-date' is not a time stamp"),
])
def test_cli_sample_bad_length_or_start(long_model, tmp_path, capsys, args, message):
    _, _, path = long_model
    out = tmp_path / "out.parquet"
    assert main(["sample", str(path), "-n", "2", "-o", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("case, message", [
    ("empty series", "series 'm3' has no reading at all"),
    ("empty channel", "channel 'c1' holds no reading in any series"),
    ("context 1", "context must be at least 2 steps"),
])
def test_cli_fit_refuses_what_cannot_be_learnt(tmp_path, capsys, case, message):
    data = hourly_set(n=10, days=2, channels=2)
    extra = []
    if case == "empty series":
        data.values[3] = np.nan
    elif case == "empty channel":
        data.values[:, :, 1] = np.nan
    else:
        extra = ["--context", "1"]
    path = write_long_csv(tmp_path / "d.csv", data)
    model = tmp_path / "model"
    assert main(["fit", str(path), "-o", str(model), "--epochs", "1", *extra]) == 2
    assert message in capsys.readouterr().err and not model.exists()


def test_token_model_refuses_gaps(tmp_path):
    with pytest.raises(DataError, match="token model cannot learn missing readings"):
        Synthesizer(codec="token", epochs=1, ensemble=1).fit(hourly_set(n=10, days=2, gaps=0.05), progress=False)


def test_step_model_conditions_point_masses_and_drawn_lengths():
    """Conditions are forced or drawn, values every series holds decode exactly, and without a length the
    series lengths are drawn from the training lengths."""
    rng = np.random.default_rng(4)
    lengths = rng.choice([20, 30], size=40)
    arrays = [np.stack([rng.integers(0, 4, size=n).astype(float), rng.normal(size=n)], axis=1) for n in lengths]
    attrs = pd.DataFrame({"season": ["winter", "summer"] * 20})
    data = SeriesSet.from_arrays(arrays, [f"s{i}" for i in range(40)], ["count", "reading"], attributes=attrs)
    syn = Synthesizer(epochs=2, ensemble=1, n_bins=16, conditions=["season"]).fit(data, progress=False)
    assert syn.info["codec"]["point_masses_per_channel"][0] == 4
    out = syn.sample(30, seed=1)
    assert set(out.lengths.tolist()) <= {20, 30}
    counts = np.concatenate([out.series(i)[:, 0] for i in range(30)])
    assert np.array_equal(counts, np.round(counts))
    forced = syn.sample(6, conditions={"season": "summer"}, seed=2)
    assert list(forced.attributes["season"]) == ["summer"] * 6


def test_edge_bins_decode_like_the_data_tails():
    """Equal-mass edge bins reach out to the most extreme reading; values decoded there follow the data's tail
    (an exponential of its mean excess) instead of spreading uniformly to that extreme."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 50))
    x[0, 0] = 40.0  # one extreme reading makes the top bin span about 2.2..41
    data = SeriesSet(x[..., None].astype(np.float32), np.full(200, 50), [f"s{i}" for i in range(200)], ["v"])
    codec = ValueCodec(n_bins=64).fit(data)
    bins, _ = codec.value_bins(data)
    back = codec._bin_values(bins, np.random.default_rng(0))
    top = bins == 63
    assert top.sum() > 100 and (back > 6).sum() <= 2
    assert abs(back[top].mean() - codec.to_units(x[..., None])[top].mean()) < 0.2
    assert ValueCodec.from_dict(codec.to_dict()).tails == codec.tails
    assert ValueCodec(binning="uniform", value_range=(-5, 5)).fit(data).tails == []  # public bins under DP: uniform


def test_wide_tail_bins_are_cut_so_a_low_reading_and_a_deep_dip_differ():
    """An equal-mass edge bin that holds both the low end of ordinary readings and a dip half the series share
    (a clock change) is cut at its own quantiles for the step model: the two are different bins, so the model can
    say which one a step holds and decoding draws each from its own range. Bins of ordinary width keep their
    equal-mass edges, every piece holds at least 1/WIDE_PIECES of a bin's share, and bins from a public range
    (DP) or for the token model are not cut."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((600, 48))
    x[:300, 30] = -4.5 + 0.4 * rng.standard_normal(300)
    data = SeriesSet(x[..., None].astype(np.float32), np.full(600, 48), [f"s{i}" for i in range(600)], ["v"],
                     start=np.full(600, np.datetime64("2024-01-01T00:00")), freq="h")
    plain = ValueCodec(n_bins=64).fit(data)
    cut = StepCodec.fit(data, ValueCodec(n_bins=64), None).values
    e_plain, e_cut = np.asarray(plain.edges), np.asarray(cut.edges)
    assert len(e_cut) > len(e_plain) and np.isin(e_plain, e_cut).all()
    widths = np.diff(e_plain)
    new = np.setdiff1d(e_cut, e_plain)
    assert (widths[np.searchsorted(e_plain, new) - 1] > WIDE_BIN * np.median(widths)).all()  # only wide bins cut
    units = cut.to_units(x[..., None].astype(np.float64)).reshape(-1)
    counts = np.histogram(units, e_cut)[0]
    assert counts.min() >= len(units) / 64 / WIDE_PIECES - 1

    def same_bin(codec: ValueCodec, a: float, b: float) -> bool:
        ids = codec.bins.assign(codec.to_units(np.array([[[a], [b]]])))
        return bool(ids[0, 0, 0] == ids[0, 1, 0])

    low = float(np.sort(x[:, np.r_[0:30, 31:48]].reshape(-1))[20])  # a low ordinary reading, about -3.4
    assert same_bin(plain, low, -4.5) and not same_bin(cut, low, -4.5)
    dip_bin = cut.bins.assign(cut.to_units(np.full((1, 2000, 1), -4.5)))
    drawn = cut._bin_values(dip_bin, np.random.default_rng(0))
    assert np.abs(drawn - cut.to_units(np.full((1, 1, 1), -4.5))[0, 0, 0]).max() < 1.5
    public = StepCodec.fit(data, ValueCodec(n_bins=64, value_range=(-8.0, 8.0)), None, dp=True).values
    assert len(public.edges) == 65


def loss_after_training(codec: StepCodec, data: SeriesSet, offset: int, **config) -> float:
    """Held-in loss of a one-layer step model (``config`` overrides its config) after 60 AdamW steps on windows
    of ``data`` from ``offset`` (-1: random offsets)."""
    return trained_model(codec, data, offset, **config)[1]


def trained_model(codec: StepCodec, data: SeriesSet, offset: int, batch: int = 32, steps: int = 60,
                  **config) -> tuple[StepModel, float]:
    """The model and loss of :func:`loss_after_training` (``batch`` windows a step, ``steps`` steps)."""
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**{**codec.model_config(dict(n_layer=1, n_embd=32, n_head=4), 0.0), **config}))
    loss = window_loss(codec, arrays, 0.0, 0.0, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = torch.tensor([[i % len(data), offset] for i in range(batch)])
    for _ in range(steps):
        opt.zero_grad()
        loss(model, rows).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model, float(loss(model, torch.tensor([[i, max(offset, 0) + 10 * (offset < 0)]
                                                      for i in range(len(data))])))


def series_of(values: np.ndarray) -> SeriesSet:
    n, length, channels = values.shape
    return SeriesSet(values.astype(np.float32), np.full(n, length), [f"m{i}" for i in range(n)],
                     [f"c{j}" for j in range(channels)], start=np.full(n, np.datetime64("2024-01-01T00:00")), freq="h")


def test_the_copy_component_keeps_smooth_channels_smooth():
    """A channel that moves by about a bin per step: with the copy component, the model's distribution for the
    next step sits near the previous bin and its loss falls below that of the free head alone after the same
    training."""
    rng = np.random.default_rng(0)
    data = series_of(np.cumsum(rng.normal(0, 0.05, (40, 96, 4)), axis=1) + rng.normal(0, 1, (40, 1, 4)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 48)
    losses = {copy: loss_after_training(codec, data, -1, copy=copy) for copy in (True, False)}
    assert losses[True] < losses[False] - 0.5, losses


def test_copy_components_only_where_a_step_holds_several_channels():
    """One channel: its exact previous bin is the step's input, so the model has no copy components (they made
    samples wander from the series' level), only the seasonal input and its head's reading of its own latest
    values; two channels share a step's input and get all of them."""
    rng = np.random.default_rng(4)
    one, two = (series_of(rng.normal(0, 1, (8, 96, c))) for c in (1, 2))
    codec = StepCodec.fit(one, ValueCodec(n_bins=16), 96)
    config = StepModelConfig(**codec.model_config({}, 0.0))
    assert not codec.copies and codec.seasons == [24] and not config.copy and config.seasons == [24]
    model = StepModel(config)
    assert model.copy_head is None and model.season_emb.num_embeddings == config.n_ids
    assert config.own_lags == OWN_LAGS and model.own_proj.in_features == 3 * OWN_LAGS - 1  # its own course
    config = StepModelConfig(**StepCodec.fit(two, ValueCodec(n_bins=16), 96).model_config({}, 0.0))
    assert config.copy and config.seasons == [24] and StepModel(config).copy_head.out_features == 6
    assert config.own_lags == OWN_LAGS and StepModel(config).own_proj.in_features == 3 * OWN_LAGS - 1
    assert config.cross_rank == CROSS_RANK and StepModel(config).cross.out.shape == (2, CROSS_RANK, config.n_embd)
    assert config.cross_prev and StepModel(config).cross.prev_out.shape == (2, CROSS_RANK, config.n_embd)
    assert StepModelConfig(n_channels=1, cross_rank=CROSS_RANK).cross_rank == 0   # no channel before another
    old = StepModelConfig(n_channels=1, context=96, seasons=[24])   # saved before the seasonal inputs
    assert old.seasons == [] and StepModel(old).season_emb is None
    old = StepModelConfig(n_channels=2, context=96, seasons=[24], copy=True)  # saved before the heads read history
    assert old.own_lags == 0 and StepModel(old).own_proj is None
    assert old.cross_rank == 0 and StepModel(old).cross is None   # and before they read the channels before them
    old = StepModelConfig(n_channels=2, copy=True, own_lags=OWN_LAGS, cross_rank=CROSS_RANK)  # and the previous step
    assert not old.cross_prev and StepModel(old).cross.prev_out is None


def test_the_heads_read_each_channel_own_recent_history():
    """Each channel of each series climbs or falls steadily (its own direction): a head that reads its channel's
    latest values sees the direction in their changes, so its loss falls well below that of a model whose heads
    see only the step's shared input and attention, after the same training."""
    rng = np.random.default_rng(5)
    rate = rng.choice([-0.15, 0.15], (40, 1, 3))
    data = series_of(rate * np.arange(96)[None, :, None] + rng.normal(0, 1, (40, 1, 3))
                     + rng.normal(0, 0.005, (40, 96, 3)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 48)
    losses = {lags: loss_after_training(codec, data, -1, own_lags=lags) for lags in (OWN_LAGS, 0)}
    assert losses[OWN_LAGS] < losses[0] - 0.3, losses


def test_a_single_channel_head_reads_its_own_course():
    """One channel's head reads its own latest values too: the teacher-forced log-probabilities change with the
    values before the previous one, and the head that generation calls one step at a time, given them, gives
    what training computes (docs/long-series.md, "Own history in the heads")."""
    data = hourly_set(n=4, days=3, channels=1)
    codec = StepCodec.fit(data, ValueCodec(n_bins=16), 48)
    arrays = codec.encode(data)
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(dict(n_layer=1, n_embd=32, n_head=4), 0.0))).eval()
    rows, offsets = np.array([0, 1]), np.array([0, 20])
    prefix, prev, target, cal = (torch.as_tensor(a) for a in codec.windows(arrays, rows, offsets))
    season = torch.as_tensor(codec.lagged(arrays, rows, offsets, 24))[..., None]
    own = torch.as_tensor(np.stack([codec.lagged(arrays, rows, offsets, lag) for lag in range(2, OWN_LAGS + 1)], -1))
    with torch.no_grad():
        model.own_proj.weight.mul_(50.0)
        full = model(prefix, prev, cal, season_ids=season)
        _, logits = model(prefix, prev, cal, targets=target, season_ids=season, own_ids=own)
        _, without = model(prefix, prev, cal, targets=target, season_ids=season)
        assert (logits - without)[1].abs().amax(-1).min() > 0.1  # at every step of a window inside the series
        for t in (1, 5, 30):
            h = full[:, codec.prefix_length + t]
            assert torch.allclose(model.channel_logits(h, 0, model.chain_start(h, prev[:, t]), prev[:, t, 0],
                                                       season[:, t, 0], own[:, t, 0]), logits[:, t, 0], atol=1e-5)


def test_the_heads_read_the_channels_before_them_in_their_step():
    """Eight channels that move together within a step (one random factor per step, each channel with its own
    weight and sign) and not from one step to the next: a channel is predictable only from the channels drawn
    before it in its step. After the same training, heads that each read them through their own linear map
    (:class:`CrossReadout`) reach a lower loss than heads reading only the summed chain embeddings, and their
    samples keep the channels' correlations, where the others' lose them."""
    rng = np.random.default_rng(6)
    weights = rng.choice([-1.0, 1.0], 8) * rng.uniform(0.5, 1.5, 8)
    data = series_of(rng.normal(0, 1, (40, 96, 1)) * weights + rng.normal(0, 0.1, (40, 96, 8)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 48)
    models = {rank: trained_model(codec, data, -1, cross_rank=rank) for rank in (CROSS_RANK, 0)}
    assert models[CROSS_RANK][1] < models[0][1] - 0.05, {r: m[1] for r, m in models.items()}
    real = np.corrcoef(data.values.reshape(-1, 8).T)
    error = {rank: np.abs(np.corrcoef(generate_steps([m], codec, 20, length=48, seed=0).values.reshape(-1, 8).T)
                          - real).max() for rank, (m, _) in models.items()}
    assert error[CROSS_RANK] < 0.4 < 0.7 < error[0], error


def test_the_heads_read_every_channel_previous_value():
    """Eight channels, each following another's previous value (a signed permutation, as in a VAR(1)): a channel is
    predictable from one other channel's last value only. After the same training, heads that each read all
    channels' previous values through their own linear map reach a lower loss than heads that find them in the
    step's shared input."""
    rng = np.random.default_rng(7)
    mix = np.eye(8)[rng.permutation(8)] * rng.choice([-0.95, 0.95], 8)[:, None]
    x = np.zeros((40, 96, 8))
    x[:, 0] = rng.normal(0, 1, (40, 8))
    for t in range(1, 96):
        x[:, t] = x[:, t - 1] @ mix.T + rng.normal(0, 0.3, (40, 8))
    data = series_of(x)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 48)
    losses = {prev: loss_after_training(codec, data, -1, cross_prev=prev) for prev in (True, False)}
    assert losses[True] < losses[False] - 0.05, losses


def test_the_seasonal_input_repeats_each_series_own_day():
    """One channel whose series each repeat their own random daily shape: with each step's value a day back in
    its input, the loss falls well below that of a model that must find it through attention, after the same
    training; generation gives the input the values it drew a day earlier, so samples repeat their own day."""
    rng = np.random.default_rng(3)
    data = series_of(np.tile(rng.normal(0, 1, (40, 24, 1)), (1, 4, 1)) + rng.normal(0, 0.05, (40, 96, 1)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 96)
    model, with_input = trained_model(codec, data, 0)
    assert model.config.season_inputs and model.config.seasons == [24]
    without = loss_after_training(codec, data, 0, season_inputs=False, seasons=[])
    assert with_input < without - 0.5, (with_input, without)
    out = generate_steps([model], codec, 40, length=96, start="2024-01-01", seed=0).values[:, :, 0]
    days = out.reshape(40, 4, 24) - out.reshape(40, 4, 24).mean(2, keepdims=True)
    same = [np.corrcoef(days[i, 1], days[i, 2])[0, 1] for i in range(40)]   # a series' day 2 against its day 3
    other = [np.corrcoef(days[i, 1], days[(i + 1) % 40, 2])[0, 1] for i in range(40)]
    assert np.mean(same) > 0.6 and abs(np.mean(other)) < 0.2, (np.mean(same), np.mean(other))


def test_the_seasonal_copy_component_repeats_each_series_own_day():
    """Each series repeats its own random daily shape: the seasonal component (a day back, chosen from the
    frequency) lowers the loss well below that of the copy of the previous step alone, after the same training."""
    rng = np.random.default_rng(1)
    data = series_of(np.tile(rng.normal(0, 1, (40, 24, 2)), (1, 4, 1)) + rng.normal(0, 0.05, (40, 96, 2)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 96)
    assert codec.seasons == [24] and codec.model_config({}, 0.0)["seasons"] == [24]  # a week needs 336 steps
    losses = {lag: loss_after_training(codec, data, 0, seasons=[lag] if lag else []) for lag in (24, 0)}
    assert losses[24] < losses[0] - 0.5, losses


def test_the_weekly_copy_component_repeats_each_series_own_week():
    """Each series repeats its own random week (days differ): with a context of two weeks the codec adds a week
    back to the day back, and the loss falls well below that of the day back alone."""
    rng = np.random.default_rng(2)
    data = series_of(np.tile(rng.normal(0, 1, (24, 168, 2)), (1, 2, 1)) + rng.normal(0, 0.05, (24, 336, 2)))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 336)
    assert codec.seasons == [24, 168]
    losses = {len(lags): trained_model(codec, data, 0, batch=12, seasons=lags)[1] for lags in ([24, 168], [24])}
    assert losses[2] < losses[1] - 0.5, losses


def test_decoding_holds_values_for_runs_as_the_data_does():
    """A meter that reads in whole units holds its value for runs of steps, a continuous sensor never does: the
    codec learns each channel's share of exact repeats among steps that stay in their bin, and decoding the
    data's own bins gives back runs of exactly repeated values at that share (and none for the sensor)."""
    rng = np.random.default_rng(3)
    meter = np.round(np.cumsum(rng.normal(0, 0.4, (30, 200)), axis=1))  # whole units: long runs
    sensor = np.cumsum(rng.normal(0, 0.05, (30, 200)), axis=1)
    data = series_of(np.stack([meter, sensor], axis=-1))
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 96)
    assert codec.values.repeats[0] > 0.5 and codec.values.repeats[1] == 0.0, codec.values.repeats
    arrays = codec.encode(data)
    out = codec.decode(arrays["prefix"], arrays["ids"].astype(np.int64), arrays["lengths"], np.random.default_rng(0),
                       item_id=None, start=None)
    ids = arrays["ids"]
    same_bin = ids[:, 1:] == ids[:, :-1]
    exact = out.values[:, 1:] == out.values[:, :-1]
    share = (exact & same_bin).sum(axis=(0, 1)) / same_bin.sum(axis=(0, 1))
    assert abs(share[0] - codec.values.repeats[0]) < 0.05 and share[1] == 0.0, (share, codec.values.repeats)
    assert StepCodec.from_dict(codec.to_dict()).values.repeats == codec.values.repeats


def test_short_windows_train_the_token_model_by_default():
    """Without a prior, windows of at most SHORT_STEPS steps and SHORT_VALUES values, equal lengths and no gaps,
    take the token model; longer ones, gappy ones, ragged ones or codec 'step' the step model. Hourly one-channel
    data takes the load prior (a token model) under prior 'auto', unless it has gaps."""
    from tsynth.backends.local import SHORT_STEPS, SHORT_VALUES, LocalBackend

    def kind(data, **kw):
        backend = LocalBackend(**{"prior": "none", **kw})
        return backend._codec_kind(data, backend._prior_choice(data))

    assert kind(hourly_set(n=10, days=1, channels=6)) == "token"
    assert kind(hourly_set(n=10, days=2)) == "step" and SHORT_STEPS == 32   # 48 steps
    assert kind(hourly_set(n=10, days=1, channels=SHORT_VALUES // 24 + 1)) == "step"   # too many values a window
    assert kind(hourly_set(n=10, days=1, gaps=0.05)) == "step"
    assert kind(hourly_set(n=10, days=1), codec="step") == "step"
    ragged = hourly_set(n=10, days=1)
    ragged.lengths[0] = 20
    ragged.values[0, 20:] = np.nan
    assert kind(ragged) == "step"
    assert kind(hourly_set(n=10, days=2), prior="auto") == "token"   # the load prior
    assert kind(hourly_set(n=10, days=2, gaps=0.05), prior="auto") == "step"
    assert kind(hourly_set(n=10, days=2, channels=2), prior="auto") == "step"


def test_a_shared_calendar_gets_its_own_time_steps():
    """Series that share their time stamps (a panel) get a time-step feature; windows cut at different times,
    small sets and DP fits do not; stamps outside the span, or off its step grid, read its last value."""
    panel = hourly_set(n=PANEL_MIN_SERIES, days=3)
    codec = StepCodec.fit(panel, ValueCodec(), None)
    assert codec.calendar == [("time_of_day", 24), ("time_step", 73)] and codec.time_feature == 1
    t = np.array(["2024-01-01T00:00", "2024-01-03T23:00", "2024-01-04T00:00", "2023-12-31T23:00",
                  "2024-01-01T00:30"], dtype="datetime64[ns]")
    assert codec.calendar_at(t)[:, 1].tolist() == [0, 71, 72, 72, 72]
    again = StepCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    assert (again.calendar_at(t) == codec.calendar_at(t)).all()
    assert codec.model_config({}, 0.0)["time_feature"] == 1
    sliding = SeriesSet(panel.values, panel.lengths, panel.item_id, panel.channels, freq="h",
                        start=np.datetime64("2024-01-01T00:00") + np.arange(len(panel)) * np.timedelta64(1, "h"))
    assert "time_step" not in dict(StepCodec.fit(sliding, ValueCodec(), None).calendar)
    assert "time_step" not in dict(StepCodec.fit(hourly_set(n=PANEL_MIN_SERIES - 1, days=3), ValueCodec(), None).calendar)
    assert "time_step" not in dict(StepCodec.fit(panel, ValueCodec(), None, dp=True).calendar)


def test_an_event_at_one_time_stamp_of_every_series_is_learnt_there(monkeypatch):
    """Every series dips at one time stamp (a clock change, an outage) that windows at random offsets put at any
    position: with the time-step input, samples drawn on the data's calendar dip there, without it they do not."""
    monkeypatch.setattr(steps_module, "PANEL_MIN_SERIES", 40)  # a small panel keeps the test quick
    rng = np.random.default_rng(5)
    values = np.sin(2 * np.pi * np.arange(96) / 24)[None, :, None] + rng.normal(0, 0.3, (40, 96, 1))
    values[:, 61] = -4 + rng.normal(0, 0.1, (40, 1))
    data = series_of(values)
    codec = StepCodec.fit(data, ValueCodec(n_bins=64), 48)
    assert codec.time_feature == 1
    plain = StepCodec.from_dict({**codec.to_dict(), "calendar": codec.to_dict()["calendar"][:1], "time_origin": None})
    dips = {}
    for name, c in (("time", codec), ("plain", plain)):
        model, _ = trained_model(c, data, -1, steps=200)
        out = generate_steps([model], c, 40, length=96, start="2024-01-01", seed=0).values[:, :, 0]
        dips[name] = float(out[:, 61].mean() - np.delete(out, 61, axis=1).min(axis=1).mean())
    assert dips["time"] < 0 and dips["time"] < dips["plain"] - 1.5, dips  # below each series' own lowest


def test_smoothing_keeps_a_wide_edge_bin_target_in_its_bin():
    """Equal-mass bins are narrow where values are dense and wide in the tails (the lowest holds everything from
    the deepest dip up): a target in a wide edge bin keeps its mass there instead of lending two thirds of it to
    neighbours that lie far away in value, while a target among bins of the median width smooths as before."""
    edges = np.r_[-17.0, np.linspace(-2.0, 2.0, 41), 9.0]  # 42 bins: two wide edge bins, 40 of width 0.1
    values = bin_values(edges, [[3.0, 2.0]], 1)  # the edge bins' values lie 3 below and 2 above their inner edges
    assert values[0, 0] == pytest.approx(-50.0) and values[0, 1] == pytest.approx(-19.5)
    assert values[0, -1] == pytest.approx(40.0)
    widths, targets = torch.tensor([2.0]), torch.tensor([[0], [20], [41]])
    plain = support_weights(targets, widths, 8, 42)
    aware = support_weights(targets, widths, 8, 42, values)
    assert plain[0, 0, 8] < 0.4 and aware[0, 0, 8] > 0.99 and aware[2, 0, 8] > 0.99  # offset 8: the target bin
    assert torch.allclose(plain[1], aware[1], atol=1e-6)
    assert torch.allclose(aware.sum(-1), torch.ones(3, 1))
    # the token model's kernel (a row per true bin over every bin) smooths the same way
    token_plain, token_aware = smoothed_kernel(42, 2.0), smoothed_kernel(42, 2.0, values[0])
    assert token_plain[0, 0] < 0.4 and token_aware[0, 0] > 0.99 and token_aware[41, 41] > 0.99
    expected = torch.zeros(42)
    expected[12:29] = aware[1, 0]  # the step model's support: 8 bins either side of bin 20
    assert torch.allclose(token_aware[20], expected, atol=1e-3)


def day_and_night_meters(n_day: int, n_night: int, seed: int, hours: int = 96, level: float = 3.0) -> SeriesSet:
    """``hours`` hours (four days) of hourly series: ``n_day`` peak at midday, ``n_night`` at midnight (a minority
    shape), each at its own level (standard deviation ``level``) and strength of cycle, with noise."""
    rng = np.random.default_rng(seed)
    hours = np.arange(hours)
    shape = np.cos(2 * np.pi * (hours - 12) / 24)[None, :]
    sign = np.r_[np.ones(n_day), -np.ones(n_night)][:, None]
    x = rng.normal(0, level, (n_day + n_night, 1)) + sign * rng.uniform(0.5, 1.5, (n_day + n_night, 1)) * shape
    return series_of((x + rng.normal(0, 0.2, x.shape))[..., None])


def test_profile_classes_group_series_by_the_shape_of_their_day():
    """The codec groups series by the shape of their mean day, whatever their level: each class holds one shape,
    new series of a shape get its class, and the class is a prefix token that round-trips with the codec. No
    classes under DP, without a frequency, for too few series, or for windows that start at any hour."""
    data = day_and_night_meters(66, 24, seed=0)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 96)
    assert 2 <= len(codec.profiles) <= 90 // profiles_module.PROFILE_SERIES
    classes = codec.encode(data)["prefix"][:, -1] - codec.profile_offset
    night = np.r_[np.zeros(66, bool), np.ones(24, bool)]
    assert not set(classes[night]) & set(classes[~night]), classes
    assert codec.prefix_length == 2 and codec.slot_ranges()[-1] == (codec.profile_offset, codec.prefix_vocab)
    fresh = day_and_night_meters(5, 5, seed=1)
    again = StepCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    fresh_classes = again.profile_classes(fresh)
    assert set(fresh_classes[:5]) <= set(classes[~night]) and set(fresh_classes[5:]) <= set(classes[night])
    assert StepCodec.fit(data, ValueCodec(n_bins=32), 96, dp=True).profiles == []
    assert StepCodec.fit(data.subset(np.arange(50)), ValueCodec(n_bins=32), 96).profiles == []
    no_freq = SeriesSet(data.values, data.lengths, data.item_id, data.channels)
    assert StepCodec.fit(no_freq, ValueCodec(n_bins=32), 96).profiles == []
    cut_at_any_hour = SeriesSet(data.values, data.lengths, data.item_id, data.channels, freq="h",
                                start=data.start + np.arange(90).astype("timedelta64[h]"))
    assert StepCodec.fit(cut_at_any_hour, ValueCodec(n_bins=32), 96).profiles == []


def test_token_codec_takes_the_profile_class_as_its_own_hidden_field():
    """Asked for profile classes, the token codec adds a last condition field of its own: each class holds one day
    shape, the field round-trips with the codec, unconditioned draws get the classes at the training shares, a
    decoded class is never an attribute, and the field is not there unless asked, without a frequency, for too few
    series, or where a prior's context holds no token more."""
    data = day_and_night_meters(66, 24, seed=0)
    codec = ValueCodec(n_bins=32).fit(data, profiles=True)
    assert [f.hidden for f in codec.fields] == [True] and 2 <= len(codec.fields[0].values) <= 3
    classes = codec.encode(data)[:, 1] - codec.field_offset(0) - 1
    night = np.r_[np.zeros(66, bool), np.ones(24, bool)]
    assert classes.min() >= 0 and not set(classes[night]) & set(classes[~night]), classes
    again = ValueCodec.from_dict(json.loads(json.dumps(codec.to_dict())))
    assert again.fields == codec.fields and (again.encode(data) == codec.encode(data)).all()
    counts = np.asarray(codec.fields[0].counts)
    assert counts.sum() == 90 and (counts == np.bincount(classes, minlength=len(counts))).all()
    drawn = codec.draw_profiles([{} for _ in range(100)] + [{"~profile": "0"}], np.random.default_rng(0))
    got = np.bincount([int(d["~profile"]) for d in drawn[:100]], minlength=len(counts))
    assert (np.abs(got - 100 * counts / 90) < 1).all() and drawn[100] == {"~profile": "0"}, got
    prefix = np.array([[1, codec.field_offset(0) + 1]] * 3)
    out = codec.decode(prefix, np.full((3, 96), codec.value_offset), np.full(3, 96), np.random.default_rng(0))
    assert "~profile" not in out.attributes.columns
    assert ValueCodec(n_bins=32).fit(data).fields == []
    assert ValueCodec(n_bins=32).fit(data.subset(np.arange(50)), profiles=True).fields == []
    no_freq = SeriesSet(data.values, data.lengths, data.item_id, data.channels)
    assert ValueCodec(n_bins=32).fit(no_freq, profiles=True).fields == []
    with_attr = SeriesSet(data.values, data.lengths, data.item_id, data.channels, start=data.start, freq="h",
                          attributes=pd.DataFrame({"~profile": np.arange(90) % 2}))
    with pytest.raises(ConfigError, match="~profile"):
        ValueCodec(n_bins=32).fit(with_attr, profiles=True)
    load = resolve_prior("load", False)  # context 170 tokens: bos, 168 values, eos
    assert [f.hidden for f in load.codec_for(data, "auto", False, None, 0, profiles=True).fields] == [True]
    week = day_and_night_meters(66, 24, seed=0, hours=168)
    assert load.codec_for(week, "auto", False, None, 0, profiles=True).fields == []
    assert load.codec_for(data, "auto", True, (-5.0, 5.0), 0, profiles=True).fields == []  # never under DP


def test_token_model_draws_the_minority_day_shape_at_its_share():
    """The token model draws the profile class first and follows its shape: about a quarter of the samples peak
    at night, as a quarter of the training series do; a given class is drawn as asked; samples carry no class
    column. (Levels close together: the day's shape then spans many of the token model's global bins.)"""
    data = day_and_night_meters(66, 24, seed=0, level=0.3)
    syn = Synthesizer(codec="token", prior="none", preset="tiny", n_bins=32, ensemble=1, epochs=60, patience=60,
                      seed=0).fit(data, progress=False)
    codec = syn.backend.codec
    assert [f.hidden for f in codec.fields] == [True]
    classes = codec.encode(data)[:, 1] - codec.field_offset(0) - 1
    night_class, day_class = (str(int(np.bincount(classes[rows]).argmax())) for rows in (slice(66, 90), slice(66)))
    assert night_class != day_class

    def night_peaks(samples: SeriesSet) -> np.ndarray:
        days = samples.values[:, :, 0].reshape(len(samples), 4, 24).mean(1)
        return days[:, [22, 23, 0, 1, 2]].mean(1) > days[:, 10:15].mean(1)

    samples = syn.sample(200, seed=0)
    assert "~profile" not in samples.attributes.columns
    assert 0.12 < night_peaks(samples).mean() < 0.45, night_peaks(samples).mean()
    assert night_peaks(syn.sample(50, conditions={"~profile": night_class}, seed=1)).mean() > 0.7
    assert night_peaks(syn.sample(50, conditions={"~profile": day_class}, seed=1)).mean() < 0.1


def test_samples_keep_the_share_of_a_minority_day_shape():
    """A quarter of the training series peak at night: the model draws a profile class first and follows its
    shape, so about a quarter of the samples peak at night too, and they fall in the night-time classes."""
    data = day_and_night_meters(66, 24, seed=0)
    codec = StepCodec.fit(data, ValueCodec(n_bins=32), 96)
    night_classes = set(codec.encode(data)["prefix"][66:, -1] - codec.profile_offset)
    model, _ = trained_model(codec, data, 0, batch=90, steps=80)
    samples = generate_steps([model], codec, 200, length=96, start="2024-01-01", seed=0)
    days = samples.values[:, :, 0].reshape(200, 4, 24).mean(1)
    night_peak = days[:, [22, 23, 0, 1, 2]].mean(1) > days[:, 10:15].mean(1)
    assert 0.12 < night_peak.mean() < 0.45, night_peak.mean()
    in_night_class = np.isin(codec.profile_classes(samples), list(night_classes))
    assert (in_night_class == night_peak).mean() > 0.9
