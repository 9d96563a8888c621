"""The tsynth command line: help, the local fit -> sample -> evaluate flow, bad input, the demo, CI wiring."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsynth import SeriesSet
from tsynth.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", ["demo", "fit", "sample", "evaluate", "prepare", "pretrain", "serve"])
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"tsynth {command}" in out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "tsynth.cli", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "serve" in out.stdout


@pytest.fixture
def long_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        t = pd.date_range("2024-01-01", periods=30, freq="h")
        v = np.sin(np.arange(30) / 4 + i) + 0.1 * rng.normal(size=30)
        rows.append(pd.DataFrame({"meter": f"M{i:02d}", "ts": t, "kwh": v}))
    path = tmp_path / "meters.csv"
    pd.concat(rows).to_csv(path, index=False)
    return path


def test_fit_sample_evaluate_flow(long_csv, tmp_path, capsys):
    model = tmp_path / "model"
    common = ["--id-col", "meter", "--time-col", "ts", "--value-cols", "kwh"]
    assert main(["fit", str(long_csv), "-o", str(model), "--length", "24", "--epochs", "2", "--n-bins", "32", "--ensemble", "1",
                 "--smoothing", "0.5", "--point-mass-series", "5", "--keep-checkpoints", *common]) == 0
    assert (model / "tsynth.json").exists() and (model / "model" / "config.json").exists()
    doc = json.loads((model / "tsynth.json").read_text())
    assert doc["training"]["smoothing"] == 0.5 and doc["codec"]["point_mass_series"] == 5
    assert (tmp_path / "model.checkpoints" / "member_0" / "progress.json").exists()
    out = tmp_path / "syn.csv"
    assert main(["sample", str(model), "-n", "12", "-o", str(out), "--seed", "1"]) == 0
    syn = SeriesSet.read(out, id_col="item_id", time_col="timestamp")
    assert len(syn) == 12 and syn.length == 24
    data = SeriesSet.read(long_csv, id_col="meter", time_col="ts", value_cols=["kwh"]).window(0, 24)
    train, hold = data.split(0.3, seed=0)
    train.write(tmp_path / "train.parquet")
    hold.write(tmp_path / "hold.parquet")
    syn_pq = tmp_path / "syn.parquet"
    assert main(["sample", str(model), "-n", "20", "-o", str(syn_pq)]) == 0
    assert main(["evaluate", "--train", str(tmp_path / "train.parquet"), "--synthetic", str(syn_pq),
                 "--holdout", str(tmp_path / "hold.parquet"), "-o", str(tmp_path / "ev"), "--model", str(model)]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["fidelity"]["discriminative"]["auc"] is not None
    most = metrics["fidelity"]["tells"]["most_telling"]
    assert f"what tells them apart most: {most} (disc_gbm" in capsys.readouterr().out
    assert 0 <= metrics["extra"]["membership inference, model likelihood (AUC, 0.5 ideal)"] <= 1
    far = SeriesSet(hold.values + 1e4, hold.lengths, hold.item_id, hold.channels)  # beyond the training range
    far.write(tmp_path / "far.parquet")
    assert main(["evaluate", "--train", str(tmp_path / "train.parquet"), "--synthetic", str(syn_pq),
                 "--holdout", str(tmp_path / "far.parquet"), "-o", str(tmp_path / "ev_far"), "--model", str(model)]) == 0
    extra = json.loads((tmp_path / "ev_far" / "metrics.json").read_text())["extra"]
    assert extra["membership inference, model likelihood (AUC, 0.5 ideal)"].startswith("every non-member")
    assert extra["membership inference, model likelihood (AUC, 0.5 ideal), holdout series left out (beyond the "
                 "training range)"] == len(hold)
    guarded = tmp_path / "guarded.parquet"
    capsys.readouterr()
    assert main(["sample", str(model), "-n", "15", "-o", str(guarded), "--guard", str(tmp_path / "train.parquet"),
                 "--guard-holdout", str(tmp_path / "hold.parquet")]) == 0
    assert "memorization guard: dropped" in capsys.readouterr().out and len(SeriesSet.read(guarded)) == 15
    assert (tmp_path / "ev" / "report.html").stat().st_size > 1000


def test_pretrain_writes_a_prior_and_fit_starts_from_it(long_csv, tmp_path, capsys):
    corpus = tmp_path / "public.csv"
    rng = np.random.default_rng(3)
    pd.DataFrame(np.sin(np.arange(300)[:, None] / 4 + rng.uniform(0, 6, 6)) + 0.1 * rng.normal(size=(300, 6)),
                 columns=[f"s{i}" for i in range(6)]).to_csv(corpus, index=False)
    prior = tmp_path / "prior"
    assert main(["pretrain", "--corpus", str(corpus), "-o", str(prior), "--lengths", "24,48", "--epochs", "1",
                 "--max-windows", "60", "--quiet"]) == 0
    assert "public.csv" in capsys.readouterr().out and (prior / "corpus.json").exists()
    model = tmp_path / "model"
    assert main(["fit", str(long_csv), "-o", str(model), "--length", "24", "--epochs", "3", "--ensemble", "1",
                 "--id-col", "meter", "--time-col", "ts", "--prior", str(prior), "--time-limit", "0.001"]) == 0
    info = json.loads((model / "tsynth.json").read_text())
    assert info["prior"]["path"] == str(prior.resolve())
    assert info["training"]["members"][0]["epochs_run"] == 1 and info["training"]["members"][0]["time_limited"]
    dp_model = tmp_path / "dp"
    assert main(["fit", str(long_csv), "-o", str(dp_model), "--length", "24", "--id-col", "meter", "--time-col", "ts",
                 "--dp-epsilon", "8", "--value-range=-3,3"]) == 2   # the DP flags reach the backend: 30 meters
    assert "too few for a meaningful DP guarantee" in capsys.readouterr().err and not dp_model.exists()
    assert main(["fit", str(long_csv), "-o", str(dp_model), "--length", "24", "--id-col", "meter", "--time-col", "ts",
                 "--dp-epsilon", "8", "--dp-profile-share", "1.5"]) == 2
    assert "profile_share must lie in [0, 1)" in capsys.readouterr().err and not dp_model.exists()
    assert main(["pretrain", "--corpus", "no_such_source", "-o", str(tmp_path / "p2")]) == 2
    assert "no_such_source" in capsys.readouterr().err and not (tmp_path / "p2").exists()


def test_bad_input_exits_2_and_writes_nothing(long_csv, tmp_path, capsys):
    model = tmp_path / "model"
    code = main(["fit", str(long_csv), "-o", str(model), "--id-col", "metre", "--time-col", "ts"])
    assert code == 2
    err = capsys.readouterr().err
    assert "meters.csv" in err and "missing column 'metre'" in err and "did you mean 'meter'" in err
    assert not model.exists()
    code = main(["fit", str(long_csv), "-o", str(model), "--id-col", "meter", "--time-col", "ts", "--length", "99"])
    assert code == 2 and "shorter than the window" in capsys.readouterr().err
    assert not model.exists()
    assert main(["sample", str(tmp_path / "nope"), "-n", "3", "-o", str(tmp_path / "x.csv")]) == 2
    assert "not a tsynth model directory" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_demo_end_to_end_reduced_budget(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--epochs", "2", "--ensemble", "2", "--quick", "--quiet", "-n", "200"]) == 0
    text = capsys.readouterr().out
    assert "[5/5]" in text and "report.html" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fidelity"]["discriminative"]["auc"] is not None
    assert metrics["utility"]["classification"] is not None        # season label used
    assert (out / "model" / "tsynth.json").exists()
    assert len(SeriesSet.read(out / "synthetic.parquet")) == 200


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert readme[0].startswith("# tsynth")
    block = readme[readme.index("```bash") + 1: readme.index("```bash") + 5]
    assert block[0].startswith("# 1.") and "tsynth demo" in block[1]
    assert block[2].startswith("# 2. run the tests") and "pytest" in block[3]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"# 2\\\.", ci) or "# 2\\. run the tests" in ci
