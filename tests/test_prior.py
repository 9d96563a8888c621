"""The public prior: pretraining on a corpus, fine-tuning from it, the shipped default, refusals."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from tsynth import SeriesSet
from tsynth.artifact import FORMAT_VERSION
from tsynth.corpus import DEFAULT_CORPUS, EXCLUDED, LOAD_CORPUS
from tsynth.errors import ArtifactError, ConfigError
from tsynth.pretrain import pretrain
from tsynth.prior import (DEFAULT_PRIOR, LOAD_DOMAINS, PRIOR_RANGE, SHIPPED_PRIORS, Prior, auto_prior,
                          corpus_windows, resolve_prior)
from tsynth.synthesizer import Synthesizer
from tsynth.train import TrainConfig


def daily(n, length, seed, level=0.0):
    """Noisy daily cycles with random phase and amplitude."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None]
    x = level + rng.uniform(0.5, 2, (n, 1)) * np.sin(2 * np.pi * t / 24 + rng.uniform(0, 6, (n, 1)))
    return x + 0.2 * rng.normal(size=(n, length))


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    """A small prior pretrained on a public-corpus file (wide CSV, one column per series)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("prior")
    corpus = tmp / "public_load.csv"
    pd.DataFrame(daily(12, 400, seed=1).T, columns=[f"s{i}" for i in range(12)]).to_csv(corpus, index=False)
    return pretrain([str(corpus)], tmp / "prior", lengths=(24, 48), max_windows=300, epochs=2, progress=False)


def test_corpus_windows_context_scaled_and_counted():
    series = [np.r_[np.zeros(100), np.ones(100)], daily(1, 500, 0)[0] * 100 + 7, np.full(300, 3.0)]
    series[1][250] = 1e6  # a spike far outside the range: clipped and counted
    w, stats = corpus_windows(series, ["a", "b", "c"], lengths=(24, 48), max_windows=3000, seed=0)
    assert stats["c"]["windows"] == 0 and stats["c"]["skipped_constant"] == stats["c"]["candidate_windows"]
    assert stats["b"]["clipped_values"] >= 1
    assert np.nanmin(w.values) >= PRIOR_RANGE[0] and np.nanmax(w.values) <= PRIOR_RANGE[1]
    assert set(w.lengths) == {24, 48}
    # context scaling: the windows of a long series are not all exactly zero-mean
    means = [np.nanmean(w.values[i]) for i in range(len(w)) if w.item_id[i].startswith("b:")]
    assert np.std(means) > 0.05


def test_pretrain_writes_a_prior_with_its_corpus_manifest(prior_dir):
    doc = json.loads((prior_dir / "tsynth.json").read_text())
    src = doc["corpus"]["sources"][0]
    assert src["name"] == "public_load.csv" and src["series"] == 12 and src["windows"] > 0
    assert "licence" in src and doc["corpus"]["lengths"] == [24, 48]
    assert json.loads((prior_dir / "corpus.json").read_text()) == doc["corpus"]
    prior = Prior.load(prior_dir)
    assert prior.lengths == [24, 48] and prior.n_positions == 50 and prior.codec.n_value_tokens == 256
    # a prior is a normal model directory: it samples on its own
    out = Synthesizer.load(prior_dir).sample(3, seed=0, length=48)
    assert out.values.shape == (3, 48, 1)


def test_fine_tuning_keeps_the_prior_bins_and_grows_the_vocabulary(prior_dir):
    torch.set_num_threads(1)
    start = pd.date_range("2014-01-06", periods=40, freq="D")
    data = SeriesSet(daily(40, 24, seed=2, level=50.0)[..., None].astype(np.float32), np.full(40, 24),
                     [f"m{i}" for i in range(40)], ["load"], start=start.to_numpy(), freq="h")
    syn = Synthesizer("local", prior=str(prior_dir), ensemble=1, epochs=2, conditions=["dayofweek"]).fit(
        data, progress=False)
    prior = Prior.load(prior_dir)
    codec = syn.backend.codec
    assert codec.edges == prior.codec.edges and codec.scaling == "global" and abs(codec.loc[0] - 50) < 1
    assert [f.name for f in codec.fields] == ["dayofweek"]
    assert len(codec.vocab) == len(prior.codec.vocab) + 8  # unknown + 7 days
    assert syn.info["prior"]["path"] == str(prior_dir.resolve()) and syn.info["prior"]["weights_sha256"]
    init = prior.initial_weights(len(codec.vocab))
    wte = init["transformer.wte.weight"]
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(prior_dir / "model").state_dict()["transformer.wte.weight"]
    assert torch.equal(wte[: len(original)], original) and wte.shape[0] == len(codec.vocab)
    out = syn.sample(5, seed=0)
    assert out.values.shape == (5, 24, 1) and abs(float(np.nanmean(out.values)) - 50) < 3


def test_fine_tuning_cuts_the_prior_bins_that_the_data_fills_far_out(prior_dir):
    """A dip that every series takes at one hour (a clock change: every meter reads about 0) lies beyond the
    prior's inner bins, in its lowest bin together with the ordinary lows: one token to the model. Without DP the
    fine-tune cuts the prior's edge bins at quantiles of the values they hold (as the step codec cuts its wide
    bins), every piece a token whose embedding and output rows start as its bin's; the inner bins stay the prior's,
    and the tokens after the values keep their rows, moved up. Under DP the bins stay the prior's."""
    from transformers import AutoModelForCausalLM

    from tsynth.codecs.values import WIDE_MIN_VALUES

    torch.set_num_threads(1)
    x = daily(200, 24, seed=4)
    x[:, 5] = -4 + 0.5 * np.random.default_rng(5).normal(size=200)
    data = SeriesSet.from_arrays(list(x), [f"m{i}" for i in range(200)])
    prior = Prior.load(prior_dir)
    codec = prior.codec_for(data, [], dp=False, value_range=None, point_mass_series=10)
    edges, cut = np.asarray(prior.codec.edges), np.asarray(codec.edges)
    assert len(cut) > len(edges) and set(edges) <= set(cut)
    assert ((cut < edges[1]) | (cut > edges[-2]) | np.isin(cut, edges)).all()  # only the edge bins are cut
    assert (cut < edges[1]).sum() >= 3  # the lowest bin in two pieces or more
    units = codec.to_units(data.values.astype(np.float64))
    held = np.histogram(units[units < edges[1]], cut[cut <= edges[1]])[0]
    assert held.min() >= WIDE_MIN_VALUES, held
    init = prior.initial_weights(len(codec.vocab), codec)["transformer.wte.weight"]
    original = AutoModelForCausalLM.from_pretrained(prior_dir / "model").state_dict()["transformer.wte.weight"]
    first, n_prior = codec.value_offset, len(edges) - 1
    bin_of = np.searchsorted(edges, (cut[:-1] + cut[1:]) / 2, side="right") - 1
    assert torch.equal(init[:first], original[:first])
    assert torch.equal(init[first:first + len(cut) - 1], original[first + bin_of])
    assert torch.equal(init[first + len(cut) - 1:len(original) + len(cut) - len(edges)], original[first + n_prior:])
    assert prior.codec_for(data, [], dp=True, value_range=(-5, 5), point_mass_series=0).edges == prior.codec.edges
    syn = Synthesizer("local", prior=str(prior_dir), ensemble=1, epochs=2).fit(data, progress=False)
    assert syn.backend.codec.edges == codec.edges
    out = syn.sample(20, seed=0)
    assert out.values.shape == (20, 24, 1) and np.isfinite(out.values).all()


