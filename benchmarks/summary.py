"""Summary tables of the benchmark results: per task, each generator's key figures as mean (min-max) over seeds.

    python -m benchmarks.summary                     # every task's table (the opening of BENCHMARKS.md)
    python -m benchmarks.summary --readme            # the small table of README.md
    python -m benchmarks.summary --suite             # the generalisation suite's table

Reads ``benchmarks/results/<task>.json`` (written by ``python -m benchmarks.run``); nothing is measured here.
``benchmarks.run`` puts :func:`summary_section` at the top of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
# (column, key in a row, digits): the figures a reader compares first
KEY = [("disc_gbm", "disc_gbm", 3), ("disc_gru", "disc_gru", 3), ("mean err", "mean_err", 3),
       ("pct err", "pct_err", 3), ("utility MAE", "tstr_mae", 3), ("next-step MAE", "pred", 4),
       ("dcr ratio", "dcr_ratio", 2), ("MIA", "mia_auc", 3), ("MIA likelihood", "mia_likelihood_auc", 3),
       ("epsilon", "epsilon", 2), ("shape disc", "shape_disc", 3), ("fit s", "fit_s", 0)]
# what each generator is (the order of the rows); unknown generators follow in name order
GENERATORS = {
    "holdout": "real held-out series scored as if synthetic: the floor",
    "tsynth": "no flag (`auto`): hourly one-channel series start from the load prior, 24 members, unless they are "
              "longer than 32 steps and start at different times of day; other data trains six members from scratch "
              "(the token model for short windows, unless one channel starts at different times of day; else the "
              "step model)",
    "tsynth-step": "the step model from scratch, six members (`--codec step`)",
    "tsynth-token": "the token model from scratch, six members (`--codec token`)",
    "tsynth-token-noprior": "the token model from scratch where `--codec token` alone takes a prior, six members "
                            "(`--codec token --prior none`)",
    "tsynth-e12": "from scratch, twelve members",
    "tsynth-prior": "from the default prior, six members",
    "tsynth-load": "`--prior load --ensemble 6`",
    "tsynth-load-e12": "`--prior load --ensemble 12`",
    "tsynth-load-e24": "`--prior load` (24 members, its default)",
    "tsynth-dp-eps1": "DP, epsilon 1, the default prior (`auto` under DP before it took the load prior for hourly "
                      "data)",
    "tsynth-dp-eps3": "DP, epsilon 3, the default prior (`auto` under DP before it took the load prior for hourly "
                      "data)",
    "tsynth-dp-eps8": "DP, epsilon 8, no other flag (`auto`: the load prior for hourly one-channel data, else the "
                      "default prior; from scratch where it refuses the data)",
    "tsynth-dp-eps8-noprior": "DP, epsilon 8, from scratch",
    "tsynth-dp-eps8-load": "DP, epsilon 8, `--prior load`",
    "tsynth-dp-eps8-step": "DP, epsilon 8, the step model from scratch (`--codec step`: what series longer than it sees "
                           "whole, or with gaps, train under DP)",
    "gaussian": "multivariate Gaussian (baseline)",
    "dp-gaussian-eps1": "DP Gaussian, epsilon 1",
    "dp-gaussian-eps3": "DP Gaussian, epsilon 3",
    "dp-gaussian-eps8": "DP Gaussian, epsilon 8",
    "par": "SDV PAR (peer)",
    "dgan": "gretel DoppelGANger (peer)",
    "copy": "the training series themselves: what no privacy looks like",
}
TASK_ORDER = ["electricity100", "electricity336", "italy24", "electricity-raw", "electricity24-phases",
              "electricity24-phases-raw", "stocks24", "stocks24-blocked", "energy24", "energy24-blocked"]
# README: the recipe's task and two others; tsynth's defaults (and the load prior for energy data) against peers
README_TASKS = ["electricity100", "italy24", "stocks24"]
README_ROWS = ["holdout", "tsynth", "tsynth-step", "tsynth-token", "tsynth-load-e24", "gaussian", "par", "dgan"]
# the generalisation suite (benchmarks.tasks.SUITE), in the order of its table; italy24 is also a task of its own
SUITE_ORDER = ["suite-elec-h100", "suite-elec-h236", "suite-elec-100c", "suite-elec-160c", "suite-etth1",
               "suite-fertility", "italy24"]
SUITE_ROWS = ["holdout", "gaussian", "tsynth"]


def fmt(v: Any, digits: int = 3) -> str:
    """A figure for a table: floats to ``digits`` decimals, None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def extras(row: dict) -> dict:
    """The figures a generator reports beyond the evaluation (tsynth: errors of 1,000 draws, the likelihood
    audit, the spent epsilon), flattened into the row's namespace."""
    extra = row.get("extra") or {}
    return {k: extra.get(k) for k in ("mean_err_1000", "pct_err_1000", "mia_likelihood_auc")} | {
        "epsilon": (extra.get("privacy") or {}).get("epsilon")}


