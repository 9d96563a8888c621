"""Run generators on benchmark tasks, evaluate with tsynth's own evaluation, record time and memory.

    python -m benchmarks.run electricity100 italy24 --generators tsynth,gaussian,holdout,copy --seeds 0,1,2
    python -m benchmarks.run --smoke                      # every task, tiny budget (used by the tests)
    python -m benchmarks.run --suite --generators holdout,gaussian,tsynth --seeds 0,1,2   # generalisation suite

Each (task, generator, seed) runs in a fresh process (so its peak memory is its own; smoke mode runs all
of a call's runs in one) on one torch thread.
Results go to ``benchmarks/results/<task>.json`` (merged with earlier runs, keyed by generator and seed)
and the table ``BENCHMARKS.md`` is rebuilt from every results file (``--render``: only that). A peer whose
package is missing is recorded as ``{"generator": ..., "status": "unavailable", "reason": ...}``.
Multivariate tasks also get the TimeGAN GRU scores (``disc_gru``, ``pred``, ``pred_real``).
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
from queue import Empty
from typing import Iterator

from .summary import TASK_ORDER
from .summary import extras as _extras
from .summary import fmt as _fmt

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
HEADLINE = ["disc_gbm", "auc", "mean_err", "pct_err", "acf_err", "dcr_ratio", "share_closer_to_train",
            "exact_copies", "mia_auc", "tstr_mae", "trtr_mae", "level_ks", "shape_disc", "acf24_err", "acf168_err",
            "subwindow_disc"]
TIMEGAN = ["disc_gru", "pred", "pred_real"]
# from a generator's own extras (tsynth): errors of 1,000 draws, the likelihood audit, the spent epsilon
EXTRAS = ["mean_err_1000", "pct_err_1000", "mia_likelihood_auc", "epsilon"]
SUMMARY = ["disc_gbm", "shape_disc", "mean_err", "pct_err", "mean_err_1000", "pct_err_1000", "tstr_mae", "mia_auc",
           "mia_likelihood_auc", "epsilon", "fit_s"]
DIGITS = {"pred": 4, "pred_real": 4}
SMOKE_GRU_ITERATIONS = 20
# (source, figure, stocks, energy) as quoted in ../shared/reference/baselines.md
PUBLISHED = [
    ("Diffusion-TS (Yuan & Qiao, ICLR 2024)", "disc (GRU)", 0.067, 0.122),
    ("TimeGAN (Yoon et al., NeurIPS 2019)", "disc (GRU)", 0.102, 0.236),
    ("TimeGAN (Yoon et al., NeurIPS 2019)", "pred, GRU trained on the real data", 0.036, 0.250),
]


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
        **shape_and_long(f),
    }


def shape_and_long(f: dict) -> dict:
    """Shape-level and long-series figures (each series standardised on its own; calendar profiles, drift)."""
    def get(d, *path):
        for key in path:
            d = d.get(key) if isinstance(d, dict) else None
        return d

    acf_err = get(f, "shape", "acf", "err") or {}
    return {"shape_disc": get(f, "shape", "disc_gbm"), "acf_err_cycle": get(f, "shape", "acf_err_cycle"),
            "acf24_err": acf_err.get("24"), "acf168_err": acf_err.get("168"),
            "subwindow_disc": get(f, "long", "subwindow", "disc_gbm"),
            "hour_profile_err": get(f, "long", "profiles", "hour_of_day", "err"),
            "weekday_profile_err": get(f, "long", "profiles", "day_of_week", "err"),
            "level_drift_err": get(f, "long", "stability", "level_drift_err"),
            "std_drift_err": get(f, "long", "stability", "std_drift_err")}


def level_ks(train, synthetic) -> float:
    """Kolmogorov-Smirnov distance between the per-series mean levels of train and synthetic (0 ideal): on
    raw data whose clients differ by orders of magnitude, it says whether the levels are reproduced."""
    import numpy as np
    from scipy.stats import ks_2samp

    def levels(s):
        return np.nanmean(s.values.astype(np.float64), axis=(1, 2))

    return float(ks_2samp(levels(train), levels(synthetic)).statistic)


def _one(task, generator: str, seed: int, smoke: bool) -> dict:
    import numpy as np

    from tsynth.evaluate import evaluate

    from .generators import GENERATORS
    from .peers import PeerUnavailable
    from .timegan_metrics import REPEATS, timegan_scores

    try:
        synthetic, fit_s, sample_s, extra = GENERATORS[generator](task, seed, smoke)
    except PeerUnavailable as e:
        return {"generator": generator, "status": "unavailable", "reason": str(e)}
    label = task.label if task.label in synthetic.attributes.columns else None   # e.g. the Gaussian has none
    ev = evaluate(task.train, synthetic, task.holdout, label=label, seed=0, fast=smoke).to_dict()
    # the largest process: this one, or a training child (ensemble members train in child processes)
    peak_mb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    row = {"generator": generator, "seed": seed, "commit": source_commit(), "fit_s": fit_s, "sample_s": sample_s,
           "peak_mb": peak_mb, "n_synthetic": len(synthetic), **headline(ev), "level_ks": level_ks(task.train, synthetic),
           "extra": extra, "evaluation": ev}
    if task.train.n_channels > 1:
        t0 = time.time()
        syn = synthetic.values[np.isfinite(synthetic.values).all(axis=(1, 2))]
        row.update(timegan_scores(task.train.values, syn, task.holdout.values, repeats=1 if smoke else REPEATS,
                                  iterations=SMOKE_GRU_ITERATIONS if smoke else None), timegan_s=time.time() - t0)
    return row


def _work(groups: list[tuple[str, list]], smoke: bool, queue) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from .tasks import load_task

    for task_name, jobs in groups:
        task = load_task(task_name)
        for generator, seed in jobs:
            queue.put(_one(task, generator, seed, smoke))


def run_jobs(groups: list[tuple[str, list[tuple[str, int]]]], smoke: bool) -> Iterator[tuple[str, dict]]:
    """Run and evaluate each task's (generator, seed) jobs one after another in one fresh process; yields
    (task, result row) for each. The full mode gives every job its own process, so that its peak memory is its
    own; smoke mode runs every task of a call in one (process start-up, the imports, is then paid once)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_work, args=(groups, smoke, queue))
    proc.start()
    try:
        for task_name, jobs in groups:
            for generator, seed in jobs:
                row = None
                while row is None and (proc.is_alive() or not queue.empty()):
                    try:
                        row = queue.get(timeout=1.0)
                    except Empty:  # keep waiting while the process lives
                        continue
                if row is None:
                    raise RuntimeError(f"{task_name}/{generator}/seed {seed} failed (exit code {proc.exitcode})")
                yield task_name, row
    finally:
        proc.join()


def machine() -> dict:
    """Where the figures were measured."""
    import numpy
    import torch

    import tsynth

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "numpy": numpy.__version__, "tsynth": tsynth.__version__,
            "date": time.strftime("%Y-%m-%d")}


def source_commit() -> str | None:
    """The commit of tsynth's source (``src/``) a row runs, with ``+changes`` when ``src/`` differs from that
    commit (edited or new files); None outside a git checkout."""
    import subprocess

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(HERE.parent), *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+changes" if git("status", "--porcelain", "--", "src").stdout.strip() else "")


def save(task_name: str, rows: list[dict], smoke: bool, out_dir: Path = RESULTS) -> Path:
    """Merge rows into ``<task>.json`` (replacing the same generator+seed) atomically."""
    from tsynth.data import atomic_write

    path = out_dir / f"{task_name}{'-smoke' if smoke else ''}.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": []}
    new = {(x["generator"], x.get("seed")) for x in rows}
    rerun = {x["generator"] for x in rows}
    keep = [r for r in old["rows"] if (r["generator"], r.get("seed")) not in new
            and not (r.get("status") == "unavailable" and r["generator"] in rerun)]
    doc = {"task": task_name, "machine": machine(), "rows": keep + rows}
    return atomic_write(path, lambda f: Path(f).write_text(json.dumps(doc, indent=1)))