def test_starting_from_a_prior_draws_no_progress_bar(capfd):
    """Loading a prior's weights writes nothing to the terminal (transformers would draw a "Loading weights" bar)."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh process
    weights = resolve_prior("load", False).initial_weights(400)
    assert weights["transformer.wte.weight"].shape[0] == 400
    out, err = capfd.readouterr()
    assert out == "" and "Loading" not in err and "%" not in err


def test_default_ensemble_is_larger_from_a_prior(prior_dir, monkeypatch, tmp_path):
    """Without --ensemble a fit from a prior trains PRIOR_ENSEMBLE members, one from scratch DEFAULT_ENSEMBLE;
    the size fit chose is what the saved model records and reloads; a given size wins either way. Dropout alike:
    SMALL_DATA_DROPOUT on at most SMALL_DATA_VALUES readings from scratch, PRIOR_SMALL_DATA_VALUES from a prior,
    never under DP, else TrainConfig's; a given one either way. A member fine-tuned from a prior without DP has
    no attention dropout."""
    import tsynth.backends.local as local

    monkeypatch.setattr(local, "DEFAULT_ENSEMBLE", 1)
    monkeypatch.setattr(local, "PRIOR_ENSEMBLE", 2)
    torch.set_num_threads(1)
    data = SeriesSet(daily(40, 24, seed=3)[..., None].astype(np.float32), np.full(40, 24),
                     [f"m{i}" for i in range(40)], ["load"])
    fast = {"epochs": 1, "workers": 1}
    from_prior = Synthesizer("local", prior=str(prior_dir), **fast).fit(data, progress=False)
    assert len(from_prior.backend.models) == 2 and from_prior.backend.options.ensemble == 2
    from_prior.save(tmp_path / "m")
    assert len(Synthesizer.load(tmp_path / "m").backend.models) == 2
    scratch = Synthesizer("local", prior="none", **fast).fit(data, progress=False)
    assert len(scratch.backend.models) == 1
    given = Synthesizer("local", prior=str(prior_dir), ensemble=1, **fast).fit(data, progress=False)
    assert len(given.backend.models) == 1
    assert local.SMALL_DATA_DROPOUT != TrainConfig.dropout
    assert {m.config.resid_pdrop for m in from_prior.backend.models} == {local.SMALL_DATA_DROPOUT}  # 960 readings
    assert {m.config.attn_pdrop for m in from_prior.backend.models} == {0.0}  # fine-tuned: no attention dropout
    assert from_prior.info["options"]["train"]["dropout"] == local.SMALL_DATA_DROPOUT  # recorded as trained
    assert scratch.backend.models[0].config.attn_pdrop == local.SMALL_DATA_DROPOUT
    assert scratch.info["options"]["train"]["dropout"] == local.SMALL_DATA_DROPOUT
    assert local.PRIOR_SMALL_DATA_VALUES < local.SMALL_DATA_VALUES
    for n, from_prior_, dp, dropout in [(local.SMALL_DATA_VALUES, False, False, local.SMALL_DATA_DROPOUT),
                                        (local.SMALL_DATA_VALUES + 1, False, False, TrainConfig.dropout),
                                        (local.PRIOR_SMALL_DATA_VALUES, True, False, local.SMALL_DATA_DROPOUT),
                                        (local.PRIOR_SMALL_DATA_VALUES + 1, True, False, TrainConfig.dropout),
                                        (100, True, True, TrainConfig.dropout), (100, False, True, TrainConfig.dropout)]:
        assert local.default_dropout(n, from_prior_, dp) == dropout
    for prior, attention in ((str(prior_dir), 0.0), ("none", 0.05)):
        chosen = Synthesizer("local", prior=prior, ensemble=1, dropout=0.05, **fast).fit(data, progress=False)
        assert chosen.backend.models[0].config.resid_pdrop == 0.05
        assert chosen.backend.models[0].config.attn_pdrop == attention


def test_values_beyond_a_prior_range_are_reported_once_per_fit(prior_dir, caplog):
    """Members encode their own parts of the data; the count of values put in the edge bins is said once."""
    torch.set_num_threads(1)
    vals = daily(40, 24, seed=3)
    vals[5, 7] = vals.max() + 1e4 * vals.std()  # far beyond the prior's range once scaled
    data = SeriesSet(vals[..., None].astype(np.float32), np.full(40, 24), [f"m{i}" for i in range(40)], ["load"])
    with caplog.at_level(logging.WARNING, logger="tsynth"):
        Synthesizer("local", prior=str(prior_dir), ensemble=3, epochs=1, workers=1).fit(data, progress=False)
    said = [r.getMessage() for r in caplog.records if "outside the codec's range" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("1 values"), said


def profiles(syn: Synthesizer) -> list[str]:
    """The profile releases of a DP fit (every DP fit also releases whether the series are standardised)."""
    return [r["what"] for r in syn.info["privacy"]["releases"] if "profile" in r["what"]]


def test_dp_fine_tuning_from_a_prior_uses_no_data_fitted_scaler(prior_dir):
    torch.set_num_threads(1)
    data = SeriesSet.from_arrays(list(daily(60, 24, seed=3) * 10), [f"u{i}" for i in range(60)])
    syn = Synthesizer("local", prior=str(prior_dir), dp_epsilon=8.0, epochs=1, value_range=(-20.0, 20.0)).fit(
        data, progress=False)
    codec = syn.info["codec"]
    assert codec["scaling"] == "none" and codec["edges"] == Prior.load(prior_dir).codec.edges
    assert codec["loc"] == [0.0] and codec["scale"] == [4.0]  # [-20, 20] mapped onto the prior's [-5, 5]
    assert syn.info["privacy"]["epsilon"] <= 8.0 * 1.05 and syn.info["prior"] is not None
    assert profiles(syn) == []   # a prior of your own: no profile release unless asked
    asked = Synthesizer("local", prior=str(prior_dir), dp_epsilon=8.0, epochs=1, value_range=(-20.0, 20.0),
                        dp_profile_share=0.25).fit(data, progress=False)
    assert profiles(asked) == ["per-step mean profile"]
    beyond = float(np.mean(np.abs(data.values) > 20))  # values outside the public range itself (9 of 1,440)
    assert 0 < asked.backend.codec.outside_share(data) <= beyond  # less the profile, the rest still map inside the edges
    load = Synthesizer("local", prior="load", dp_epsilon=8.0, epochs=1, value_range=(-20.0, 20.0)).fit(
        data, progress=False)
    assert profiles(load) == []  # the shipped load prior is a domain prior too
    assert load.backend.models[0].config.attn_pdrop == TrainConfig.dropout  # under DP attention dropout stays
    assert load.info["prior"]["sources"] == list(LOAD_CORPUS)


def test_refusals_write_nothing(prior_dir, tmp_path):
    long = SeriesSet.from_arrays(list(daily(30, 60, 4)), [f"u{i}" for i in range(30)])
    with pytest.raises(ConfigError, match="24-48 steps"):
        Synthesizer("local", prior=str(prior_dir), epochs=1).fit(long, progress=False)
    short = SeriesSet.from_arrays(list(daily(30, 12, 4)), [f"u{i}" for i in range(30)])
    with pytest.raises(ConfigError, match="24-48 steps"):
        Synthesizer("local", prior=str(prior_dir), epochs=1).fit(short, progress=False)
    fits = SeriesSet.from_arrays(list(daily(30, 24, 5)), [f"u{i}" for i in range(30)])
    with pytest.raises(ConfigError, match="scaling 'none' cannot start from a prior"):
        Synthesizer("local", prior=str(prior_dir), epochs=1, scaling="none").fit(fits, progress=False)
    with pytest.raises(ConfigError, match="no such directory"):
        Synthesizer("local", prior=str(tmp_path / "missing"), epochs=1).fit(long, progress=False)
    with pytest.raises(ConfigError, match="corpus"):
        pretrain(["no_such_corpus"], tmp_path / "out", epochs=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_other_format_and_other_codec_are_refused(prior_dir, tmp_path):
    import shutil

    bad = tmp_path / "old"
    shutil.copytree(prior_dir, bad)
    doc = json.loads((bad / "tsynth.json").read_text())
    (bad / "tsynth.json").write_text(json.dumps({**doc, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(ArtifactError, match="format version"):
        Prior.load(bad)
    (bad / "tsynth.json").write_text(json.dumps({**doc, "codec": {**doc["codec"], "scaling": "global"}}))
    with pytest.raises(ArtifactError, match="another codec"):
        Prior.load(bad)
    (bad / "tsynth.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "corpus"}))
    with pytest.raises(ArtifactError, match="not a prior"):
        Prior.load(bad)


def test_auto_prior_falls_back_when_the_data_does_not_fit(caplog):
    torch.set_num_threads(1)
    data = SeriesSet.from_arrays(list(daily(60, 12, 6)), [f"u{i}" for i in range(60)])
    syn = Synthesizer("local", dp_epsilon=8.0, epochs=1).fit(data, progress=False)
    assert syn.info["prior"] is None and "not starting from the default prior" in caplog.text


def test_auto_load_prior_falls_back_to_the_model_the_data_takes_alone(caplog):
    """Hourly one-channel series longer than the load prior's longest window: the load prior is not taken, and the
    data gets the model it gets without a prior (the step model), not a token model from scratch."""
    torch.set_num_threads(1)
    vals = 2 + daily(40, 200, 8)
    data = SeriesSet.from_arrays(list(vals), [f"m{i}" for i in range(40)], start=[pd.Timestamp("2024-01-01")] * 40,
                                 freq="h")
    syn = Synthesizer("local", epochs=1, ensemble=1).fit(data, progress=False)
    assert syn.info["prior"] is None and syn.info["codec"]["kind"] == "step"
    assert "not starting from the load prior" in caplog.text


def test_series_whose_levels_differ_by_orders_of_magnitude_start_from_a_prior(prior_dir, tmp_path):
    """Per-series scaling from a prior: each series over its level, less the mean, over its own spread, onto the
    prior's bins (a positive series is standardised on its own); its level and spread are new tokens before the
    values, and samples keep the levels over orders of magnitude and the series' spreads."""
    from tsynth.codecs.values import N_LEVEL_BINS

    torch.set_num_threads(1)
    levels = 10.0 ** np.repeat(np.arange(4), 10)
    vals = levels[:, None] * (3 + daily(40, 24, 9) * np.tile([0.3, 1.0], 20)[:, None])  # two spreads at each level
    data = SeriesSet.from_arrays(list(vals), [f"m{i}" for i in range(40)])
    syn = Synthesizer("local", prior=str(prior_dir), ensemble=1, epochs=12).fit(data, progress=False)
    prior, codec = Prior.load(prior_dir), syn.backend.codec
    assert codec.scaling == "series" and codec.edges == prior.codec.edges
    assert len(codec.vocab) == len(prior.codec.vocab) + 2 * N_LEVEL_BINS and codec.prefix_length == 3
    x = data.values.astype(np.float64)
    units = codec.to_units(x)
    np.testing.assert_allclose(units.mean(1), 0, atol=1e-9)
    np.testing.assert_allclose(units.std(1), 1, rtol=1e-9)
    np.testing.assert_allclose(codec.scaler.from_units(units, codec.scaler.levels(x)), x, rtol=1e-9)
    flat = np.array([[[0.0]] * 24, [[7.0]] * 24])  # an all-zero and a constant series: at the bins' centre
    assert np.all(codec.to_units(flat) == 0)
    assert type(codec).from_dict(codec.to_dict()).scaler == codec.scaler
    out = syn.sample(200, seed=0)
    y = out.values[..., 0].astype(np.float64)
    drawn = np.log10(np.mean(np.abs(y), axis=1))
    assert drawn.min() < 0.9 and drawn.max() > 3.2  # the lowest and highest of the four levels (0.48 and 3.48)
    for k in range(4):  # each drawn level near one of the data's: no series between the four groups' levels
        assert np.mean(np.abs(drawn - (k + np.log10(3))) < 0.3) > 0.1
    cv = np.log10(y.std(1) / y.mean(1))  # the data's: about -1.4 (spread 0.3) and -0.9 (spread 1)
    assert np.mean(cv < -1.15) > 0.25 and np.mean(cv > -1.15) > 0.25
    syn.save(tmp_path / "m")  # the saved model draws the same series
    np.testing.assert_array_equal(Synthesizer.load(tmp_path / "m").sample(200, seed=0).values, out.values)


