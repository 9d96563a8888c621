"""Long series at scale: memory and time of the step model on seeded meter-like data, through the CLI.

Three measurements, each a ``tsynth`` command in its own process tree, whose memory is the peak of the summed
resident memory of the tree (the CLI and its training children), polled every 0.2 s:

* ``scale``: ``tsynth fit`` on N series x 8,760 hourly steps (a year; default N 1,000) with the default settings
  and a time limit, then ``tsynth sample -n 100 --length 8760`` from that model;
* ``linear``: seconds per epoch of one model (``--ensemble 1 --epochs 1``) on 100 series of 1x, 4x and 16x
  a base length: a step model's epoch holds as many windows as the series hold contexts, so it grows linearly;
* the data: a daily and weekly load shape times a per-series level (log-normal), noise, and 1 % missing readings,
  written as a Parquet records file into a private temporary folder that is removed afterwards.

``python -m benchmarks.bench_long [--series 1000] [--time-limit 900] [--out benchmarks/results/long_scale.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def meter_data(n: int, length: int, seed: int = 0, gaps: float = 0.01) -> pd.DataFrame:
    """Records (item_id, start, target) of hourly meter-like series starting 2015-01-01."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    day = np.sin(2 * np.pi * (t % 24) / 24 - 1.5) + 0.5 * np.sin(4 * np.pi * (t % 24) / 24)
    week = np.where((t // 24) % 7 >= 5, 0.7, 1.0)
    season = 1 + 0.3 * np.cos(2 * np.pi * t / (24 * 365))
    rows = []
    for i in range(n):
        level = rng.lognormal(3.0, 1.0)
        x = level * season * week * (2 + day + 0.3 * rng.standard_normal(length))
        x[rng.random(length) < gaps] = np.nan
        rows.append({"item_id": f"M{i:05d}", "start": pd.Timestamp("2015-01-01"), "target": x.astype(np.float32)})
    return pd.DataFrame(rows)


def run_measured(cmd: list[str], env: dict, work: Path) -> dict:
    """Run ``cmd``; its wall time, exit code and the peak summed RSS of its process tree (MB). The command is
    recorded with paths relative to ``work``."""
    import psutil

    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0.0]
    done = threading.Event()

    def poll() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    done.set()
    thread.join()
    return {"cmd": " ".join(cmd[3:]).replace(f"{work}/", ""), "seconds": time.time() - t0, "exit": proc.returncode, "peak_mb": peak[0],
            "tail": out[-1500:].replace(f"{work}/", "")}


def tsynth(*args: str) -> list[str]:
    return [sys.executable, "-m", "tsynth.cli", *args]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=1000, help="series of 8,760 steps for the scale run (default 1000)")
    ap.add_argument("--time-limit", type=float, default=900.0, help="the scale fit's --time-limit in seconds")
    ap.add_argument("--linear-base", type=int, default=548, help="base length of the linear-time runs (x1, x4, x16)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: scale, linear")
    ap.add_argument("--out", default=str(RESULTS / "long_scale.json"))
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work = Path(tempfile.mkdtemp(prefix="tsynth-bench-long-"))
    os.chmod(work, 0o700)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": len(os.sched_getaffinity(0)), "runs": {}}
    try:
        if "scale" not in skip:
            data = work / "meters.parquet"
            meter_data(args.series, 8760).to_parquet(data)
            fit = run_measured(tsynth("fit", str(data), "-o", str(work / "model"), "--time-limit",
                                      str(args.time_limit)), env, work)
            report["runs"]["fit"] = {**fit, "series": args.series, "steps": 8760}
            if fit["exit"] == 0:
                doc = json.loads((work / "model" / "tsynth.json").read_text())
                report["runs"]["fit"]["members"] = doc["members"]
                report["runs"]["fit"]["epochs"] = [m["epochs_run"] for m in doc["training"]["members"]]
                report["runs"]["fit"]["steps_trained"] = [m["steps"] for m in doc["training"]["members"]]
                sample = run_measured(tsynth("sample", str(work / "model"), "-n", "100", "--length", "8760",
                                             "-o", str(work / "year.parquet")), env, work)
                report["runs"]["sample"] = {**sample, "series": 100, "steps": 8760}
                if sample["exit"] == 0:
                    out = pd.read_parquet(work / "year.parquet")
                    report["runs"]["sample"]["rows_written"] = len(out)
        if "linear" not in skip:
            rows = []
            for factor in (1, 4, 16):
                length = args.linear_base * factor
                data = work / f"linear_{factor}.parquet"
                meter_data(100, length, seed=1).to_parquet(data)
                run = run_measured(tsynth("fit", str(data), "-o", str(work / f"m{factor}"), "--ensemble", "1",
                                          "--epochs", "1", "--context", "96"), env, work)
                if run["exit"] == 0:
                    doc = json.loads((work / f"m{factor}" / "tsynth.json").read_text())
                    member = doc["training"]["members"][0]
                    run.update(epoch_s=member["seconds"], steps=member["steps"])
                rows.append({"length": length, "factor": factor, **run})
            report["runs"]["linear"] = rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out)
    for name, run in report["runs"].items():
        for r in run if isinstance(run, list) else [run]:
            print(name, {k: r.get(k) for k in ("length", "series", "seconds", "epoch_s", "peak_mb", "exit")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