def load_tasks(out_dir: Path = RESULTS) -> dict[str, list[dict]]:
    """Every full-mode task's rows (extras flattened in), by task name in TASK_ORDER; unavailable peers left out."""
    tasks = {}
    for path in out_dir.glob("*.json"):
        if path.stem.endswith("-smoke"):
            continue
        doc = json.loads(path.read_text())
        # only <task>.json: other files about a task (pretrained_electricity100.json) keep rows of their own
        if not isinstance(doc, dict) or "rows" not in doc or doc.get("task") != path.stem:
            continue
        tasks[doc["task"]] = [{**r, **extras(r)} for r in doc["rows"] if r.get("status") != "unavailable"]
    order = [t for t in TASK_ORDER if t in tasks] + sorted(set(tasks) - set(TASK_ORDER))
    return {t: tasks[t] for t in order}


def generator_order(names) -> list[str]:
    known = [g for g in GENERATORS if g in names]
    return known + sorted(set(names) - set(known))


def cell(values: list[float], digits: int) -> str:
    """mean (min-max), or the one value."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt(float(values[0]), digits)
    mean = sum(values) / len(values)
    return f"{fmt(float(mean), digits)} ({fmt(float(min(values)), digits)}-{fmt(float(max(values)), digits)})"


def task_table(rows: list[dict]) -> list[str]:
    """One task's summary: a row per generator, the KEY columns that any generator reports."""
    cols = [(name, key, d) for name, key, d in KEY if any(r.get(key) is not None for r in rows)]
    out = ["| generator | what | seeds | " + " | ".join(name for name, _, _ in cols) + " |",
           "|---" * (len(cols) + 3) + "|"]
    for g in generator_order({r["generator"] for r in rows}):
        mine = [r for r in rows if r["generator"] == g]
        cells = [cell([r[key] for r in mine if r.get(key) is not None], d) for _, key, d in cols]
        out.append(f"| {g} | {GENERATORS.get(g, '')} | {len(mine)} | " + " | ".join(cells) + " |")
    return out


def summary_section(out_dir: Path = RESULTS) -> list[str]:
    """The opening of BENCHMARKS.md: one summary table per task."""
    lines = ["## Summary", "",
             "Per task and generator: mean (min-max) over the seeds run, from `benchmarks/results/<task>.json` "
             "(`python -m benchmarks.summary` prints these tables). disc_gbm and disc_gru: how well a classifier "
             "tells synthetic from real (0 ideal); mean / pct err: per-step mean and 10/50/90th percentile errors "
             "against train (the holdout row is the floor); utility MAE: a forecaster trained on synthetic, scored "
             "on the real holdout; next-step MAE: the TimeGAN protocol's GRU trained on synthetic; dcr ratio: "
             "distance to the closest training series over the holdout's (about 1 wanted, far below 1: copies); "
             "MIA: membership-inference AUC by distance and by the model's likelihood (0.5 ideal); fit s: seconds "
             "on the machine of the rows (below).", ""]
    for task, rows in load_tasks(out_dir).items():
        if task not in SUITE_ORDER or task in TASK_ORDER:   # suite sets have their own table
            lines += [f"### {task}", "", *task_table(rows), ""]
    return lines


def mean_of(rows: list[dict], generator: str, key: str) -> float | None:
    """The mean of ``key`` over ``generator``'s rows, None where none has it."""
    v = [r[key] for r in rows if r["generator"] == generator and r.get(key) is not None]
    return sum(v) / len(v) if v else None