def test_per_series_scaling_onto_prior_bins_round_trips_every_channel(prior_dir):
    """Two channels whose levels differ by orders of magnitude (one of them crossing zero, one series all zero): the
    prefix holds a level token per channel, then a spread token per channel, and decoding the encoded tokens gives
    back each series' level and spread to within their bins, and its values to within theirs."""
    from tsynth.codecs.values import ValueCodec

    levels = 10.0 ** np.repeat(np.arange(4), 10)
    load = levels[:, None] * (3 + daily(40, 24, 11))
    net = levels[:, None] * daily(40, 24, 12)  # crosses zero
    vals = np.stack([load, net], axis=2)
    vals[5, :, 1] = 0.0
    data = SeriesSet(vals.astype(np.float32), np.full(40, 24), [f"m{i}" for i in range(40)], ["load", "net"])
    prior = Prior.load(prior_dir)
    codec = ValueCodec(n_bins=prior.codec.n_bins, scaling="series").fit(data, edges=prior.codec.edges)
    assert codec.prefix_length == 1 + 2 + 2 and len(codec.series_spread_edges) == 65
    tokens = codec.encode(data, warn=False)
    prefix, value_ids = tokens[:, :codec.prefix_length], tokens[:, codec.prefix_length:-1]
    lo = codec.level_offset
    assert np.all((prefix[:, 1:3] >= lo) & (prefix[:, 1:3] < lo + 64))  # levels, then spreads
    assert np.all((prefix[:, 3:5] >= lo + 64) & (prefix[:, 3:5] < lo + 128))
    back = codec.decode(prefix, value_ids, data.lengths, np.random.default_rng(0))
    x, y = data.values.astype(np.float64), back.values.astype(np.float64)
    true, drawn = codec.scaler.levels(x), codec.scaler.levels(y)
    level_bin = codec.level_edges[1] - codec.level_edges[0]
    spread_bin = codec.series_spread_edges[1] - codec.series_spread_edges[0]
    varied = np.arange(40) != 5
    assert np.all(np.abs(true[:, :2] - drawn[:, :2])[varied] < 2 * level_bin)
    assert np.all(np.abs(true[:, 2:] - drawn[:, 2:])[varied] < 2 * spread_bin)
    rel_err = np.abs(y - x) / np.abs(x).mean(1, keepdims=True)  # mostly the level's draw inside its bin (+-6 %)
    assert np.median(rel_err[:, :, 0]) < 0.1 and np.all(np.abs(y[5, :, 1]) < 1e-3 * np.abs(x).max())


