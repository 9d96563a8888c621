"""Beyond one machine (issue 34, docs/scale-out.md): streaming fit and sampling on Ray, measured on this machine.

Two parts, each writing its own results file; the data are meter-like hourly series from a seeded process
(:func:`benchmarks.bench_long.meter_data`, 1 % missing readings) written into a private temporary folder that
is removed afterwards:

* ``stream`` (``results/scale_stream.json``): N series x 168 hours (default 100,000) written as a partitioned
  Parquet data set (partitions of 1,000 series), then ``tsynth fit FOLDER`` (streamed) and ``tsynth fit
  FILE`` (the same series in one file, read into memory), both ``--ensemble 1 --epochs 1 --context 168``, each
  in its own process tree whose peak summed resident memory is polled every 0.2 s. Seconds per epoch are the
  member's training seconds from ``tsynth.json`` (validation included); the streamed fit's scan (lengths, ids,
  the uniform sample) is the rest of its wall time.
* ``parallel`` (``results/scale_parallel.json``): electricity100 (``benchmarks.tasks``) fitted by ``tsynth fit
  --ensemble 1`` in 1 process and with ``--processes 2`` (gloo), the same seed and global batch: best
  validation loss of each, then as many series sampled from each model as the holdout has, scored by
  :func:`tsynth.evaluate.evaluate` against the task's train and holdout (disc_gbm and the other headline figures).
* ``ray`` (``results/scale_sample.json``): a tiny model fitted on 2,000 series x 100 hours, then series of
  100 steps sampled with ``engine="ray"`` on a fresh local Ray cluster of 1 worker (``--single-worker-series``,
  default N) and then of 2 workers (N, default 1,000,000), side by side in one run: throughput (series per
  second of sampling, the workers' model loading included, the cluster's start-up not), peak resident memory
  per worker, the load average after each run, and a check that the output is complete (every id once) and
  readable with pyarrow.

The machine is shared (2 cores, other work running), so times carry that noise; run the parts one at a time.

``python -m benchmarks.bench_scale [--parts stream,ray,parallel] [--stream-series 100000] [--sample-series 1000000]
[--single-worker-series N]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_long import RESULTS, meter_data, run_measured, tsynth

PARTITION = 1000  # series per partition of the streamed data set


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)


def bench_stream(n: int, work: Path, env: dict) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "meters"
    folder.mkdir()
    t0 = time.time()
    for k in range(-(-n // PARTITION)):
        size = min(PARTITION, n - k * PARTITION)
        df = meter_data(size, 168, seed=k)
        df["item_id"] = [f"M{k * PARTITION + i:07d}" for i in range(size)]
        df.to_parquet(folder / f"part-{k:05d}.parquet")
    whole = work / "meters.parquet"
    pq.write_table(pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("*.parquet"))]), whole)
    report = {"series": n, "steps": 168, "partitions": -(-n // PARTITION), "data_seconds": time.time() - t0, "runs": {}}
    common = ["--ensemble", "1", "--epochs", "1", "--context", "168"]
    for name, source in (("streamed", folder), ("in_memory", whole)):
        run = run_measured(tsynth("fit", str(source), "-o", str(work / name), *common), env, work)
        if run["exit"] == 0:
            doc = json.loads((work / name / "tsynth.json").read_text())
            member = doc["training"]["members"][0]
            run.update(epoch_s=member["seconds"], steps=member["steps"], train_series=doc["training"]["train_series"],
                       valid_series=doc["training"]["valid_series"], valid_loss=member["valid_loss"],
                       data=doc["training"].get("data"))
            run["s_per_train_series"] = member["seconds"] / max(1, doc["training"]["train_series"])
        report["runs"][name] = run
        print(name, {k: run.get(k) for k in ("seconds", "epoch_s", "steps", "peak_mb", "exit")}, flush=True)
    s, m = report["runs"]["streamed"], report["runs"]["in_memory"]
    if "epoch_s" in s and "epoch_s" in m:
        report["epoch_ratio"] = s["epoch_s"] / m["epoch_s"]
        report["per_series_ratio"] = s["s_per_train_series"] / m["s_per_train_series"]
    return report


def bench_ray(n: int, work: Path, n_single: int | None = None) -> dict:
    import pyarrow.dataset as ds

    from tsynth import SeriesSet, Synthesizer

    train = SeriesSet.from_records(meter_data(2000, 100, seed=7), freq="h")
    t0 = time.time()
    Synthesizer(ensemble=1, epochs=1, seed=0).fit(train, progress=False).save(work / "model")
    report = {"series": n, "steps": 100, "model_fit_seconds": time.time() - t0, "runs": {}}
    syn = Synthesizer.load(work / "model")
    for workers, size in ((1, n_single or n), (2, n)):
        out = work / f"sample_{workers}"
        figures = syn.sample(size, seed=0, output=out, engine="ray", workers=workers, batch_size=2000)
        table = ds.dataset(out, format="parquet").to_table(columns=["item_id"])
        ids = table.column("item_id").to_pylist()
        figures.update(rows_read=len(ids), unique_ids=len(set(ids)), series_per_s=size / figures["seconds"],
                       series_per_cpu_s=size / figures["cpu_seconds"], load_average_after=os.getloadavg())
        report["runs"][f"{workers}_worker{'s' if workers > 1 else ''}"] = figures
        print(workers, {k: figures[k] for k in ("seconds", "series_per_s", "peak_mb_per_worker", "rows_read")},
              flush=True)
        shutil.rmtree(out)
    a, b = report["runs"]["1_worker"], report["runs"]["2_workers"]
    report["speedup"] = b["series_per_s"] / a["series_per_s"]
    return report


def bench_parallel(work: Path, env: dict, seed: int = 0) -> dict:
    from benchmarks.tasks import TASKS
    from tsynth import Synthesizer
    from tsynth.evaluate import evaluate

    task = TASKS["electricity100"]()
    task.train.write(work / "train.parquet")
    report: dict = {"task": "electricity100", "seed": seed, "train_series": len(task.train), "runs": {}}
    for name, extra in (("1_process", []), ("2_processes", ["--processes", "2"])):
        run = run_measured(tsynth("fit", str(work / "train.parquet"), "-o", str(work / name), "--ensemble", "1",
                                  "--seed", str(seed), *extra), env, work)
        if run["exit"] == 0:
            member = json.loads((work / name / "tsynth.json").read_text())["training"]["members"][0]
            synthetic = Synthesizer.load(work / name).sample(len(task.holdout), seed=seed)
            ev = evaluate(task.train, synthetic, task.holdout, seed=0).to_dict()
            run.update(best_valid_loss=min(member["valid_loss"]), epochs=member["epochs_run"],
                       best_epoch=member["best_epoch"], headline=ev["summary"]["headline"])
        report["runs"][name] = run
        print(name, {k: run.get(k) for k in ("seconds", "best_valid_loss", "epochs", "exit")}, flush=True)
    a, b = report["runs"]["1_process"], report["runs"]["2_processes"]
    if "best_valid_loss" in a and "best_valid_loss" in b:
        report["valid_loss_rel_diff"] = abs(b["best_valid_loss"] - a["best_valid_loss"]) / a["best_valid_loss"]
    return report


def scale_section(out_dir: Path = RESULTS) -> list[str]:
    """BENCHMARKS.md's section on these measurements (empty when none was run)."""
    lines = ["## Beyond one machine", ""]
    stream, ray, par = (out_dir / f"scale_{k}.json" for k in ("stream", "sample", "parallel"))
    if stream.exists():
        d = json.loads(stream.read_text())
        lines += [f"`{d['command']}` ({d['date']}, {d['cores']} cores, {d['machine']}): {d['series']:,} seeded "
                  f"meter-like series x {d['steps']} hours, {d['partitions']} Parquet partitions; `--ensemble 1 "
                  "--epochs 1 --context 168`; peak memory of each command's process tree.", "",
                  "| fit | wall s | epoch s | steps | train series | s per 1,000 train series | peak MB |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in d["runs"].items():
            per = r.get("s_per_train_series")
            lines.append(f"| {name.replace('_', ' ')} | {r['seconds']:.0f} | {r.get('epoch_s', float('nan')):.0f} | "
                         f"{r.get('steps', '-')} | {r.get('train_series', '-')} | "
                         f"{'-' if per is None else f'{1000 * per:.2f}'} | {r['peak_mb']:.0f} |")
        if "epoch_ratio" in d:
            lines += ["", f"Streamed / in memory: epoch time x{d['epoch_ratio']:.2f}, time per training series "
                          f"x{d['per_series_ratio']:.2f} (the in-memory fit validates on 10 % of the series, the "
                          "streamed one on at most 512 of its sample)."]
        lines.append("")
    if ray.exists():
        d = json.loads(ray.read_text())
        lines += [f"`{d['command']}` ({d['date']}, {d['cores']} cores, {d['machine']}): series of {d['steps']} steps "
                  "sampled on a fresh local Ray cluster of 1, then 2 workers.", "",
                  "| workers | series | seconds | series / s | series / CPU s | peak MB per worker | rows read | "
                  "unique ids | load average after |", "|---|---|---|---|---|---|---|---|---|"]
        for name, r in d["runs"].items():
            per_cpu, load = r.get("series_per_cpu_s"), r.get("load_average_after")
            lines.append(f"| {r['workers']} | {r['series']:,} | {r['seconds']:.0f} | {r['series_per_s']:.0f} | "
                         f"{'-' if per_cpu is None else f'{per_cpu:.0f}'} | "
                         f"{', '.join(f'{m:.0f}' for m in r['peak_mb_per_worker'])} | {r['rows_read']:,} | "
                         f"{r['unique_ids']:,} | {'-' if load is None else f'{load[0]:.1f}'} |")
        lines += ["", f"Throughput of 2 workers / 1 worker: x{d['speedup']:.2f}.", ""]
    if par.exists():
        d = json.loads(par.read_text())
        lines += [f"`{d['command']}` ({d['date']}, {d['cores']} cores, {d['machine']}): {d['task']}, one model "
                  f"(`--ensemble 1 --seed {d['seed']}`), the same global batch.", "",
                  "| training | wall s | epochs (best) | best valid loss | disc_gbm | dcr_ratio | mia_auc |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in d["runs"].items():
            h = r.get("headline", {})
            lines.append(f"| {name.replace('_', ' ')} | {r['seconds']:.0f} | {r.get('epochs', '-')} "
                         f"({r.get('best_epoch', '-')}) | {r.get('best_valid_loss', float('nan')):.4f} | "
                         f"{h.get('disc_gbm', float('nan')):.3f} | {h.get('dcr_ratio') or float('nan'):.3f} | "
                         f"{h.get('mia_auc') or float('nan'):.3f} |")
        if "valid_loss_rel_diff" in d:
            lines += ["", f"Validation loss, 2 processes against 1: {100 * d['valid_loss_rel_diff']:.2f} % apart."]
        lines.append("")
    return lines if len(lines) > 2 else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="stream,ray", help="comma-separated: stream, ray")
    ap.add_argument("--stream-series", type=int, default=100_000)
    ap.add_argument("--sample-series", type=int, default=1_000_000)
    ap.add_argument("--single-worker-series", type=int, default=None,
                    help="series of the 1-worker run (default: --sample-series); throughput is per second")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    parts = set(args.parts.split(","))
    head = {"date": time.strftime("%Y-%m-%d %H:%M"), "cores": len(os.sched_getaffinity(0)),
            "machine": "may be shared with other work: the load average after a run says how busy it was",
            "command": "python -m benchmarks.bench_scale " + " ".join(argv if argv is not None else sys.argv[1:])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    for part in ("stream", "ray", "parallel"):
        if part not in parts:
            continue
        work = Path(tempfile.mkdtemp(prefix="tsynth-bench-scale-"))
        os.chmod(work, 0o700)
        try:
            if part == "stream":
                write_json(RESULTS / "scale_stream.json", {**head, **bench_stream(args.stream_series, work, env)})
            elif part == "ray":
                write_json(RESULTS / "scale_sample.json", {**head, **bench_ray(args.sample_series, work, args.single_worker_series)})
            else:
                write_json(RESULTS / "scale_parallel.json", {**head, **bench_parallel(work, env)})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