def suite_table(out_dir: Path = RESULTS) -> list[str]:
    """The generalisation suite, a row per set: disc_gbm, the shape-level disc and the autocorrelation error at
    the data's cycle for the holdout, the Gaussian and tsynth's defaults (means over seeds), and whether
    tsynth meets the targets: below the Gaussian on both scores, cycle error within 2x the holdout's."""
    data = load_tasks(out_dir)
    head = ["set", "seeds"] + [f"{g} {k}" for k in ("disc_gbm", "shape disc", "cycle ACF err") for g in SUITE_ROWS]
    out = ["| " + " | ".join(head + ["tsynth beats Gaussian", "cycle ACF <= 2x holdout"]) + " |",
           "|---" * (len(head) + 2) + "|"]
    for task in [t for t in SUITE_ORDER if t in data]:
        rows = data[task]
        figs = {(g, k): mean_of(rows, g, k) for g in SUITE_ROWS for k in ("disc_gbm", "shape_disc", "acf_err_cycle")}
        t, g, h = ((figs[(x, "disc_gbm")], figs[(x, "shape_disc")], figs[(x, "acf_err_cycle")])
                   for x in ("tsynth", "gaussian", "holdout"))
        beats = "-" if None in (*t[:2], *g[:2]) else "yes" if t[0] < g[0] and t[1] < g[1] else "no"
        cycle = "-" if t[2] is None or h[2] is None else "yes" if t[2] <= 2 * h[2] else "no"
        cells = [fmt(figs[(x, k)]) for k in ("disc_gbm", "shape_disc", "acf_err_cycle") for x in SUITE_ROWS]
        seeds = sum(r["generator"] == "tsynth" for r in rows)
        out.append(f"| {task} | {seeds} | " + " | ".join(cells) + f" | {beats} | {cycle} |")
    return out


def suite_section(out_dir: Path = RESULTS) -> list[str]:
    """BENCHMARKS.md's section on the generalisation suite (empty until one of its sets has rows)."""
    table = suite_table(out_dir)
    if len(table) <= 2:
        return []
    return ["## Generalisation suite", "",
            "Sets that no default was chosen on (`benchmarks/tasks.py`, `SUITE`; `python -m benchmarks.run --suite "
            "--generators holdout,gaussian,tsynth --seeds 0,1,2`): hours 100-200 and 236-336 of the electricity "
            "file with the clients re-split, 100 and 160 random clients of its first 100 hours, ETTh1's three "
            "useful-load columns cut into 100-hour windows (each z-scored), the World Bank fertility rates "
            "statsmodels ships (yearly, raw scale), and italy24. Means over the seeds run (the seeds column: "
            "tsynth's); tsynth runs its defaults, no flag. shape disc: disc_gbm with every series standardised on "
            "its own; cycle ACF err: the autocorrelation error at the data's cycle (a day of hours; fertility's "
            "yearly series have none). Every row is under the set's name in the rows below.", "",
            *table, ""]


def readme_table(out_dir: Path = RESULTS, tasks=README_TASKS, generators=README_ROWS) -> list[str]:
    """README's small table: disc_gbm and the per-step percentile error, mean over seeds, per task."""
    data = load_tasks(out_dir)
    tasks = [t for t in tasks if t in data]
    head = "| generator | " + " | ".join(f"{t} disc_gbm | {t} pct err" for t in tasks) + " |"
    out = [head, "|---" * (2 * len(tasks) + 1) + "|"]
    for g in generators:
        cells = []
        for t in tasks:
            mine = [r for r in data[t] if r["generator"] == g]
            for key in ("disc_gbm", "pct_err"):
                v = [r[key] for r in mine if r.get(key) is not None]
                cells.append(fmt(sum(v) / len(v), 3) if v else "-")
        out.append(f"| {g} | " + " | ".join(cells) + " |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(RESULTS), help="folder of <task>.json results files")
    ap.add_argument("--readme", action="store_true", help="the small table of README.md instead")
    ap.add_argument("--suite", action="store_true", help="the generalisation suite's table instead")
    args = ap.parse_args(argv)
    lines = (readme_table(Path(args.results)) if args.readme else suite_table(Path(args.results)) if args.suite
             else summary_section(Path(args.results)))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