def test_auto_takes_no_prior_where_the_series_start_at_different_times_of_day(caplog):
    """Hourly one-channel series that start at different hours (windows cut from a few long series, as ETTh1's):
    without DP and without a domain `auto` trains the step model from scratch, whose calendar inputs know each
    step's hour (docs/priors.md); a domain still takes the load prior, and so do the same series on one start,
    standardised each on its own or not, and short windows (at most SHORT_STEPS) at different hours, which from
    scratch take the step model."""
    from tsynth.backends.local import SHORT_STEPS
    from tsynth.codecs.calendar import phases_differ

    torch.set_num_threads(1)
    vals = 2 + daily(40, 48, 5)
    vals = (vals - vals.mean(1, keepdims=True)) / vals.std(1, ddof=1, keepdims=True)
    starts = [pd.Timestamp("2024-01-01") + pd.Timedelta(hours=5 * i) for i in range(40)]
    data = SeriesSet.from_arrays(list(vals), [f"m{i}" for i in range(40)], start=starts, freq="h")
    assert phases_differ(data)
    with caplog.at_level(logging.INFO, logger="tsynth"):
        syn = Synthesizer("local", epochs=1, ensemble=1).fit(data, progress=False)
    assert syn.info["prior"] is None and syn.info["codec"]["kind"] == "step"
    assert "start at different times of the day" in caplog.text
    told = Synthesizer("local", epochs=1, ensemble=1, domain="electricity").fit(data, progress=False)
    assert told.info["prior"] is not None and told.info["codec"].get("kind") != "step"  # a token model
    panel = SeriesSet.from_arrays(list(vals), [f"m{i}" for i in range(40)], start=[starts[0]] * 40, freq="h")
    assert not phases_differ(panel)
    one_start = Synthesizer("local", epochs=1, ensemble=1).fit(panel, progress=False)
    assert one_start.info["prior"] is not None and one_start.info["codec"].get("kind") != "step"
    assert one_start.info["codec"].get("standardised") == 1  # the samples are standardised alike
    days = SeriesSet.from_arrays(list(vals[:, :SHORT_STEPS]), [f"m{i}" for i in range(40)], start=starts, freq="h")
    assert phases_differ(days)
    short = Synthesizer("local", epochs=1, ensemble=1).fit(days, progress=False)
    assert short.info["prior"] is not None and short.info["codec"].get("kind") != "step"
    assert "hour" in [f["name"] for f in short.info["codec"]["fields"]]  # the token model knows each start's hour
    # from scratch, short windows at different hours take the step model (its calendar inputs), on one start the token model
    scratch = Synthesizer("local", epochs=1, ensemble=1, prior="none").fit(days, progress=False)
    assert scratch.info["codec"]["kind"] == "step" and scratch.info["codec"]["calendar"]
    one_day = SeriesSet.from_arrays(list(vals[:, :SHORT_STEPS]), [f"m{i}" for i in range(40)], start=[starts[0]] * 40,
                                    freq="h")
    assert Synthesizer("local", epochs=1, ensemble=1, prior="none").fit(one_day, progress=False).info["codec"].get(
        "kind") != "step"


