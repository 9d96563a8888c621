"""Evaluation of long series and of the series' shape, on hourly series whose answers are known:
a fresh draw of the same process, one without its daily cycle, one whose level drifts, and gaps."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from tsynth import SeriesSet
from tsynth.cli import main
from tsynth.errors import ConfigError, DataError
from tsynth.evaluate import discriminative_score, evaluate, render_report
from tsynth.evaluate.fidelity import acf, block_summary, prepare, summary_block
from tsynth.evaluate.longseries import (MONDAY_PHASE_NS, WEEK_NS, acf_with_gaps, calendar, stability,
                                        stability_window, totals)

DAYS = 14
N = 60
MONDAY = pd.Timestamp("2024-01-01")


def hourly(n, seed, prefix, daily=1.0, drift=0.0, spread_drift=0.0, days=DAYS, start=MONDAY):
    """Meter-like hourly series: a level per series, a daily sine peaking at noon, a weekend bump and
    noise; ``drift`` moves the level by that many units over the series, ``spread_drift`` grows the
    noise from 1x to (1 + spread_drift)x."""
    rng = np.random.RandomState(seed)
    length = days * 24
    t = np.arange(length)
    level = 5 + rng.rand(n)
    noise = 0.3 * (1 + spread_drift * t / length) * rng.randn(n, length)
    x = level[:, None] + daily * np.sin(2 * np.pi * (t % 24 - 6) / 24) + 0.5 * ((t // 24) % 7 >= 5) + noise
    x = x + drift * t / length
    return SeriesSet(x[:, :, None], np.full(n, length), [f"{prefix}{i}" for i in range(n)], ["load"],
                     start=[start] * n, freq="h")


@pytest.fixture(scope="module")
def real():
    return hourly(N, 0, "t"), hourly(N, 1, "h")


@pytest.fixture(scope="module")
def fresh(real):
    train, holdout = real
    return evaluate(train, hourly(N, 2, "s"), holdout, fast=True)


@pytest.fixture(scope="module")
def flat_set():
    return hourly(N, 3, "s", daily=0.0)


@pytest.fixture(scope="module")
def flat(real, flat_set):
    return evaluate(real[0], flat_set, fast=True)


def test_fresh_draw_matches_and_keys_are_where_the_benchmarks_read_them(fresh):
    d = json.loads(json.dumps(fresh.to_dict(), allow_nan=False))
    long, ref = d["fidelity"]["long"], d["holdout_reference"]["long"]
    assert long["acf"]["lags"] == {"step": 1, "day": 24, "week": 168}
    assert set(long["acf"]["err"]) == {"1", "24", "168"} and set(ref["acf"]["err"]) == {"1", "24", "168"}
    assert long["acf"]["err"]["24"] < 0.03 and ref["acf"]["err"]["24"] < 0.03
    assert long["profiles"]["hour_of_day"]["err"] < 0.4 and len(long["profiles"]["hour_of_day"]["real"][0]) == 24
    assert long["profiles"]["day_of_week"]["bins"][0] == "Mon"
    # the weekend bump: Saturday and Sunday sit 0.5 above the weekdays in the real profile
    dow = np.array(long["profiles"]["day_of_week"]["real"][0])
    assert dow[5:].mean() - dow[:5].mean() == pytest.approx(0.5, abs=0.1)
    assert long["totals"]["day"]["steps"] == 24 and long["totals"]["day"]["n_real"] == N * DAYS
    assert long["totals"]["week"]["n_real"] == N * DAYS // 7 and long["totals"]["week"]["aligned"] == "calendar"
    assert abs(long["stability"]["synthetic"]["level_drift_mean"]) < 0.1 and long["stability"]["window"] == 168
    assert long["subwindow"]["steps"] == 168 and long["subwindow"]["offsets"] == [0, 168]
    assert long["subwindow"]["discriminative"]["n_real"] == N * 2
    assert long["subwindow"]["disc_gbm"] < 0.2 and d["fidelity"]["shape"]["disc_gbm"] < 0.2
    shape = d["fidelity"]["shape"]
    assert shape["cycle_lag"] == 24 and shape["acf_err_cycle"] == long["acf"]["err"]["24"]
    assert shape["hour_of_day_profile_err"] < 0.2
    assert "disc_gbm" in d["holdout_reference"]["shape"] and "subwindow" in ref
    h = d["summary"]["headline"]
    assert h["shape_disc_gbm"] == shape["disc_gbm"] and h["acf_err_cycle"] == shape["acf_err_cycle"]
    assert h["subwindow_disc_gbm"] == long["subwindow"]["disc_gbm"]
    assert d["summary"]["cycle_lag"] == 24 and d["summary"]["long_series"] is True and d["summary"]["freq"] == "h"
    assert d["fidelity"]["gap_share"] == {"real": 0.0, "synthetic": 0.0, "err": 0.0}


def test_series_without_the_daily_cycle_are_caught(fresh, flat):
    f, g = flat.fidelity, fresh.fidelity
    assert f["long"]["acf"]["err"]["24"] > 0.5 > 10 * g["long"]["acf"]["err"]["24"]
    assert f["long"]["profiles"]["hour_of_day"]["err"] > 0.5 > 2 * g["long"]["profiles"]["hour_of_day"]["err"]
    assert f["shape"]["disc_gbm"] > 0.35 and f["long"]["subwindow"]["disc_gbm"] > 0.35
    assert f["shape"]["hour_of_day_profile_err"] > 0.5
    # the weekly rhythm is still there: the day-of-week profile stays close
    assert f["long"]["profiles"]["day_of_week"]["err"] < 0.4
    rows = {r["figure"]: r["status"] for r in flat.summary["verdict"]}
    assert rows["shape: disc_gbm with each series standardised"] == "warn"


def test_drift_of_level_and_spread_is_visible(real):
    train, _ = real
    real_x, syn_x = train.values.astype(float), hourly(N, 4, "s", drift=2.0, spread_drift=4.0).values.astype(float)
    st = stability(real_x, syn_x, stability_window(real_x.shape[1], calendar("h")))
    assert st["window"] == 168
    assert abs(st["real"]["level_drift_mean"]) < 0.1 and abs(st["real"]["std_drift_mean"]) < 0.1
    # the level rises by 2 x 1/2 units between the first and the last week; the real data's std is about 0.9
    assert st["synthetic"]["level_drift_mean"] > 0.8 and st["level_drift_err"] > 0.8
    assert st["synthetic"]["std_drift_mean"] > 0.3 and st["std_drift_err"] > 0.3
    start = train.start.astype("datetime64[ns]").astype(np.int64)
    weeks = [totals(x, start, calendar("h"), 168, WEEK_NS, MONDAY_PHASE_NS) for x in (real_x, syn_x)]
    assert weeks[0].shape == (N * 2, 1) and weeks[0][0, 0] == pytest.approx(real_x[0, :168, 0].sum())
    assert weeks[1][:, 0].mean() - weeks[0][:, 0].mean() > 0.5 * 168


def test_interior_gaps_are_read_as_missing(real):
    train, holdout = real
    rng = np.random.RandomState(5)

    def with_gaps(s, share, prefix):
        v = s.values.copy()
        v[rng.rand(*v.shape) < share] = np.nan
        v[0, 30:80] = np.nan                                 # a two-day outage
        return SeriesSet(v, s.lengths, [f"{prefix}{i}" for i in range(len(s))], s.channels, s.start, s.freq)

    syn = with_gaps(hourly(N, 2, "s"), 0.05, "s")
    ev = evaluate(with_gaps(train, 0.05, "t"), syn, fast=True)
    f = ev.fidelity
    assert f["excluded_nonfinite"] == 0 and ev.summary["n_synthetic_used"] == N
    assert f["gap_share"]["real"] == pytest.approx(0.05 + 50 / (N * 24 * DAYS), abs=0.01)
    assert f["gap_share"]["synthetic"] > 0.04 and f["gap_share"]["err"] < 0.01
    assert f["long"]["acf"]["err"]["24"] < 0.03
    assert f["long"]["totals"]["day"]["n_real"] == N * DAYS - 1          # the outage leaves one day without a reading
    assert np.isfinite([f["disc_gbm"], f["mean_err"], f["shape"]["disc_gbm"], f["long"]["stability"]["level_drift_err"]]).all()
    assert "share of missing values (gaps)" in [r["figure"] for r in ev.summary["verdict"]]

    # synthetic series with NaN are left out when the real data has no gaps (a gap-free generator makes none)
    v = hourly(N, 2, "s").values.copy()
    v[:3, 10] = np.nan
    assert prepare(train, SeriesSet(v, syn.lengths, syn.item_id, syn.channels, syn.start, syn.freq)).excluded_nonfinite == 3
    with pytest.raises(DataError, match=f"every one of the {N} synthetic series holds NaN"):
        evaluate(with_gaps(train, 0.05, "t"), SeriesSet(np.full_like(v, np.nan), syn.lengths, syn.item_id, syn.channels))
    empty = train.values.copy()
    empty[2] = np.nan
    with pytest.raises(DataError, match="train series 't2' has no value in channel 'load'"):
        evaluate(SeriesSet(empty, train.lengths, train.item_id, train.channels), syn)
    empty[2] = np.inf
    with pytest.raises(DataError, match="train series 't2' holds inf"):
        evaluate(SeriesSet(empty, train.lengths, train.item_id, train.channels), syn)


def test_acf_with_gaps_equals_the_plain_acf_without_gaps_and_stays_close_with_them(real):
    x = real[0].values[:10].astype(np.float64)
    lags = [1, 24, 168]
    assert np.allclose(acf_with_gaps(x, lags), acf(x, lags))
    holed = x.copy()
    holed[np.random.RandomState(0).rand(*x.shape) < 0.1] = np.nan
    assert np.abs(acf_with_gaps(holed, lags) - acf(x, lags)).max() < 0.05


def test_report_shows_the_day_by_hour_heat_map_and_profiles(real, flat, flat_set, tmp_path):
    render_report(flat, real[0], flat_set, None, tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    titles = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,iVBORw0KGgo', page)
    assert "Day x hour heat maps" in titles and "Calendar profiles" in titles and len(titles) == 9
    assert "disc_gbm on sub-windows of 168 steps" in page and "level drift error" in page and "<h2>Series shape" in page


def test_frequency_decides_the_periods():
    daily = SeriesSet(np.random.RandomState(0).randn(30, 70, 1) + np.tile(np.arange(7) % 7 == 6, 10)[None, :, None],
                      np.full(30, 70), [f"d{i}" for i in range(30)], ["v"], start=[MONDAY] * 30, freq="D")
    syn = SeriesSet(daily.values[::-1] + 0.1, daily.lengths, [f"s{i}" for i in range(30)], ["v"])  # no time stamps
    ev = evaluate(daily, syn, fast=True)
    long = ev.fidelity["long"]
    assert long["acf"]["lags"] == {"step": 1, "week": 7} and ev.fidelity["shape"]["cycle_lag"] == 7
    assert set(long["profiles"]) == {"day_of_week"} and long["assumed_start"] == "2024-01-01 00:00:00"
    assert list(long["totals"]) == ["week"] and long["subwindow"]["steps"] == 7
    assert calendar("15min").per_day == 96 and calendar("15min").per_week == 672 and calendar("MS").cycle is None

    bare = SeriesSet(daily.values, daily.lengths, daily.item_id, ["v"])                     # no time axis at all
    ev = evaluate(bare, syn, fast=True)
    assert "long" not in ev.fidelity and "no frequency" in ev.not_computed["fidelity.long"]
    assert ev.fidelity["shape"]["cycle_lag"] == 24 and ev.summary["headline"]["subwindow_disc_gbm"] is None
    ev = evaluate(bare, syn, freq="D", fast=True)                                          # a frequency, no start
    assert ev.fidelity["long"]["totals"]["week"]["aligned"] == "series start"
    assert "no start time stamps" in ev.not_computed["fidelity.long.profiles"]
    with pytest.raises(DataError, match="frequency 'D' differs from the given frequency 'h'"):
        evaluate(daily, syn, freq="h", fast=True)
    with pytest.raises(ConfigError, match="subwindow 70 is outside 2..69"):
        evaluate(daily, syn, subwindow=70, fast=True)


def test_very_long_series_are_summarised_for_the_discriminative_score():
    assert summary_block(336, 1, 24) is None
    assert summary_block(8760, 1, 24) == 24 and summary_block(2000, 1, 24) == 4
    x = np.arange(2 * 10 * 3, dtype=float).reshape(2, 10, 3)
    b = block_summary(x, 4)
    assert b.shape == (2, 6, 3) and b[0, 0, 0] == x[0, :4, 0].mean() and b[0, 2, 0] == x[0, 8:, 0].mean()
    ev = evaluate(hourly(10, 0, "t", days=43), hourly(10, 1, "s", days=43), fast=True)
    assert "blocks of 3 steps" in ev.fidelity["discriminative"]["features"]
    assert ev.fidelity["discriminative"]["features"] == ev.fidelity["shape"]["discriminative"]["features"]
    assert ev.fidelity["step_corr_steps"] == 512


def test_windows_of_one_series_share_a_fold():
    rng = np.random.RandomState(0)

    def windows(n, k=10):      # series told apart by their level alone; ten windows of each
        return (5 * rng.randn(n)[:, None, None] + 0.1 * rng.randn(n, k, 4)).reshape(n * k, 4), np.repeat(np.arange(n), k)

    (a, ga), (b, gb) = windows(40), windows(40)
    assert discriminative_score(a, b)["disc"] > 0.3               # a classifier recognises series it saw
    assert discriminative_score(a, b, series=(ga, gb))["disc"] < 0.15


def test_cli_evaluate_runs_the_long_series_figures(tmp_path):
    paths = {}
    for name, seed in (("train", 0), ("syn", 2), ("hold", 1)):
        s = hourly(20, seed, name[0], days=4)
        s.freq = None                             # the file carries start times only: --freq gives the step
        paths[name] = tmp_path / f"{name}.parquet"
        s.write(paths[name])
    args = ["evaluate", "--train", str(paths["train"]), "--synthetic", str(paths["syn"]), "--freq", "h", "-o"]
    assert main([*args, str(tmp_path / "out"), "--subwindow", "48"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["fidelity"]["long"]["subwindow"]["steps"] == 48 and metrics["fidelity"]["long"]["freq"] == "h"
    assert main([*args, str(tmp_path / "bad"), "--subwindow", "96"]) == 2
    assert not (tmp_path / "bad").exists()
