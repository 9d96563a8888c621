"""How long a full evaluation takes: 10,000 synthetic vs 10,000 train vs 2,000 holdout series of length 100.

Target: at most 60 s on 2 CPU cores for ``evaluate``; rendering report.html is timed apart. The data are
generated here (daily-profile sinusoids with per-series level, amplitude and phase, AR(1) noise and a categorical 'season' attribute), the
synthetic set by the same process with another seed, so every figure, classification utility
included, is computed. Writes ``benchmarks/results/evaluate_speed.json``.

    python benchmarks/bench_evaluate.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn

from tsynth import SeriesSet
from tsynth.data import atomic_write
from tsynth.evaluate import evaluate, render_report

N_TRAIN, N_SYNTHETIC, N_HOLDOUT, LENGTH = 10_000, 10_000, 2_000, 100
TARGET_S = 60.0
OUT = Path(__file__).parent / "results" / "evaluate_speed.json"


def make(n: int, seed: int, prefix: str) -> SeriesSet:
    """``n`` hourly-looking series: level + amplitude * daily sinusoid + AR(1) noise; winter ones sit higher."""
    rng = np.random.RandomState(seed)
    winter = rng.rand(n) < 0.5
    level = np.where(winter, 1.0, 0.0) + 0.5 * rng.randn(n)
    amp = 0.5 + rng.rand(n)
    phase = 0.3 * rng.randn(n)
    t = np.arange(LENGTH)
    noise = np.zeros((n, LENGTH))
    eps = 0.3 * rng.randn(n, LENGTH)
    for i in range(1, LENGTH):
        noise[:, i] = 0.7 * noise[:, i - 1] + eps[:, i]
    x = level[:, None] + amp[:, None] * np.sin(2 * np.pi * t / 24 + phase[:, None]) + noise
    return SeriesSet(x[:, :, None], np.full(n, LENGTH), [f"{prefix}{i}" for i in range(n)], ["load"],
                     attributes=pd.DataFrame({"season": np.where(winter, "winter", "summer")}))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> dict:
    train, synthetic, holdout = make(N_TRAIN, 0, "train_"), make(N_SYNTHETIC, 1, "syn_"), make(N_HOLDOUT, 2, "hold_")
    started = time.perf_counter()
    ev = evaluate(train, synthetic, holdout, seed=0, fast=False)
    wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        page = render_report(ev, train, synthetic, holdout, Path(tmp) / "report.html")
        report_s, report_bytes = time.perf_counter() - started, page.stat().st_size
    result = {
        "benchmark": "evaluate, full mode (disc_gbm repeated 3 times)",
        "sizes": {"train": N_TRAIN, "synthetic": N_SYNTHETIC, "holdout": N_HOLDOUT, "length": LENGTH, "channels": 1},
        "seconds": {"wall": round(wall, 2), **ev.summary["seconds"], "report_html_extra": round(report_s, 2)},
        "report_html_bytes": report_bytes,
        "target_s": TARGET_S,
        "within_target": wall <= TARGET_S,
        "figures": {"disc_gbm": ev.fidelity["disc_gbm"], "disc_gbm_holdout": ev.holdout_reference["disc_gbm"],
                    "dcr_ratio": ev.privacy["dcr_ratio"], "mia_auc": ev.privacy["mia_auc"],
                    "tstr_mae": ev.utility["forecast"]["tstr_mae"], "trtr_mae": ev.utility["forecast"]["trtr_mae"]},
        "machine": {"cpus_visible": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "scikit-learn": sklearn.__version__,
                    "load_average_1min_at_end": os.getloadavg()[0]},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(OUT, lambda f: Path(f).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8"))
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