def test_phases_differ_reads_the_time_of_day_or_the_day_of_the_week():
    from tsynth.codecs.calendar import SHARED_PHASE, phases_differ

    def starts(freq, stamps):
        return SeriesSet.from_arrays([np.zeros(30)] * len(stamps), [f"s{i}" for i in range(len(stamps))],
                                     start=[pd.Timestamp(t) for t in stamps], freq=freq)

    days = [f"2024-01-{d:02d}" for d in range(1, 21)]                       # twenty days in a row, all at midnight
    assert not phases_differ(starts("h", days))                           # hourly: one time of day
    assert phases_differ(starts("D", days))                               # daily: every day of the week
    assert not phases_differ(starts("D", ["2024-01-01", "2024-01-08", "2024-01-15"]))  # Mondays
    one_off = int(20 * (1 - SHARED_PHASE)) - 1                             # a few at another hour: still shared
    assert not phases_differ(starts("h", days[one_off:] + [d + " 05:00" for d in days[:one_off]]))
    assert not phases_differ(SeriesSet.from_arrays([np.zeros(30)] * 3, ["a", "b", "c"]))  # no time stamps
    assert not phases_differ(starts("MS", ["2024-01-01", "2024-02-01", "2024-03-05"]))  # no fixed step


def test_auto_prior_from_public_facts_only():
    """--domain names the prior; without it, the load prior for hourly one-channel data (with or without DP), else
    none without DP and the default prior under DP."""
    for domain in LOAD_DOMAINS:
        assert auto_prior(domain.upper(), dp=False, freq="D", n_channels=3)[0] == "load"
    assert auto_prior(None, dp=False, freq="h", n_channels=1)[0] == "load"
    assert auto_prior(None, dp=False, freq="h", n_channels=2)[0] is None
    assert auto_prior(None, dp=False, freq="D", n_channels=1)[0] is None
    assert auto_prior(None, dp=False, freq=None, n_channels=1)[0] is None
    assert auto_prior(None, dp=True, freq="h", n_channels=1)[0] == "load"
    assert auto_prior(None, dp=True, freq="60min", n_channels=1)[0] == "load"
    assert auto_prior(None, dp=True, freq="h", n_channels=2)[0] == "default"
    assert auto_prior(None, dp=True, freq=None, n_channels=1)[0] == "default"
    name, why = auto_prior("finance", dp=True, freq="h", n_channels=1)   # said not to be load: no load prior
    assert name == "default" and "no shipped prior serves domain 'finance'" in why
    assert auto_prior("weather", dp=False, freq="h", n_channels=1)[0] is None
    assert resolve_prior("auto", dp=False, domain="gas", freq="h").path == SHIPPED_PRIORS["load"]
    assert resolve_prior("auto", dp=False, domain="weather") is None


