"""Run generators on benchmark tasks, evaluate with tsynth's own evaluation, record time and memory.

    python -m benchmarks.run electricity100 italy24 --generators tsynth,gaussian,holdout,copy --seeds 0,1,2
    python -m benchmarks.run --smoke                      # every task, tiny budget (used by the tests)

Each (task, generator, seed) runs in a fresh process (so its peak memory is its own) on one torch thread.
Results go to ``benchmarks/results/<task>.json`` (merged with earlier runs, keyed by generator and seed)
and the table ``BENCHMARKS.md`` is rebuilt from every results file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HEADLINE = ["disc_gbm", "auc", "mean_err", "pct_err", "acf_err", "dcr_ratio", "share_closer_to_train",
            "exact_copies", "mia_auc", "tstr_mae", "trtr_mae"]


def headline(ev: dict) -> dict:
    """The benchmark's figures from an evaluation dict."""
    f, p, u = ev["fidelity"], ev["privacy"], ev["utility"]
    fc = u.get("forecast") or {}
    return {
        "disc_gbm": f.get("disc_gbm"), "auc": f.get("disc_gbm_auc"),
        "mean_err": f.get("mean_err"), "pct_err": f.get("pct_err"), "acf_err": f.get("acf_err"),
        "dcr_ratio": p.get("dcr_ratio"), "share_closer_to_train": p.get("share_closer_to_train"),
        "exact_copies": p.get("exact_copies"), "mia_auc": p.get("mia_auc"),
        "tstr_mae": fc.get("tstr_mae"), "trtr_mae": fc.get("trtr_mae"),
    }


def _one(task_name: str, generator: str, seed: int, smoke: bool, queue) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from tsynth.evaluate import evaluate

    from .generators import GENERATORS
    from .tasks import load_task

    task = load_task(task_name)
    synthetic, fit_s, sample_s, extra = GENERATORS[generator](task, seed, smoke)
    ev = evaluate(task.train, synthetic, task.holdout, label=task.label, seed=0, fast=smoke).to_dict()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"generator": generator, "seed": seed, "fit_s": fit_s, "sample_s": sample_s, "peak_mb": peak_mb,
               "n_synthetic": len(synthetic), **headline(ev), "extra": extra, "evaluation": ev})


def run_one(task_name: str, generator: str, seed: int, smoke: bool) -> dict:
    """Run and evaluate one generator in a fresh process; returns its result row."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(task_name, generator, seed, smoke, queue))
    proc.start()
    row = None
    while proc.is_alive() or not queue.empty():
        try:
            row = queue.get(timeout=1.0)
            break
        except Exception:  # queue.Empty: keep waiting while the process lives
            continue
    proc.join()
    if row is None:
        raise RuntimeError(f"{task_name}/{generator}/seed {seed} failed (exit code {proc.exitcode})")
    return row


def machine() -> dict:
    """Where the figures were measured."""
    import numpy
    import torch

    import tsynth

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "numpy": numpy.__version__, "tsynth": tsynth.__version__,
            "date": time.strftime("%Y-%m-%d")}


def save(task_name: str, rows: list[dict], smoke: bool, out_dir: Path = RESULTS) -> Path:
    """Merge rows into ``<task>.json`` (replacing the same generator+seed) atomically."""
    from tsynth.data import atomic_write

    path = out_dir / f"{task_name}{'-smoke' if smoke else ''}.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    keep = [r for r in old["rows"] if (r["generator"], r["seed"]) not in {(x["generator"], x["seed"]) for x in rows}]
    doc = {"task": task_name, "machine": machine(), "rows": keep + rows}
    return atomic_write(path, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))


def render_markdown(out_dir: Path = RESULTS) -> str:
    """BENCHMARKS.md from every full-mode results file."""
    lines = ["# Benchmarks", "", "Written by `python -m benchmarks.run` from `benchmarks/results/*.json`; every row is "
             "one training seed (none is picked). Metrics as `../shared/reference/baselines.md` defines them: "
             "disc_gbm = |AUC - 0.5| of a gradient-boosting classifier, real train vs synthetic (0 ideal); "
             "mean/pct err vs train (the holdout row is the floor); dcr_ratio = median distance to the closest "
             "train series over the holdout's (>= 0.95 wanted); mia_auc = distance-based membership inference "
             "(0.5 ideal). Fit/sample seconds on one torch thread.", ""]
    for path in sorted(out_dir.glob("*.json")):
        if path.stem.endswith("-smoke") or path.stem.startswith(("evaluate_", "server_")):
            continue
        doc = json.loads(path.read_text())
        if "rows" not in doc:
            continue
        m = doc["machine"]
        lines += [f"## {doc['task']}", "", f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
                  f"tsynth {m['tsynth']}, {m['date']}", "",
                  "| generator | seed | " + " | ".join(HEADLINE) + " | fit s | sample s | peak MB |",
                  "|---" * (len(HEADLINE) + 5) + "|"]
        for r in sorted(doc["rows"], key=lambda r: (r["generator"], r["seed"])):
            cells = [_fmt(r.get(k)) for k in HEADLINE]
            lines.append(f"| {r['generator']} | {r['seed']} | " + " | ".join(cells) +
                         f" | {r['fit_s']:.1f} | {r['sample_s']:.1f} | {r['peak_mb']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def main(argv=None) -> int:
    from .generators import GENERATORS
    from .tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tasks", nargs="*", help=f"tasks (default: all): {', '.join(TASKS)}")
    ap.add_argument("--generators", default="holdout,copy,gaussian,tsynth", help=f"comma-separated: {', '.join(GENERATORS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--smoke", action="store_true", help="tiny budget: checks that everything runs, figures meaningless")
    ap.add_argument("--out", default=str(RESULTS), help="results directory")
    args = ap.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = args.tasks or list(TASKS)
    seeds = [int(s) for s in args.seeds.split(",")] if not args.smoke else [0]
    for task in tasks:
        rows = []
        for gen in args.generators.split(","):
            if gen not in GENERATORS:
                raise SystemExit(f"unknown generator {gen!r}; choose from {', '.join(GENERATORS)}")
            for seed in (seeds if gen not in ("holdout", "copy") else [0]):
                row = run_one(task, gen, seed, args.smoke)
                rows.append(row)
                print(f"{task:18s} {gen:10s} seed {seed}: " +
                      " ".join(f"{k} {_fmt(row.get(k))}" for k in ("disc_gbm", "mean_err", "pct_err", "dcr_ratio", "exact_copies")) +
                      f" fit {row['fit_s']:.1f}s sample {row['sample_s']:.1f}s", flush=True)
        print(f"wrote {save(task, rows, args.smoke, out_dir)}")
    if not args.smoke:
        from tsynth.data import atomic_write

        atomic_write(HERE.parent / "BENCHMARKS.md", lambda f: Path(f).write_text(render_markdown(out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
