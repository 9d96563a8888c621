"""The benchmark harness in smoke mode on tiny stand-in files (the real ../shared/data is never read)."""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import run
from benchmarks.tasks import TASKS
from benchmarks.timegan_metrics import discriminative_score_gru, timegan_scores

ENERGY = (["Appliances", "lights"] + [f"{k}_{i}" if k == "RH" else f"T{i}" for i in range(1, 10) for k in ("T", "RH")]
          + ["T_out", "Press_mm_hg", "RH_out", "Windspeed", "Visibility", "Tdewpoint", "rv1", "rv2"])


@pytest.fixture
def stand_in_data(tmp_path, monkeypatch):
    """Files with the schemas of ../shared/data/README.md, far smaller, in ``tmp_path``; TSYNTH_DATA points there."""
    rng = np.random.default_rng(0)
    for kind in ("std", "raw"):
        records = pd.DataFrame({"item_id": [f"MT_{i:03d}" for i in range(1, 21)],
                                "start": pd.Timestamp("2014-03-24 01:00").as_unit("us"),
                                "target": [rng.gamma(2.0, 1.0, 336).astype(np.float32) for _ in range(20)]})
        table = pa.Table.from_pandas(records, preserve_index=False).replace_schema_metadata({"freq": "h"})
        pq.write_table(table, tmp_path / f"electricity_hourly_{kind}.parquet")
    stocks = pd.DataFrame(rng.uniform(50, 60, (150, 5)).cumsum(0), columns=["Open", "High", "Low", "Close", "Adj_Close"])
    stocks["Volume"] = rng.integers(10**6, 10**7, 150)
    stocks.to_parquet(tmp_path / "stock_data.parquet")
    energy = pd.DataFrame(rng.normal(size=(125, len(ENERGY))), columns=ENERGY)   # 125: the blocked holdout gets 2 windows
    energy[["Appliances", "lights"]] = rng.integers(0, 70, (125, 2))
    energy.to_parquet(tmp_path / "energy_data.parquet")
    ett = pd.DataFrame(rng.normal(size=(1050, 7)), columns=["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"])
    ett.insert(0, "date", pd.date_range("2016-07-01", periods=len(ett), freq="h"))
    ett.to_parquet(tmp_path / "ETTh1.parquet")
    monkeypatch.setenv("TSYNTH_DATA", str(tmp_path))
    return tmp_path