def test_domain_takes_its_prior_and_an_unknown_one_is_said(caplog):
    torch.set_num_threads(1)
    caplog.set_level(logging.INFO, logger="tsynth")
    data = SeriesSet.from_arrays(list(daily(30, 48, 7)), [f"d{i}" for i in range(30)])   # 48 steps: the step model
    syn = Synthesizer("local", domain="electricity", epochs=1, ensemble=1, batch_size=16).fit(data, progress=False)
    assert syn.info["codec"].get("kind") != "step" and "simbench" in syn.info["prior"]["sources"]
    assert "domain 'electricity': the load prior" in caplog.text
    caplog.clear()
    syn = Synthesizer("local", domain="finance", epochs=1, ensemble=1).fit(data, progress=False)
    assert syn.info["prior"] is None and syn.info["codec"]["kind"] == "step"
    assert "no shipped prior serves domain 'finance'" in caplog.text
    warned = [r for r in caplog.records if "finance" in r.getMessage()]
    assert warned and all(r.levelname == "WARNING" for r in warned)


@pytest.mark.parametrize("name", sorted(SHIPPED_PRIORS))
def test_shipped_priors_are_small_public_and_documented(name):
    path = SHIPPED_PRIORS[name]
    prior = resolve_prior(name, dp=False)
    assert prior.path == path and (name != "default" or path == DEFAULT_PRIOR)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 5e6
    corpus = prior.doc["corpus"]
    names = {s["name"] for s in corpus["sources"]}
    assert names == set({"default": DEFAULT_CORPUS, "load": LOAD_CORPUS}[name])
    assert not names & {e.lower() for e in EXCLUDED}
    for s in corpus["sources"]:
        assert s["licence"] and s["package"] and s["windows"] > 0
    assert corpus["command"].startswith("tsynth pretrain") and f"-o src/tsynth/priors/{name}" in corpus["command"]
    assert prior.lengths[0] <= 24 and prior.lengths[-1] >= 100  # covers the demo (24) and the recipe (100)