def long_section(out_dir: Path = RESULTS) -> list[str]:
    """Long series: memory and time at scale (``benchmarks/bench_long.py``) and how series far longer than the
    training ones hold their shape (the ``horizon`` figures of electricity336's tsynth rows)."""
    lines = ["## Long series", ""]
    scale = out_dir / "long_scale.json"
    if scale.exists():
        doc = json.loads(scale.read_text())
        runs = doc["runs"]
        lines += [f"`python -m benchmarks.bench_long` ({doc['date']}, {doc['cores']} cores): seeded meter-like hourly "
                  "series (daily and weekly shape, per-series level, 1 % missing readings), each command in its own "
                  "process tree; peak memory is the tree's summed resident memory.", "",
                  "| command | series x steps | seconds | peak MB | models, epochs |", "|---|---|---|---|---|"]
        for name in ("fit", "sample"):
            r = runs.get(name)
            if r:
                what = f"{r.get('members', '-')}, {r.get('epochs', '-')}" if name == "fit" else "-"
                lines.append(f"| `tsynth {r['cmd']}` | {r['series']} x {r['steps']} | {r['seconds']:.0f} | "
                             f"{r['peak_mb']:.0f} | {what} |")
        if runs.get("linear"):
            lines += ["", "Seconds per epoch of one model (`--ensemble 1 --epochs 1 --context 96`, 100 series):", "",
                      "| length | x | epoch s | per step of data, ms |", "|---|---|---|---|"]
            for r in runs["linear"]:
                lines.append(f"| {r['length']} | {r['factor']} | {_fmt(r.get('epoch_s'), 1)} | "
                             f"{_fmt(1000 * r['epoch_s'] / (100 * r['length']) if r.get('epoch_s') else None, 3)} |")
        lines.append("")
    step = out_dir / "train_step.json"
    if step.exists():
        doc = json.loads(step.read_text())
        lines += [f"`python -m benchmarks.bench_train_step` ({doc['date']}, one torch thread as each training worker): "
                  "seconds per step of the step model, by default and with the value layer run as its module (as "
                  "under DP); the median of each run's steps after the first two, two runs each, alternating.", "",
                  "| task | windows x steps x channels | bins | value head | default s | module s | same losses |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in doc["tasks"].items():
            lines.append(f"| {name} | {r['rows_per_step']} rows (batch {r['batch']}) | {r['bins']} | "
                         f"{'fused' if r['fused_by_default'] else 'module'} | "
                         f"{' / '.join(_fmt(v, 3) for v in r['default_s'])} | "
                         f"{' / '.join(_fmt(v, 3) for v in r['module_s'])} | {'yes' if r['same_losses'] else 'no'} |")
        lines.append("")
    task = out_dir / "electricity336.json"
    horizon = [r for r in json.loads(task.read_text())["rows"]
               if (r.get("extra") or {}).get("horizon")] if task.exists() else []
    if horizon:
        keys = ["first_week_hour_profile_err", "last_week_hour_profile_err", "first_week_weekday_profile_err",
                "last_week_weekday_profile_err", "first_week_level", "last_week_level", "first_week_std",
                "last_week_std"]
        lines += ["electricity336: series of 2,000 hours drawn from the model fitted on 336-hour series; profiles of "
                  "their first and last whole weeks against the real series' (mean absolute error, data units), and "
                  "the weeks' mean level and within-week standard deviation (real: first / last week "
                  f"{horizon[0]['extra']['horizon']['real_first_week_level']:.3f} / "
                  f"{horizon[0]['extra']['horizon']['real_last_week_level']:.3f} level, "
                  f"{horizon[0]['extra']['horizon']['real_first_week_std']:.3f} / "
                  f"{horizon[0]['extra']['horizon']['real_last_week_std']:.3f} std).", "",
                  "| generator | seed | " + " | ".join(k.replace("_", " ") for k in keys) + " |",
                  "|---" * (len(keys) + 2) + "|"]
        for r in horizon:
            h = r["extra"]["horizon"]
            lines.append(f"| {r['generator']} | {r['seed']} | " + " | ".join(_fmt(h.get(k)) for k in keys) + " |")
        lines.append("")
    return lines if len(lines) > 2 else []


def render_markdown(out_dir: Path = RESULTS) -> str:
    """BENCHMARKS.md from every full-mode results file, then the published TimeGAN-protocol figures."""
    from .bench_pretrained import pretrained_section
    from .bench_scale import scale_section
    from .summary import suite_section, summary_section

    lines = ["# Benchmarks", "",
             "Written by `python -m benchmarks.run` from `benchmarks/results/*.json`: first a summary table per task, "
             "then every row (one training seed each; none is picked), then notes on how the rows were run.", "",
             "## How to reproduce", "",
             "```bash",
             "python -m benchmarks.run electricity100 italy24 --generators holdout,copy,gaussian,tsynth --seeds 0,1,2",
             "python -m benchmarks.run --render        # rebuild this file from benchmarks/results/*.json",
             "python -m benchmarks.summary             # print the summary tables only",
             "```", "",
             "The real data is read from `../shared/data` (`$TSYNTH_DATA`) and never copied; each run merges its rows "
             "into `benchmarks/results/<task>.json`. Generators: `benchmarks/generators.py`; tasks: "
             "`benchmarks/tasks.py`; the peers (DGAN, PAR) need the separate environment of "
             "`benchmarks/requirements-peers.txt`. What the defaults rest on is explained in `docs/` "
             "(each page links the rows here).", "",
             *summary_section(out_dir), *suite_section(out_dir), *long_section(out_dir), *scale_section(out_dir),
             *pretrained_section(out_dir),
             "## Rows", ""]
    for path in sorted(out_dir.glob("*.json"), key=lambda p: (TASK_ORDER.index(p.stem) if p.stem in TASK_ORDER else
                                                              len(TASK_ORDER), p.stem)):
        if path.stem.endswith("-smoke") or path.stem.startswith(("evaluate_", "server_", "domain_prior", "pretrained_")):
            continue
        doc = json.loads(path.read_text())
        if "rows" not in doc:
            continue
        m = doc["machine"]
        rows = [{**r, **_extras(r)} for r in doc["rows"]]
        cols = HEADLINE + (TIMEGAN if any("disc_gru" in r for r in rows) else [])
        cols += [k for k in EXTRAS if any(r.get(k) is not None for r in rows)]
        lines += [f"### {doc['task']} rows", "", f"{m['platform']}, {m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
                  f"tsynth {m['tsynth']}, {m['date']}", "",
                  "| generator | seed | " + " | ".join(cols) + " | fit s | sample s | peak MB | code |",
                  "|---" * (len(cols) + 6) + "|"]
        unavailable = []
        for r in sorted(rows, key=lambda r: (r["generator"], r.get("seed", -1))):
            if r.get("status") == "unavailable":
                unavailable.append(f"- {r['generator']} is unavailable here: {r['reason']}")
                lines.append(f"| {r['generator']} | unavailable |" + " - |" * (len(cols) + 4))
                continue
            cells = [_fmt(r.get(k), DIGITS.get(k, 3)) for k in cols]
            lines.append(f"| {r['generator']} | {r['seed']} | " + " | ".join(cells) +
                         f" | {r['fit_s']:.1f} | {r['sample_s']:.1f} | {r['peak_mb']:.0f} | {r.get('commit') or '-'} |")
        lines += ["", *unavailable, *([""] if unavailable else []), *_summary(rows)]
    lines += ["## Notes on the rows", "",
             "- **Metrics** as `../shared/reference/baselines.md` defines them: disc_gbm = |AUC - 0.5| of a "
             "gradient-boosting classifier, real train vs synthetic (0 ideal); mean/pct err vs train (the holdout "
             "row is the floor); dcr_ratio = median distance to the closest train series over the holdout's (>= 0.95 "
             "wanted); mia_auc = distance-based membership inference (0.5 ideal). Multivariate tasks add the TimeGAN "
             "scores (mean of 3 repeats): disc_gru = |accuracy - 0.5| of a one-layer GRU classifier, real train vs "
             "synthetic; pred = next-step MAE on the holdout of a GRU trained on synthetic, pred_real = the same GRU "
             "trained on real train.",
             "- **Budget**: the peers (DGAN, PAR) train for at most 600 s; tsynth without DP gets the same wall clock "
             "as the backend's time limit (6 models two at a time, 200 s each, steps and lr schedule cut to fit; "
             "where one epoch of each would not fit, fewer models, without dropout: energy24 trains 2; JSON "
             "`time_limited`, `epochs`; `-e12` / `-e24` generators: 12 / 24 models sharing the same 600 s), which "
             "binds on stocks24 and energy24, and the steps and schedule follow the measured pace, so a row run beside "
             "another job differs a little from one run alone; DP fits run their fixed 60 epochs (energy24: 1 epoch, "
             "since 60 would take about 36 h here).",
             "- **Costs**: fit/sample seconds with one torch thread per process (tsynth trains its ensemble members "
             "two processes at a time on 2 cores and, since ea427bb, samples two batches at a time on two threads); "
             "peak MB is the largest single process; 'sample s' times n = len(train) series (the JSON also has "
             "sample_1000_s). energy24's PAR seeds 1-2, DGAN seeds 1-2 and stocks24's DP seed 1 ran beside another "
             "one-thread job (each on its own core): PAR's fixed-epoch fit took 509-595 s there (seed 0 alone 307 s), "
             "the DP fit 1,239 s (seed 0 1,096 s).",
             "- **code** = the commit of tsynth's `src/` a row ran ('+changes': with uncommitted changes; '-': the "
             "row predates the column, i.e. predates 445b67c). What changed between the commits rows name:",
             "  - 8109034: label smoothing per channel, half the channel's median step, at most 2 bins (JSON "
             "`smoothing`; before it a fixed 2). The same fit, bit for bit, where every channel moves 4 bins or more "
             "a step (electricity100, electricity-raw, italy24).",
             "  - 606cfee: point masses, values that at least 10 training series hold exactly are decoded exactly "
             "(JSON `point_masses`; rows without the key predate them). None on electricity100, italy24 or per-series "
             "scaled electricity-raw (the same samples, bit for bit); stocks24 has them (a codec round trip of its "
             "holdout scores disc_gbm 0.020 without, 0.025 with).",
             "  - 445b67c: auto scaling judges the median channel, so energy24 (whose mostly-zero `lights` channel "
             "alone made it per-series scaled) is globally scaled with 107,670 point masses; windows of 8 or more "
             "channels start with factored value positions (step + channel). Affects energy24 and energy24-blocked "
             "only.",
             "  - bff7812: the time limit plans again as the pace settles (the first steps are slower; planning once "
             "from them left 10-20 % of energy24's budget unused), validation runs in training-size batches (2x "
             "faster on energy24) and members stop by a common deadline. Affects the time-limited rows "
             "(stocks24, energy24 and their blocked variants). e2520e9: the same source (one help string reflowed).",
             "  - 6a954bf: the likelihood audit (`mia_likelihood_auc`) leaves out holdout series with over 25 % of "
             "their values beyond the training range of their channel (JSON `mia_likelihood_left_out`): their "
             "tokens sit in the codec's wide edge bins. Only the blocked tasks' holdouts have such series.",
             "  - 4e43db9: point masses count items, sliding windows of one item once (every task here gives each "
             "window or series its own id: the point masses of all seven tasks are the same as before), and DP fits "
             "refuse data with over a quarter of its values outside the public range (no row here comes near).",
             "  - d633315, adeff1d (text only), 8a261ae: a DP fit's released per-step profile no longer pushes "
             "values out of the bins. From scratch (the `-noprior` rows, same code from d633315 on) the public range "
             "less the profile is mapped exactly onto the uniform bins (before, a [0, 1] range lost every value below "
             "its step's mean: 63 % of stocks24's; electricity100 and italy24, standardised within [-5, 5], lost at "
             "most 0.003 %, and their bins are now 21 % / 27 % wider). From a prior (8a261ae on) a value equal to its "
             "step's profile stays at the prior's centre and the scale widens only as far as the range needs: bins "
             "25 % / 32 % wider on electricity100 / italy24, 10-28 % on stocks24, whose rows clipped 0.7 % before. "
             "At d633315 the prior path mapped the range exactly too, which moved the values off the prior's centre: "
             "stocks24's seed-0 row then scored per-step mean error 0.087 and next-step MAE 0.224 (0.017 / 0.106 "
             "before), and was rerun at 8a261ae. The `-load` rows release no profile: unaffected.",
             "  - 84ff463 (rows at a985f85 predate it): a seasonal copy component a week back besides the one a day "
             "back where the context holds two weeks (electricity336 only, among these tasks), and decoding holds "
             "the previous value exactly at each channel's share of exact repeats among steps in the same bin as "
             "the step before (every task whose data holds values: electricity336 4 % of its steps).",
             "  - 75fbcf7 (rows at 84ff463 and before predate it): the copy components (previous step and seasonal) "
             "only where a step holds several channels; electricity100, electricity336 and italy24 train without "
             "them (their samples had wandered from each series' level: electricity100 disc_gbm 0.380 at 84ff463).",
             "  - 1afe7cc: `--prior auto` under DP takes the load prior for hourly data of one channel (electricity100 "
             "and electricity-raw; their `tsynth-dp-*` rows before it started from the default prior, as "
             "`tsynth-dp-eps8-load` rows show the load prior).",
             "  - 7e1f3d6: windows of at most 32 steps and 1,024 values (equal lengths, no gaps) train the token model "
             "by default. The step model's rows from before it that were the default then (italy24 and stocks24 at "
             "75fbcf7, energy24 at a985f85) are listed as `tsynth-step` (what `--codec step` runs now); from 7e1f3d6 "
             "on, `tsynth` on these three tasks is the token model.",
             "  - 69f958a (electricity100's `tsynth` rows at 0aba293 and the suite's at 344dfc7, three seeds each, "
             "on an otherwise idle machine; electricity336's `tsynth` rows at 9ea8b4a: disc_gbm 0.371 / 0.360 / 0.386, "
             "against 0.362-0.441 before): seasonal inputs, each "
             "channel's value a day (and a week) back in every step's input, for one channel too. electricity100 "
             "lost about 0.06 of disc_gbm with them (0.108 at 75fbcf7); on the suite the daily cycle came back (cycle "
             "autocorrelation error 0.012-0.077 against 0.058-0.284 for seed 0 at 1afe7cc) and disc_gbm fell on the "
             "client subsets (100 clients 0.213 -> 0.147, 160 clients 0.295 -> 0.171); docs/long-series.md.",
             "  - a21b6a4: the step model's training reads the head's log-probabilities only near each smoothed target "
             '(docs/long-series.md, "What a training step computes"): the same loss, 2.2x faster per step on energy24. '
             "Its `tsynth-step` row at a21b6a4 (idle machine) trained 2 models for 6.8 epochs each (84.7 s an epoch, "
             "168 s before) and scored as the row at 344dfc7 did after 3.4 (disc_gru 0.459): the step model's loss on "
             "28 channels is not a matter of training time.",
             "  - 1c49e1b: where every training series is standardised on its own, samples are standardised alike "
             "(docs/codec.md, \"Standardised series\"; not under DP). Of the benchmark sets, italy24 (ddof 1) and "
             "suite-etth1 (ddof 0) are; their `tsynth` rows at 1c49e1b: italy24 disc_gbm 0.183 / 0.184 / 0.200 "
             "against 0.203 / 0.218 / 0.193 at 344dfc7; suite-etth1 0.079 / 0.110 / 0.123 against 0.132 / 0.129 / 0.166 "
             "(its holdout 0.090).",
             "  - 510e32e: a channel that repeats another exactly is learnt once and copied into the samples "
             "(docs/codec.md; energy24's rv2 is rv1, and energy24-blocked's). energy24's `tsynth-step` row at 510e32e: "
             "disc_gru 0.437 (0.459 at a21b6a4); its `tsynth-token` rows predate it.",
             "  - db049c2: where a step holds several channels, each channel's head reads that channel's latest four "
             "values (docs/long-series.md, \"Own history in the heads\"). energy24's `tsynth-step` rows at db049c2 "
             "(idle machine, 2 models of 6 trained in the 600 s): disc_gru 0.405 / 0.413 / 0.418 (0.437 at 510e32e, "
             "seed 0), still above the token model's 0.340-0.345 and the Gaussian's 0.26. energy24's `tsynth-token` "
             "seed 0 at c3d8394 (after 510e32e, which learns rv2 once): disc_gru 0.319 (0.345 at bff7812), sampling "
             "803 s; seed 1 at a111154: 0.322 (0.342 at bff7812), sampling 779 s; seed 2 is still the row at e2520e9.",
             "  - 9b8a87c: the step model gets a time-step input where the series share one calendar, and its label "
             "smoothing keeps a wide tail bin's target in its bin (docs/long-series.md, \"Shared calendar\" and "
             "\"Label smoothing in the tails\"). Rerun at 9b8a87c (idle machine, one job at a time): electricity336, "
             "electricity100 and the suite's four electricity sets (`tsynth`, seeds 0-2). electricity336 disc_gbm "
             "0.168 / 0.270 / 0.194 (0.360-0.386 before), electricity100 0.138 / 0.161 / 0.100 (0.194 / 0.170 / 0.140 "
             "at 0aba293), suite-elec-h100 0.284 / 0.279 / 0.218 (0.358 / 0.361 / 0.307), suite-elec-160c 0.037 / "
             "0.153 / 0.134 (0.131 / 0.236 / 0.147), suite-elec-100c 0.181 / 0.176 / 0.158 (0.172 / 0.154 / 0.116: "
             "worse), suite-elec-h236 0.226 / 0.205 / 0.199 (0.206 / 0.219 / 0.277). The suite's ETTh1 and fertility "
             "rows (step model, no shared calendar) "
             "predate the smoothing change; the `tsynth-step` rows of the short-window tasks predate both.",
             "  - 65b2fee: the token model's label smoothing keeps a wide tail bin's target in its bin as the step "
             "model's does, and the time-step input needs 100 series on one calendar (10 before: with the 80 training "
             "series of suite-elec-100c it learnt their noise). Rerun (idle machine, one job at a time, `tsynth`, seeds "
             "0-2): italy24 at 65b2fee 0.203 / 0.143 / 0.164 (0.183 / 0.184 / 0.200 at 1c49e1b); suite-elec-100c at "
             "65b2fee 0.120 / 0.147 / 0.105 (0.181 / 0.176 / 0.158 at 9b8a87c); suite-fertility and suite-etth1 at "
             "be46f88 (whose step model is 65b2fee's), fertility 0.058 / 0.051 / 0.097 (0.039 / 0.054 / 0.055 at 344dfc7), "
             "ETTh1 0.106 / 0.108 / 0.174 (0.079 / 0.110 / 0.123 at 1c49e1b; holdout 0.090, Gaussian 0.31-0.32). "
             "The other electricity sets' rows stand at 9b8a87c (each has at least 128 training series on one "
             "calendar, so nothing changed for them). stocks24 seed 0 at b9c18bd (the same token model as 65b2fee's): "
             "disc_gbm 0.111, disc_gru 0.034 (0.121 / 0.020 at 34ccd78; another fit of the same code, scored the same "
             "way outside the benchmark, gave 0.089 / 0.023); energy24's token rows predate 65b2fee. be46f88 pooled "
             "token-model members geometrically; it was withdrawn (docs/model-and-training.md, "
             "\"Ensemble\"), so its italy24 and stocks24 rows were not kept.",
             "  - c571bd9: the token codec holds values exactly for runs as the data does (docs/codec.md, \"Held "
             "values\"). Rerun (idle machine, one job at a time, `tsynth`): italy24 seeds 0-2 0.196 / 0.169 / 0.154 "
             "(0.203 / 0.143 / 0.164 at 65b2fee: unchanged within noise; the roughness tell fell from 0.34 to 0.16); "
             "energy24 seed 0 (the token model by default; 2 of 6 models trained, one epoch estimated at 1,937 s) "
             "disc_gru 0.416 (0.319 at c3d8394). That row is no evidence against held values: another fit of the "
             "same code, whose pace allowed more steps (one epoch estimated at 1,439 s), scored 0.305 with them and "
             "0.306 without on 4,000 draws; the time-limited energy24 fits vary with the pace. Seeds 1-2 of energy24 "
             "(`tsynth-token` rows) predate it. stocks24 at the same code (seed 0 at 8e1ed90, seeds 1-2 at 6c13c07; "
             "4 of 6 models trained): disc_gbm 0.103 / 0.099 / 0.065, disc_gru 0.046 / 0.030 / 0.032 (the `tsynth-token` "
             "rows at e2520e9: 0.153 / 0.166 / 0.141 and 0.024 / 0.009 / 0.030; seed 0 at b9c18bd 0.111 / 0.034). Its "
             "prices hold a value in at most 0.2 % of steps (repeat shares 0-0.7 %), so held values hardly touch it: "
             "the difference is the token model's changes since e2520e9 and the fit's pace.",
             "  - 08492b6: members train in one worker process per core (start-up paid once per worker), a token "
             "ensemble samples as one stacked model, and members fine-tuned from a prior stop 5 epochs after their "
             "best (20 before). `tsynth-load-e24` rerun there (idle machine, one job at a time): electricity100 "
             "0.103 / 0.067 / 0.052, fit 116-118 s (470-551 s at bda1e77), 1,000 samples 22-26 s; the suite's hourly "
             "sets 100 clients 0.046 / 0.036 / 0.012, 160 clients 0.036 / 0.114 / 0.024, hours 100-200 0.299 / "
             "0.207 / 0.225, hours 236-336 0.150 / 0.106 / 0.130, ETTh1 0.197 / 0.180 / 0.197 (the step model from "
             "scratch: 0.106 / 0.108 / 0.174). The next commit makes these settings `auto`'s for hourly one-channel "
             "data (docs/priors.md).",
             "  - fcd0426: `auto` takes the load prior for hourly one-channel data without DP too (24 members, "
             "patience 5). `tsynth` rerun there (idle machine, one job at a time): electricity100 0.147 / 0.066 / "
             "0.035 (mean 0.083; fit 125-131 s), 100 clients 0.048 / 0.036 / 0.012, 160 clients 0.046 / 0.109 / "
             "0.032, hours 236-336 0.129 / 0.081 / 0.140, hours 100-200 0.259 / 0.257 / 0.230. ETTh1's `tsynth` rows "
             "still show the step model from "
             "scratch (at be46f88); its `tsynth-load-e24` rows (0.197 / 0.180 / 0.197) are what the default now does "
             "there.",
             "  - 1d8c5d7: `tsynth-load-e12` (12 load-prior members, patience 5) on electricity100 and the suite's "
             "hourly sets, three seeds, against `tsynth-load-e24` at 08492b6: electricity100 0.091 / 0.154 / 0.078 "
             "(fit 62-64 s), 100 clients 0.028 / 0.055 / 0.054, 160 clients 0.064 / 0.093 / 0.001, hours 100-200 "
             "0.276 / 0.245 / 0.250, hours 236-336 0.118 / 0.109 / 0.133 (these two ran beside another job: their "
             "fit and sample times are inflated). 24 members stay the default; sampling pools 12 of them per batch "
             "from the next commit (docs/model-and-training.md#ensemble).",
             "  - c07d506: a batch of samples pools 12 of the 24 members (batches of 64 series). `tsynth` rerun "
             "there (idle machine, one job at a time): electricity100 0.120 / 0.085 / 0.149 (mean 0.118; fit 120-154 "
             "s; 1,000 samples 10.3-12.6 s against 25.5-28.4 s at fcd0426; mean_err_1000 0.025-0.040, pct_err_1000 "
             "0.044-0.058), ETTh1 0.203 / 0.183 / 0.204, hours 100-200 0.282 / 0.289 / 0.314, hours 236-336 0.119 / "
             "0.089 / 0.119, 100 clients 0.193 / 0.063 / 0.085, 160 clients 0.018 / 0.016 / 0.023. Where the "
             "members' epochs equal those of the 24-member rows before (100 and 160 clients, electricity100 seed 2, "
             "hours 100-200 seeds 1-2) the fit is the same and only the draw differs; on the same fitted models, "
             "pooling all 24 and pooling 12 score alike over many draws (docs/model-and-training.md#ensemble), and "
             "one draw of 80 series (100 clients) ranges 0.01-0.20.",
             "  - 3e4e229: `sample_1000_s` times the draw alone (before, it also timed the likelihood audit and the "
             "per-step errors). `tsynth` on electricity100 rerun there: 0.112 / 0.100 / 0.127 (mean 0.113), fit "
             "113-117 s, 1,000 samples 7.4-8.5 s. The same draw measured alone on one fit pooling all 24 members: "
             "16.3-16.5 s.",
             "  - 265d927: a model from scratch without DP on at most 50,000 readings trains at dropout 0.2 (0.1 "
             "before; docs/model-and-training.md#dropout). `tsynth` rerun on the two sets it changes: italy24 "
             "0.136 / 0.148 / 0.123 (mean 0.136; 0.196 / 0.169 / 0.154 at c571bd9), suite-fertility 0.030 / 0.031 / "
             "0.019 (0.058 / 0.051 / 0.097 at be46f88; its shape disc 0.151-0.161, the Gaussian's 0.038-0.159). "
             "The other sets train from a prior, under DP or on more readings, at 0.1 as before.",
             "  - 3301374: under DP, whether the series are standardised each on its own is released with DP (2 % of "
             "epsilon; docs/privacy.md) and z-normalised samples are restandardised. `tsynth-dp-eps8` rerun: italy24 "
             "0.423 / 0.429 / 0.429 (mean 0.427; 0.449 / 0.450 / 0.439 at 8a261ae); electricity100 (not "
             "standardised per window, so only the 2 % is spent) 0.347 / 0.353 / 0.324 (mean 0.341; 0.301 / 0.337 / "
             "0.349 at 7e1f3d6; DP runs draw their noise from the OS and are not reproducible).",
             "  - 8bb3392: a token model trained under DP draws no value token below 5 x 10^-4 of its position's "
             "distribution (docs/privacy.md). `tsynth-dp-eps8` rerun: italy24 0.418 / 0.427 / 0.415 (mean 0.420; "
             "0.423 / 0.429 / 0.429 at 3301374), electricity100 0.329 / 0.349 / 0.347 (mean 0.342; 0.347 / 0.353 / "
             "0.324 at 3301374). On fits saved and drawn from three times each, with and without the floor, it "
             "gained 0.000-0.016 on every fit (italy24, electricity100, suite-fertility, suite-etth1, two seeds "
             "each); between runs the DP noise moves a row by as much.",
             "  - 40526ea: without DP or a domain, `auto` trains series standardised each on its own from scratch "
             "instead of from the load prior (docs/priors.md). Of the benchmark sets only suite-etth1 changes "
             "(italy24 has no frequency, so it took no prior before either): `tsynth` rerun there (idle machine, one "
             "job at a time), the step model from scratch at dropout 0.2, 0.130 / 0.134 / 0.159 (mean 0.141; 0.203 / "
             "0.183 / 0.204 from the load prior at c07d506), shape disc the same, cycle autocorrelation error 0.007 / "
             "0.002 / 0.007 (0.028 at c07d506; the holdout's 0.015).",
             "  - a22e075: a series whose readings are all 0 says nothing about standardising, so electricity336 "
             "(one such client among 296) is told standardised and its samples are standardised each on its own. "
             "`tsynth` rerun there (idle machine, one job at a time): 0.215 / 0.143 / 0.181 (mean 0.180; 0.168 / 0.270 "
             "/ 0.194 at 9b8a87c, whose shape disc 0.156-0.201 these match: the fits vary by as much), level_ks "
             "0.078-0.098 against 0.53-0.74 (the holdout's 0.118).",
             "  - 250a1d5: members fine-tuned from a prior take dropout 0.2 on at most 10,000 readings (without DP). "
             "Of these sets only suite-elec-100c (8,000) changes: `tsynth` rerun there (idle machine, one job at a "
             "time) 0.117 / 0.026 / 0.047 (mean 0.063; 0.193 / 0.063 / 0.085 at c07d506), cycle autocorrelation error "
             "0.006 / 0.022 / 0.039 (mean 0.022 against 0.052; the holdout's 0.010), shape disc 0.175 / 0.106 / 0.046 "
             "(mean 0.109 against 0.092).",
             "  - 17e6664: without DP, the exception to `auto`'s load prior is series that start at different times of "
             "day, not series standardised each on its own (docs/priors.md). No set's choice changes (ETTh1's windows "
             "start at six hours and still train from scratch; electricity336 still falls back to the step model, "
             "its 336 steps beyond the prior's 168), so no rows were rerun.",
             "  - 3157d43: without DP, hourly one-channel windows of at most 32 steps keep the load prior where the "
             "series start at different times of day, and from scratch such windows of one channel train the step "
             "model, not the token model (docs/priors.md). The new tasks `electricity24-phases` and "
             "`electricity24-phases-raw` (a day of each client from a random hour of its two weeks) show both, rows at "
             "3157d43 (idle machine, one job at a time): z-scored, `tsynth` (the load prior) 0.004 / 0.024 / 0.043, "
             "`tsynth-step` 0.084 / 0.032 / 0.086, `tsynth-token-noprior` (what `auto` took before) 0.175 / 0.159 / "
             "0.187; raw kW, `tsynth` (the step model: the prior refuses levels this far apart) 0.032 / 0.003 / "
             "0.006, `tsynth-token` (before) 0.061 / 0.021 / 0.014. No other set's choice changes, so no other rows "
             "were rerun.",
             "  - af38b7e: where a step holds several channels, each channel's head reads the channels before it in its "
             "step through a linear map of its own (docs/long-series.md, \"Channels before it in the step\"), and "
             "windows of more than 256 values (1,024 before) train the step model by default, so energy24 (672) moves "
             "from the token model to the step model. energy24 `tsynth` at af38b7e (one job at a time; "
             "the rows say +changes: tests and docs, and from seed 1 on the readout's initialisation moved into "
             "`reset_parameters`, committed next): disc_gru 0.238 / 0.255 / 0.282 (the token model's "
             "`tsynth-token` rows 0.319 / 0.322 / 0.340, `tsynth` seed 0 at c571bd9 0.416; the Gaussian's 0.245-0.277), "
             "2 of 6 models trained, 4-6 epochs each, sampling 80-83 s (726-942 s). Seed 0's fit shared the machine "
             "with a short test run for about 4 of its 10 minutes. No other set's choice or model changes (stocks24's "
             "144 values keep the token model; the other sets have one channel), so no other rows were rerun.",
             "  - 3ac1a16: each head also reads every channel's previous value through a map of its own "
             "(docs/long-series.md, \"Channels before it in the step\"); under DP the readout's input maps now get "
             "their per-sample gradients (they trained on noise alone). energy24 `tsynth` rerun (one job at a time, "
             "idle machine): disc_gru 0.199 / 0.212 / 0.208 (af38b7e: 0.238 / 0.255 / 0.282), mean_err 0.010-0.013 "
             "(0.018), 2 of 6 models, 6-7 epochs each, sampling 55-71 s. Only sets whose steps hold several channels "
             "and train the step model change: energy24 is the one task with such `tsynth` rows (energy24-blocked "
             "has a `tsynth-token` row only; energy24's DP row at bda1e77 trained the token model), so no other rows "
             "were rerun.",
             "  - 7fdf2ed: a training step's log-probabilities at the support come from one fused log-softmax with its "
             "own backward pass (docs/long-series.md, \"What a training step computes\"): the same function, an "
             "energy24 step 1.15 s -> 0.74 s. energy24 `tsynth` rerun (one job at a time, idle machine): disc_gru "
             "0.255 / 0.267 / 0.203 (3ac1a16: 0.199 / 0.212 / 0.208), 8-9 epochs each (6-7), validation loss "
             "1.37-1.41 (1.45-1.50). The faster steps bought more epochs and a lower loss, but not a better score: "
             "seed 1 is above the Gaussian's 0.26. Sample quality on energy24 is not limited by training time "
             "within this budget (docs/long-series.md, \"Where energy24 stands\").",
             "  - f355b4a: where a step holds several channels, training moves 30 % of the input values by about a bin "
             "(docs/long-series.md, \"Inputs with noise\"): the model's own draws no longer roughen the draws after "
             "them. energy24 `tsynth` rerun (seeds 0, 1, 2, one job at a time, on a slower machine than the 7fdf2ed rows: "
             "6-7 epochs each against 8-9): disc_gru 0.163 / 0.178 / 0.177 (7fdf2ed: 0.255 / 0.267 / 0.203; the "
             "Gaussian's 0.245-0.277), mean_err 0.009-0.016, validation loss (exact inputs) "
             "1.65-1.68, sampling 110-123 s. Only sets whose steps hold "
             "several channels and train the step model change, and energy24 is the one task with such `tsynth` rows, "
             "so no other rows were rerun.",
             "  - e72c62b: training also moves the values each head reads as the channels before it in its step "
             "(docs/long-series.md, \"Inputs with noise\"). energy24 `tsynth` rerun (seeds 0, 1, 2, one job at a time, "
             "same machine as the f355b4a rows): disc_gru 0.122 / 0.120 / 0.117, mean 0.120 (f355b4a: 0.163 / 0.178 / "
             "0.177; Diffusion-TS publishes 0.122), mean_err 0.004-0.006 (0.009-0.016), 6-7 epochs, sampling "
             "112-124 s. stocks24 trains the token model (144 values a window) and is not affected.",
             "  - 0125bf5: electricity336 `tsynth` rerun (seeds 0, 1, 2, one job at a time, idle machine; the changes "
             "since a22e075 are for steps of several channels, or faster training steps): disc_gbm 0.176 / "
             "0.177 / 0.185, mean 0.179 (a22e075: 0.215 / 0.143 / 0.181, mean 0.180), lag-24 / lag-168 autocorrelation "
             "errors 0.010-0.034 / 0.001-0.013 (the holdout's 0.031 / 0.021). The same seed fits differently from run "
             "to run (member 2 of seed 1 stopped after 54 epochs here, 56 in a one-off fit): one-off fits of seeds 0 "
             "and 1 at e72c62b scored 0.155 and 0.089.",
             "  - 620aaa9: the step codec cuts equal-mass bins wider than four median widths into pieces (docs/codec.md, "
             "\"Wide bins\"; electricity336 292 bins, energy24 283). electricity336 `tsynth` rerun (seeds 0, 1, 2, one "
             "job at a time, same machine as the 0125bf5 rows): disc_gbm 0.124 / 0.188 / 0.137, mean 0.150 (0125bf5: "
             "0.176 / 0.177 / 0.185), lag-24 / lag-168 autocorrelation errors 0.004-0.030 / 0.002-0.014, fits 510-602 s "
             "(463-526 s). Rows of other step models whose bins it cuts predate it: energy24 (283 bins; `tsynth` and "
             "`tsynth-step`), suite-etth1 (304), and the `tsynth-step` rows of italy24 (264) and stocks24 (310); "
             "suite-fertility's and electricity24-phases' bins are not cut.",
             "  - d549cbf: the step codec's profile classes (docs/long-series.md, \"Profile classes\": series grouped "
             "by the shape of their own mean day and week, the class a prefix token drawn first; not under DP). "
             "electricity336 `tsynth` rerun (seeds 0, 1, 2, one job at a time, same machine as the 620aaa9 rows): "
             "disc_gbm 0.109 / 0.078 / 0.080, mean 0.089 (620aaa9: 0.124 / 0.188 / 0.137), mean_err 0.040-0.045 "
             "(0.053-0.070), lag-24 / lag-168 autocorrelation errors 0.003-0.013 / 0.003-0.012, fits 504-602 s. "
             "suite-etth1 at d549cbf with the classes: 0.125 / 0.145 / 0.148, cycle autocorrelation error 0.025 / "
             "0.014 / 0.036; without them (the same commit, classes off): 0.113 / 0.101 / 0.153, 0.006 / 0.011 / "
             "0.017. From c0ece8a the classes are fitted only where the series start at one point of their cycle "
             "(not ETTh1's windows, cut at any hour); its `tsynth` rows are rerun there: 0.113 / 0.101 / 0.153 "
             "(mean 0.122; 40526ea, before the cut bins: 0.130 / 0.134 / 0.159), cycle autocorrelation error 0.006 / "
             "0.011 / 0.017 (40526ea: 0.007 / 0.002 / 0.007; the holdout's 0.015).",
             "  - 8aab1a4: energy24 `tsynth` rerun (seeds 0, 1, 2, one job at a time, idle machine; the first rows with "
             "the cut bins of 620aaa9, 283 of them): disc_gru 0.135 / 0.139 / 0.129, mean 0.134 (e72c62b: 0.122 / "
             "0.120 / 0.117), 2 models of 6 epochs each as before, mean_err 0.004-0.007, full draw 136-146 s. The "
             "same run of seed 0 with the cut kept to one-channel data (256 bins, results kept out of the rows): "
             "0.132, so the cut is not the difference; fits of the same code move by about 0.015 (docs/codec.md).",
             "  - d8a3018, 62d7052: the token model takes each series' profile class as a condition token of its own, not "
             "under DP (docs/priors.md, \"Profile classes in the fine-tune\"); from 62d7052 samples that ask for no "
             "condition get the classes at the training shares. `tsynth` rerun at 62d7052 (seeds 0, 1, 2, one job at a "
             "time): electricity100 disc_gbm 0.040 / 0.014 / 0.044 (3e4e229: 0.112 / 0.100 / 0.127), mean_err "
             "0.029-0.037, fits 181-189 s (113-117 s; 182 s without the class on the same machine); suite-elec-100c "
             "0.038 / 0.023 / 0.094 (250a1d5: 0.117 / 0.026 / 0.047), suite-elec-160c 0.056 / 0.023 / 0.026 "
             "(c07d506: 0.018 / 0.016 / 0.023), suite-elec-h100 "
             "0.276 / 0.237 / 0.266 (0.282 / 0.289 / 0.314; cycle autocorrelation error 0.021-0.046, 0.006-0.032 "
             "before), suite-elec-h236 0.099 / 0.110 / 0.153 (0.119 / 0.089 / 0.119). At d8a3018 (the class drawn "
             "by the model): electricity100 0.060 / 0.056 / 0.071 with mean_err 0.061-0.089; those rows were replaced.",
             "  - d00547e: token members fine-tuned from a prior without DP train without attention dropout "
             "(docs/model-and-training.md, \"Training\"). `tsynth` rerun (seeds 0, 1, 2, one job at a time): "
             "electricity100 disc_gbm 0.080 / 0.010 / 0.055 (62d7052: 0.040 / 0.014 / 0.044), fits 126-133 s (181-189 s), "
             "1,000 samples 10.5-10.9 s; suite-elec-100c 0.052 / 0.101 / 0.027 (0.038 / 0.023 / 0.094; fits 38-44 s "
             "against 59-60 s; seeds 0-1 rerun, their first run shared the machine), suite-elec-160c 0.093 / 0.060 / "
             "0.019 (0.056 / 0.023 / 0.026), suite-elec-h100 0.267 / 0.288 / 0.283 (0.276 / 0.237 / 0.266; fits "
             "131-134 s against 200-210 s), suite-elec-h236 0.112 / 0.089 / 0.120 (0.099 / 0.110 / 0.153). The first "
             "`tsynth` rows of electricity-raw (and its holdout and Gaussian rows rerun for the shape-level figures): "
             "disc_gbm 0.023 / 0.010 / 0.002, shape disc 0.183-0.188 (the holdout's 0.033), cycle autocorrelation "
             "error 0.015-0.022 (0.026), dcr_ratio 0.85 / 0.86 / 0.97.",
             "  - f4970c8: a row's timed draws run with torch on every core, as `tsynth sample` runs (the worker keeps one "
             "thread for the fit and the scores); rows before it drew with one thread and two batches at a time "
             "(docs/model-and-training.md, \"Sampling\"). electricity100 `tsynth` rerun (seeds 0, 1, 2, one job at a "
             "time): disc_gbm 0.083 / 0.001 / 0.027, mean 0.037, mean_err 0.027-0.030, pct_err 0.045-0.061, fits "
             "118-121 s, 1,000 samples 8.7-9.2 s (d00547e: 10.5-10.9 s).",
             "  - 201d730: series whose levels differ by orders of magnitude start from the load prior, each standardised "
             "on its own onto its bins with its level and spread as tokens (docs/priors.md, \"Levels that differ by "
             "orders of magnitude\"). `tsynth` rerun (seeds 0, 1, 2, one job at a time): electricity-raw disc_gbm 0.019 "
             "/ 0.020 / 0.030 (d00547e: 0.023 / 0.010 / 0.002), shape disc 0.052 / 0.078 / 0.093 (0.183-0.188), cycle "
             "autocorrelation error 0.021-0.025 (0.015-0.022; the holdout's 0.026), dcr_ratio 1.07 / 0.96 / 0.85, fits "
             "147-153 s (123-134 s); electricity24-phases-raw 0.009 / 0.034 / 0.066 (3157d43: 0.032 / 0.003 / 0.006), "
             "shape disc 0.108 / 0.059 / 0.066 (0.097 / 0.087 / 0.167), dcr_ratio 0.82 / 0.84 / 0.96 (0.94 / 0.95 / "
             "1.10), fits 56-58 s (31 s).",
             "  - 0344e62, f3a553d: a DP epoch is items / batch steps and the noise is calibrated for those (docs/"
             "privacy.md; every DP row above had matching counts and spent its target, so none changes); the DP step "
             "model releases a mean profile by position in the day (docs/privacy.md, \"Long series and gaps under "
             "DP\"). New row `tsynth-dp-eps8-step` on electricity100 at ce06d22 (seeds 0, 1, 2): per-step mean error "
             "0.093 / 0.105 / 0.097 (without the profile, one-off fits at 0344e62: 0.54-0.62), percentile error "
             "0.167-0.175, disc_gbm 0.494 each.",
             "  - 227bc75: a fine-tune from a prior cuts the prior's two edge bins where the data fills them (docs/"
             "priors.md, \"The prior's edge bins\"). `tsynth` rows of suite-elec-h100, suite-elec-h236 and electricity100 "
             "(seeds 0, 1, 2, one job at a time) from a worktree at 0d57ca4 with the change behind a switch, the same code "
             "as 227bc75 (their code column: 0d57ca4+changes): suite-elec-h100 disc_gbm 0.175 / 0.178 / 0.181 (d00547e: "
             "0.267 / 0.288 / 0.283), shape disc 0.191-0.201 (0.266-0.293), cycle autocorrelation error 0.016-0.046 "
             "(0.026-0.047); electricity100 0.054 / 0.023 / 0.077 (f4970c8: 0.083 / 0.001 / 0.027), 1,000 samples "
             "12.2-13.5 s (8.7-9.2 s; this machine draws as slowly without the cut: 12.2-15.3 s from suite-elec-h100 "
             "models fitted at 0ffd891); suite-elec-h236 0.102 / 0.159 / "
             "0.140 (d00547e: 0.112 / 0.089 / 0.120). electricity-raw at f301b35 (its lowest bin in 5 pieces): disc_gbm "
             "0.009 / 0.011 / 0.055 (201d730: 0.019 / 0.020 / 0.030), shape disc 0.064 / 0.106 / 0.144 (0.052 / 0.078 / "
             "0.093), cycle autocorrelation error 0.025-0.027 (0.021-0.025). Not rerun: suite-elec-100c (no cut), "
             "suite-elec-160c (3 pieces), electricity24-phases(-raw).",
             "  - 6153708: a single channel's step-model head reads its own latest four values (docs/long-series.md, "
             "\"Own history in the heads\"). `tsynth` rows (seeds 0, 1, 2, one job at a time, from b87794a with the "
             "change, the same code as 6153708): suite-fertility disc_gbm 0.027 / 0.024 / 0.036 (265d927: 0.030 / 0.031 "
             "/ 0.019), shape disc 0.108 / 0.069 / 0.117 (0.151 / 0.161 / 0.161), fit 60-65 s (37-40 s, more epochs); "
             "suite-etth1 0.080 / 0.124 / 0.127 (c0ece8a: 0.113 / 0.101 / 0.153), fit 234-271 s (206-219 s); "
             "electricity24-phases 0.036 / 0.005 / 0.020 (3157d43: 0.004 / 0.024 / 0.043). electricity24-phases-raw "
             "trains the load prior's token model, which the change leaves alone (rerun: the same privacy figures, "
             "disc_gbm 0.013 / 0.035 / 0.022 against 0.009 / 0.034 / 0.066), so its rows stay.",
             "  - 9a280ac: with per-series scaling the held-value share is learnt per level group (docs/codec.md, "
             "\"Held values\"). `tsynth` rows (seeds 0, 1, 2, one job at a time; the fits are those of f301b35, the "
             "draws differ): electricity-raw disc_gbm 0.043 / 0.038 / 0.044 (f301b35: 0.009 / 0.011 / 0.055), shape disc "
             "0.054 / 0.084 / 0.147 (0.064 / 0.106 / 0.144); one draw's disc_gbm varies by several hundredths (seed 0's "
             "model, four draws each: 0.004-0.047 with the groups, 0.010-0.039 without, means 0.018 and 0.030). "
             "electricity24-phases-raw 0.034 / 0.046 / 0.011 (201d730: 0.009 / 0.034 / 0.066), shape disc 0.107 / 0.043 "
             "/ 0.032 (0.108 / 0.059 / 0.066); its dcr ratio stays 0.81-0.95, as before.",
             "  - 1f4f7b7: decoded values settle inside their bins where the data is smoother than values drawn each on "
             "its own, and point masses' own repeats count towards the held share (docs/codec.md, \"Series smoother "
             "than their bins\"). It changes the draws of sets with a settling channel or point masses: of the rows, "
             "suite-fertility (rerun, seeds 0, 1, 2, one job at a time: disc_gbm 0.029 / 0.028 / 0.032 against 0.027 / "
             "0.024 / 0.036 at 6153708, shape disc 0.082 / 0.100 / 0.119 against 0.108 / 0.069 / 0.117), stocks24 "
             "(rerun, seeds 0, 1, 2, one job at a time; code column f728b47+changes: a docstring edit over the code of "
             "1f4f7b7: disc_gru 0.020 / 0.047 / 0.038 against 0.046 / 0.030 / 0.032, "
             "disc_gbm 0.096 / 0.079 / 0.077 against 0.103 / 0.099 / 0.065; seed 1's time limit trained 2 models of 6, "
             "the others 4) and energy24 (not rerun: its rows predate it). One 600 s fit each (seed 0), scored settled "
             "and as drawn before on the same model: energy24 disc_gru 0.131 against 0.128 (one draw), stocks24 0.036 "
             "/ 0.040 against 0.036 / 0.040 (two draws). Electricity, ETTh1 and ItalyPowerDemand decode as before.",
             "  - 156e9e9: on a CPU the step model's value layer and its log-softmax run fused, a block of rows at a "
             "time, where a batch holds at least 4.2 million logits (docs/long-series.md, \"What a training step "
             "computes\"; the same losses, energy24's steps 12-17 % faster: the Long series section). Of the rows, "
             "energy24's `tsynth` fits change (more epochs in their 600 s): rerun (seeds 0, 1, 2, one job at a time, "
             "idle machine), disc_gru 0.126 / 0.137 / 0.142, mean 0.135 (8aab1a4: 0.135 / 0.139 / 0.129, mean 0.134), "
             "2 models of 7 epochs each (6 before), validation loss 1.698-1.734 (1.740-1.759), mean_err 0.004-0.005. "
             "Lower validation loss, the same disc_gru: the remaining gap to 0.12 is not training time. These rows "
             "also carry 1f4f7b7's settled decoding.",
             "  - 2883996: electricity100's `tsynth` rows rerun to time the draw on today's code (no change since "
             "227bc75 reaches its token model or its decoding; seeds 0, 1, 2, one job at a time, idle machine): "
             "disc_gbm 0.053 / 0.014 / 0.058 (0d57ca4+changes: 0.054 / 0.023 / 0.077), shape disc 0.083-0.091, fits "
             "120-122 s, 1,000 samples 11.1 / 12.1 / 11.6 s (12.2-13.5 s; the 10 s target is missed on this machine, "
             "where the draw is bound by reading the members' key/value caches: docs/model-and-training.md#sampling).",
             "  - aadb8b0 / 64ee89f: under DP the per-step (cycle) profile is released in the Fourier basis of every "
             "frequency and denoised, and a token model draws from a tilt toward it where its draws stray from it by "
             "more than twice the release's error (docs/privacy.md). Rerun (seeds 0, 1, 2, one job at a time): "
             "electricity100 `tsynth-dp-eps8-step` (aadb8b0; no tilt on step models) mean_err 0.065 / 0.071 / 0.079 "
             "(ce06d22: 0.093-0.105), pct_err 0.154-0.161 (0.167-0.175), disc_gbm 0.490-0.494 (0.494); "
             "`tsynth-dp-eps8-noprior` (no tilt taken: the draws within the release's error) mean_err 0.089 / 0.075 "
             "/ 0.082 (adeff1d: 0.106-0.115), pct_err 0.157-0.171 (0.347-0.475), disc_gbm 0.487-0.491 (0.487-0.493); "
             "italy24 `tsynth-dp-eps8` (tilted) mean_err 0.012 / 0.012 / 0.021 (8bb3392: 0.046-0.057; the DP "
             "Gaussian 0.014-0.017), pct_err 0.037-0.042 (0.074-0.085), disc_gbm 0.432 / 0.414 / 0.414 (0.415-0.427), "
             "877 series drawn in 0.9-1.0 s (0.2 s); `tsynth-dp-eps8-noprior` (tilted) mean_err 0.029-0.034 "
             "(0.094-0.104), pct_err 0.114-0.121 (0.130-0.137), disc_gbm 0.485-0.488 (0.493-0.494). electricity100's "
             "default DP rows (the load prior: no profile, no tilt) do not change; stocks24's DP rows (1,550-1,978 s "
             "a fit) were not rerun: its release changes little (the profile's error on its training items, ten "
             "noise draws: 0.0039 denoised against 0.0035 low-pass) and its draws were not checked for a tilt.",
             "  - 592ebac: a token model's ensemble draws each series from one member (even shares, random order) "
             "instead of every token from the mean of 12 pooled members (docs/model-and-training.md#ensemble; step "
             "models keep the mean at every channel). electricity100 `tsynth` rerun (seeds 0, 1, 2, one job at a time, "
             "idle machine): disc_gbm 0.046 / 0.025 / 0.013, mean 0.028 (2883996: 0.053 / 0.014 / 0.058, mean 0.042), "
             "shape disc 0.070 / 0.048 / 0.032 (0.083-0.091), cycle autocorrelation error 0.017 / 0.003 / 0.003, "
             "mean_err 0.041 / 0.041 / 0.032 (0.026-0.031; the holdout's 0.053), pct_err 0.060-0.064 (0.047-0.056; "
             "0.094), dcr_ratio 1.20-1.25, fits 120-123 s, 1,000 samples 1.62 / 1.68 / 1.63 s (11.1-12.1 s). Other "
             "sets' token-ensemble rows predate it; on the same fits (seed 0, several draws each) it scored as well or "
             "better on suite-elec-h100, suite-elec-100c, electricity-raw and italy24 (the table in the doc).",
             "  - 35ab662: electricity-raw `tsynth` rerun with the series mixture (seeds 0, 1, 2, one job at a time): "
             "disc_gbm 0.044 / 0.078 / "
             "0.063, mean 0.062 (9a280ac: 0.043 / 0.038 / 0.044; the holdout's 0.055), shape disc 0.093 / 0.073 / 0.068, "
             "mean 0.078 (0.054 / 0.084 / 0.147, mean 0.095; the holdout's 0.033), cycle autocorrelation error 0.015-"
             "0.022 (0.025-0.027), dcr_ratio 0.82 / 0.92 / 0.82 (1.07 / 0.97 / 0.88), 1,000 samples 1.7-2.0 s (12.9-14.1 "
             "s). On one fit's draws the two mixtures' dcr_ratio were alike (0.85 / 0.84, eight draws each), so the fits "
             "and draws move it as much.",
             "- suite-elec-h100 (hours 100-200: Friday 05:00 to Tuesday 09:00, across the clock change of 2014-03-30, "
             "its step 45, where 95 % of the training clients read their minimum, about 0 kW). Three default fits at "
             "0ffd891 (one-off checks): disc_gbm on all steps 0.271 / 0.255 / 0.253, without steps 44-46 0.139 / 0.115 "
             "/ 0.142 (the holdout 0.021 and 0.014); the samples put their minimum there in 68-73 % of series (the "
             "load prior's lowest bin held every value below -1.97, down to -12: what 227bc75 cuts). The lag-24 "
             "autocorrelation error does not come from that hour (0.026-0.041 with it interpolated away, the holdout "
             "0.013): Sunday-to-Monday correlation at lag 24 is 0.744 in the data and 0.78-0.81 in the samples, whose "
             "weekend-to-weekday change is too weak.",
             "- Peers' settings: `benchmarks/peers.py`. DGAN's large mean errors are its own output, not a scaling "
             "slip in the wrapper (its series come back through gretel's own inverse scaling): on electricity100 "
             "with gretel's defaults the generated mean was -2.0 / +0.6 after 200 / 2,000 epochs (real -0.06; "
             "scratch check, seed 0): the GAN is unstable with a few hundred series.", ""]
    lines += ["## Published figures (TimeGAN protocol): quoted from the papers, not measured here", "",
              "As quoted in `../shared/reference/baselines.md`. The papers train on all windows and score on the "
              "same windows, so their figures are not exactly comparable with the stocks24 / energy24 rows above "
              "(80/20 split, scored against the holdout).", "",
              "| source | figure | stocks | energy |", "|---|---|---|---|",
              *[f"| {src} | {fig} | {s:.3f} | {e:.3f} |" for src, fig, s, e in PUBLISHED], ""]
    return "\n".join(lines)


def _summary(rows: list[dict]) -> list[str]:
    """Per generator: the mean over seeds of the SUMMARY figures, with the min-max range."""
    gens = sorted({r["generator"] for r in rows if r.get("status") != "unavailable"})
    cols = [k for k in SUMMARY if any(r.get(k) is not None for r in rows)]
    if not gens or all(sum(r["generator"] == g for r in rows) < 2 for g in gens):
        return []
    out = ["Across seeds: mean (min-max).", "", "| generator | seeds | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 2) + "|"]
    for g in gens:
        mine = [r for r in rows if r["generator"] == g]
        cells = []
        for k in cols:
            v = [r[k] for r in mine if r.get(k) is not None]
            digits = 1 if k == "fit_s" else 3
            cells.append("-" if not v else f"{_fmt(sum(v) / len(v), digits)} ({_fmt(min(v), digits)}-{_fmt(max(v), digits)})"
                         if len(v) > 1 else _fmt(v[0], digits))
        out.append(f"| {g} | {len(mine)} | " + " | ".join(cells) + " |")
    return out + [""]


def _report(task: str, row: dict) -> None:
    if row.get("status") == "unavailable":
        print(f"{task:18s} {row['generator']:10s} unavailable: {row['reason']}", flush=True)
        return
    figures = " ".join(f"{k} {_fmt(row[k])}" for k in ("disc_gbm", "mean_err", "pct_err", "dcr_ratio", "exact_copies",
                                                       *TIMEGAN) if k in row)
    print(f"{task:18s} {row['generator']:10s} seed {row['seed']}: {figures} fit {row['fit_s']:.1f}s "
          f"sample {row['sample_s']:.1f}s", flush=True)


def main(argv=None) -> int:
    from .generators import GENERATORS
    from .tasks import SUITE, TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tasks", nargs="*", help=f"tasks (default: all): {', '.join(TASKS)}")
    ap.add_argument("--generators", default="holdout,copy,gaussian,tsynth", help=f"comma-separated: {', '.join(GENERATORS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--smoke", action="store_true", help="tiny budget, every run in one process: checks "
                    "that everything runs; figures (peak memory included) meaningless")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (elsewhere than the default, its "
                    "BENCHMARKS.md is written there, not over the repository's)")
    ap.add_argument("--render", action="store_true", help="only rebuild BENCHMARKS.md from the results files")
    ap.add_argument("--suite", action="store_true", help=f"the generalisation suite's sets: {', '.join(SUITE)}")
    args = ap.parse_args(argv)
    if args.suite and args.tasks:
        ap.error("give task names or --suite, not both")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [] if args.render else list(SUITE) if args.suite else args.tasks or list(TASKS)
    unknown_tasks = [t for t in tasks if t not in TASKS and t not in SUITE]
    if unknown_tasks:
        ap.error(f"unknown task(s) {', '.join(unknown_tasks)}; choose from {', '.join(TASKS | SUITE)}")
    seeds = [int(s) for s in args.seeds.split(",")] if not args.smoke else [0]
    generators = args.generators.split(",")
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise SystemExit(f"unknown generator(s) {', '.join(unknown)}; choose from {', '.join(GENERATORS)}")
    every = [(task, [(gen, seed) for gen in generators for seed in (seeds if gen not in ("holdout", "copy") else [0])])
             for task in tasks]
    # smoke: every task in one process; else one process per job, a peer missing on a task reported once there
    unavailable: set[tuple[str, str]] = set()
    written: dict[str, Path] = {}
    for groups in ([every] if args.smoke else [[(task, [job])] for task, jobs in every for job in jobs]):
        groups = [(task, [job for job in jobs if (task, job[0]) not in unavailable]) for task, jobs in groups]
        groups = [(task, jobs) for task, jobs in groups if jobs]
        if not groups:
            continue
        for task, row in run_jobs(groups, args.smoke):
            _report(task, row)
            written[task] = save(task, [row], args.smoke, out_dir)   # each row at once: an interrupted run keeps them
            if row.get("status") == "unavailable":
                unavailable.add((task, row["generator"]))
    for path in written.values():
        print(f"wrote {path}")
    if not args.smoke:
        from tsynth.data import atomic_write

        # the repository's table from its own results; another --out directory gets its own table
        table = HERE.parent / "BENCHMARKS.md" if out_dir.resolve() == RESULTS.resolve() else out_dir / "BENCHMARKS.md"
        atomic_write(table, lambda f: Path(f).write_text(render_markdown(out_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