@pytest.mark.slow
def test_smoke_every_task(stand_in_data):
    """tsynth runs on every task but the blocked variants (windows of the same files split in time instead of
    shuffled: the holdout row builds and scores that split), the Gaussian on one univariate and one multivariate
    task."""
    out = stand_in_data / "results"
    blocked = [t for t in TASKS if t.endswith("-blocked")]
    assert blocked and run.main([*[t for t in TASKS if t not in blocked], "--smoke", "--out", str(out),
                                 "--generators", "tsynth"]) == 0
    assert run.main([*blocked, "--smoke", "--out", str(out), "--generators", "holdout"]) == 0
    assert run.main(["electricity100", "stocks24", "--smoke", "--out", str(out), "--generators", "holdout,gaussian"]) == 0
    head = subprocess.run(["git", "-C", str(Path(run.__file__).parents[1]), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    for task in TASKS:
        rows = json.loads((out / f"{task}-smoke.json").read_text())["rows"]
        expected = ({"holdout"} if task in blocked else {"holdout", "gaussian", "tsynth"}
                    if task in ("electricity100", "stocks24") else {"tsynth"})
        assert {r["generator"] for r in rows} == expected
        for r in rows:
            assert math.isfinite(r["disc_gbm"]) and r["fit_s"] >= 0 and r["peak_mb"] > 0
            if head.returncode == 0:  # a git checkout: each row names the source it ran
                assert r["commit"].removesuffix("+changes") == head.stdout.strip()
            if task.startswith(("stocks", "energy")):   # multivariate: the TimeGAN GRU scores too
                assert math.isfinite(r["disc_gru"]) and 0 <= r["disc_gru"] <= 0.5
                assert math.isfinite(r["pred"]) and math.isfinite(r["pred_real"])


@pytest.mark.slow
def test_peers_recorded_and_rendered(stand_in_data):
    """A peer runs or is recorded as unavailable with the install command; BENCHMARKS.md shows either,
    beside the published figures."""
    out = stand_in_data / "results"
    assert run.main(["stocks24", "--smoke", "--out", str(out), "--generators", "dgan,par"]) == 0
    doc = json.loads((out / "stocks24-smoke.json").read_text())
    for r in doc["rows"]:
        if r.get("status") == "unavailable":
            assert "requirements-peers.txt" in r["reason"]
        else:
            assert math.isfinite(r["disc_gru"])
    (out / "stocks24.json").write_text(json.dumps(doc))   # render_markdown reads full-mode files only
    md = run.render_markdown(out)
    assert "## stocks24" in md and "disc_gru" in md and "not measured" in md
    for r in doc["rows"]:
        assert f"| {r['generator']} |" in md
        assert r.get("status") != "unavailable" or r["reason"] in md


def test_render_elsewhere_leaves_the_repository_table_alone(tmp_path):
    repo_table = Path(run.__file__).parent.parent / "BENCHMARKS.md"
    before = repo_table.read_text()
    doc = json.loads((Path(run.__file__).parent / "results" / "italy24.json").read_text())
    (tmp_path / "italy24.json").write_text(json.dumps(doc))
    assert run.main(["--render", "--out", str(tmp_path)]) == 0
    assert "## italy24" in (tmp_path / "BENCHMARKS.md").read_text()
    assert repo_table.read_text() == before


def test_timegan_scores_tell_apart_and_match():
    rng = np.random.default_rng(0)
    real = rng.uniform(size=(200, 24, 4))
    same = timegan_scores(real[:100], real[100:180], real[180:], iterations=30, repeats=2)
    assert 0 <= same["disc_gru"] <= 0.5 and len(same["disc_gru_runs"]) == 2
    assert same["pred"] > 0 and same["pred_real"] > 0
    shifted = discriminative_score_gru(real, real * 0.2, iterations=400, repeats=1)
    assert shifted["disc_gru"] > 0.3


def test_summary_tables_come_from_the_results(tmp_path):
    """BENCHMARKS.md opens with one summary table per task, mean (min-max) over the seeds of the JSON rows."""
    from benchmarks.summary import readme_table, summary_section

    doc = {"task": "italy24", "machine": {}, "rows": [
        {"generator": "tsynth", "seed": s, "disc_gbm": v, "mean_err": 0.01, "fit_s": 10.0} for s, v in
        enumerate((0.1, 0.2, 0.3))] + [{"generator": "par", "status": "unavailable", "reason": "not installed"}]}
    (tmp_path / "italy24.json").write_text(json.dumps(doc))
    other = {"task": "italy24", "machine": {}, "rows": [{"generator": "tsynth-pretrained", "seed": 0, "disc_gbm": 0.5}]}
    (tmp_path / "pretrained_italy24.json").write_text(json.dumps(other))   # about the task, not its rows
    lines = summary_section(tmp_path)
    assert "### italy24" in lines
    row = next(line for line in lines if line.startswith("| tsynth |"))
    assert "| 3 | 0.200 (0.100-0.300) | 0.010 (0.010-0.010) |" in row and "par" not in "\n".join(lines)
    assert "tsynth-pretrained" not in "\n".join(lines)
    assert "| tsynth | 0.200 | - |" in readme_table(tmp_path)


def test_suite_sets_are_built_and_tabled(stand_in_data):
    """Every set of the generalisation suite builds from the files (fertility from statsmodels), splits by item
    with nothing on both sides, keeps its time stamps, and the suite table reads the rows of its sets."""
    from benchmarks.summary import SUITE_ORDER, suite_section, suite_table
    from benchmarks.tasks import SUITE, load_task

    assert list(SUITE) == SUITE_ORDER
    for name in SUITE:
        task = load_task(name)
        assert len(task.train) > len(task.holdout) > 0 and name == task.name
        assert not set(task.train.item_id) & set(task.holdout.item_id)
        assert np.isfinite(task.train.values).all() and np.isfinite(task.holdout.values).all()
    h100 = load_task("suite-elec-h100")
    assert h100.train.length == 100 and h100.train.start[0] == np.datetime64("2014-03-28T05:00")
    ett = load_task("suite-etth1")   # 1,050 stand-in hours: 10 windows a column, each z-scored
    assert len(ett.train) + len(ett.holdout) == 30 and ett.train.freq == "h"
    assert np.allclose(ett.train.values.mean(axis=1), 0, atol=1e-5)
    fert = load_task("suite-fertility")
    assert fert.train.length == 52 and fert.train.freq == "YS" and 1 < np.nanmean(fert.train.values) < 8

    out = stand_in_data / "results"
    out.mkdir()
    rows = [{"generator": g, "seed": s, "disc_gbm": d + 0.01 * s, "shape_disc": d, "acf_err_cycle": c}
            for g, d, c in (("holdout", 0.05, 0.02), ("gaussian", 0.3, 0.02), ("tsynth", 0.1, 0.05))
            for s in ((0,) if g == "holdout" else (0, 1, 2))]
    (out / "suite-etth1.json").write_text(json.dumps({"task": "suite-etth1", "machine": {}, "rows": rows}))
    table = suite_table(out)
    assert len(table) == 3 and table[2].startswith("| suite-etth1 | 3 | 0.050 | 0.310 | 0.110 | 0.050 | 0.300 |")
    assert table[2].endswith("| yes | no |")   # below the Gaussian on both; cycle error 0.05 > 2 x 0.02
    assert "## Generalisation suite" in suite_section(out) and suite_section(stand_in_data) == []
    with pytest.raises(SystemExit):
        run.main(["--suite", "italy24", "--out", str(out)])
