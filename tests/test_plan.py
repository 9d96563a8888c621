"""The fit's plan and honest progress: what `tsynth fit --dry-run` says, and expected-epoch estimates that follow
the work early stopping really does."""

import numpy as np
import pandas as pd

from tsynth import SeriesSet, Synthesizer
from tsynth.cli import main
from tsynth.train import TrainConfig, TrainResult, expected_epochs, initial_epochs


def daily_cycles(n: int = 40, days: int = 3, seed: int = 0) -> SeriesSet:
    rng = np.random.default_rng(seed)
    t = np.arange(24 * days)
    vals = np.sin(2 * np.pi * t / 24)[None, :, None] + rng.normal(size=(n, 1, 1)) + 0.3 * rng.normal(size=(n, len(t), 1))
    return SeriesSet(vals.astype(np.float32), np.full(n, len(t)), [f"m{i}" for i in range(n)], ["load"],
                     start=np.full(n, np.datetime64("2024-01-01T00:00")), freq="h")


def test_expected_epochs_follow_early_stopping_and_the_plan():
    cfg = TrainConfig(epochs=150, patience=20)
    assert initial_epochs(cfg, validated=True) == 50 and initial_epochs(cfg, validated=False) == 150
    r = TrainResult(epochs_planned=150, steps_planned=1500, epochs_run=10, best_epoch=10)
    assert expected_epochs(r, bad_epochs=0, patience=20, validated=True) == 50  # a typical run, at least
    r = TrainResult(epochs_planned=150, steps_planned=1500, epochs_run=40, best_epoch=30)
    assert expected_epochs(r, bad_epochs=10, patience=20, validated=True) == 65   # 1.5 x 30 + 20
    r = TrainResult(epochs_planned=30, steps_planned=300, epochs_run=10, best_epoch=10)   # a time limit's plan
    assert expected_epochs(r, bad_epochs=0, patience=20, validated=True) == 30
    assert expected_epochs(r, bad_epochs=0, patience=20, validated=False) == 30


def test_the_estimate_after_a_tenth_of_the_fit_is_within_2x_of_the_epochs_run():
    events, plans = [], []
    syn = Synthesizer(ensemble=1, seed=0).fit(daily_cycles(), callback=events.append, on_plan=plans.append,
                                              progress=False)
    plan, epochs = plans[0], events
    assert all(e["type"] == "epoch" for e in events)
    assert plan["type"] == "plan" and plan["models"] == 1 and plan["early_stopping"]
    run = syn.info["training"]["members"][0]["epochs_run"]
    assert run == len(epochs) < 150  # early stopping ended it
    tenth = epochs[max(0, run // 10 - 1)]["expected_epochs"]
    assert run / 2 <= tenth <= 2 * run, (tenth, run)
    assert epochs[-1]["expected_epochs"] == run


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    data = daily_cycles()
    rows = [(item, t, v) for i, item in enumerate(data.item_id)
            for t, v in zip(pd.date_range("2024-01-01", periods=data.length, freq="h"), data.values[i, :, 0])]
    path = tmp_path / "meters.csv"
    pd.DataFrame(rows, columns=["item_id", "timestamp", "load"]).to_csv(path, index=False)
    out = tmp_path / "model"
    assert main(["fit", str(path), "-o", str(out), "--dry-run", "--ensemble", "2"]) == 0
    text = capsys.readouterr().out   # hourly, one channel: fine-tuned from the load prior
    assert "plan: 2 token models" in text and "s per epoch, about" in text and "min" in text
    assert main(["fit", str(path), "-o", str(out), "--dry-run", "--ensemble", "2", "--prior", "none"]) == 0
    assert "plan: 2 step models" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meters.csv"]  # no model, no checkpoints


def test_step_model_batches_hold_about_the_same_number_of_steps_whatever_the_context():
    data = daily_cycles(n=24, days=14)   # 336 steps, seen whole
    plans = []
    Synthesizer(ensemble=1, epochs=1).fit(data, on_plan=plans.append, dry_run=True, progress=False)
    Synthesizer(ensemble=1, epochs=1, context=96).fit(data, on_plan=plans.append, dry_run=True, progress=False)
    Synthesizer(ensemble=1, epochs=1, batch_size=32).fit(data, on_plan=plans.append, dry_run=True, progress=False)
    assert [p["batch_size"] for p in plans] == [3072 // 336, 32, 32]
