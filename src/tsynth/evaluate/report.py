"""The evaluation report: one self-contained HTML page (inline CSS, figures as embedded PNGs).

:func:`verdict_rows` turns the figures into the verdict table (figure, value, ideal, the holdout's
value as yardstick, pass/warn and the rule in words); :func:`render_report` writes the page.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SeriesSet, atomic_write
from .fidelity import flatten, nearest, prepare, step_stats, subsample
from .longseries import calendar, day_grid

MAX_CHANNELS = 4      # figures show at most this many channels
N_OVERLAYS = 6        # closest-record overlays
HEATMAP_DAYS = 3      # day x hour heat maps: series of at least this many days
MAX_POINTS = 1000     # scatter and embedding: series drawn from each set
DPI = 80
COLORS = {"real": "#1f77b4", "synthetic": "#d62728", "holdout": "#2ca02c"}


# ---------------------------------------------------------------------- verdict
def _row(section, figure, value, ideal, yardstick, test, rule) -> dict:
    """A verdict row; ``test(value)`` says pass (True) or warn (False); no test or no value: "info"."""
    status = "info" if value is None or test is None else ("pass" if test(value) else "warn")
    return {"section": section, "figure": figure, "value": value, "ideal": ideal, "holdout": yardstick,
            "status": status, "rule": rule}


def verdict_rows(fid: dict, priv: dict, util: dict, val: dict, ref: dict) -> list[dict]:
    """The verdict table: one row per headline figure with its ideal, the holdout's own value and a
    pass/warn mark ("info" where no rule applies, e.g. without a holdout)."""
    rows = []
    h = ref.get("disc_gbm")
    limit = 0.10 if h is None else max(0.10, h + 0.05)
    rows.append(_row("fidelity", "discriminative score disc_gbm |AUC-0.5|", fid["disc_gbm"], 0.0, h,
                     lambda v: v <= limit, "pass when at most 0.10 or within 0.05 of the holdout's"))
    cc, cc_ref = fid["cross_lag_corr"], ref.get("cross_lag_corr", {})
    errors = [("per-step mean error", fid["mean_err"], ref.get("mean_err")),
              ("per-step 10/50/90th percentile error", fid["pct_err"], ref.get("pct_err")),
              ("marginal Wasserstein distance", fid["wasserstein"], ref.get("wasserstein")),
              ("autocorrelation error", fid["acf_err"], ref.get("acf_err")),
              ("step-to-step correlation error", fid["step_corr_err"], ref.get("step_corr_err")),
              (f"step 0 vs step {cc['lag']} correlation error", cc["err"], cc_ref.get("err"))]
    if "channel_corr_err" in fid:
        errors.append(("cross-channel correlation error", fid["channel_corr_err"], ref.get("channel_corr_err")))
    for name, v, hv in errors:
        rows.append(_row("fidelity", name, v, 0.0, hv, None if hv is None else lambda v, hv=hv: v <= 1.2 * hv + 1e-12,
                         "pass when at most 1.2 x the holdout's"))
    rows += _series_rows(fid, ref)
    for key in ("precision", "recall"):
        hv = ref.get("coverage", {}).get(key)
        rows.append(_row("fidelity", f"coverage {key} (k-NN manifold)", fid["coverage"][key], 1.0, hv,
                         None if hv is None else lambda v, hv=hv: v >= hv - 0.1, "pass when at least the holdout's minus 0.1"))
    rows.append(_row("fidelity", "synthetic series left out (NaN/inf)", fid["excluded_nonfinite"], 0, None,
                     lambda v: v == 0, "pass when none"))

    has_holdout = "dcr_holdout" in priv
    rows.append(_row("privacy", "distance to closest record ratio (synthetic / holdout)", priv.get("dcr_ratio"), 1.0,
                     1.0 if has_holdout else None, lambda v: v >= 0.95, "pass when at least 0.95 (near 0 = copies)"))
    rows.append(_row("privacy", "share of synthetic closer to train than to holdout", priv.get("share_closer_to_train"),
                     0.5, 0.5 if has_holdout else None, lambda v: v <= 0.6, "pass when at most 0.6 (size-adjusted)"))
    h = priv.get("holdout_exact_copies_share")
    rows.append(_row("privacy", "exact copies of training series (share)", priv["exact_copies_share"], 0.0, h,
                     lambda v: v <= (h or 0.0), "pass when no more than the holdout's (0 without one)"))
    h2 = priv.get("holdout_near_copies_share")
    rows.append(_row("privacy", "near copies of training series (share)", priv["near_copies_share"], 0.0, h2,
                     lambda v: v <= max(0.02, 2 * (h2 or 0.0)), "pass when at most 2% or 2 x the holdout's"))
    rows.append(_row("privacy", "membership inference AUC (distance attack)", priv.get("mia_auc"), 0.5,
                     0.5 if has_holdout else None,
                     lambda v: v <= 0.55, "pass when at most 0.55"))

    f = util.get("forecast")
    if f:
        rows.append(_row("utility", "next-step MAE, trained on synthetic (TSTR)", f["tstr_mae"], f["trtr_mae"], f["trtr_mae"],
                         lambda v: v <= 1.1 * f["trtr_mae"], "pass when at most 1.1 x the MAE of the model trained on real"))
    c = util.get("classification")
    if c:
        rows.append(_row("utility", f"'{c['label']}' accuracy, trained on synthetic (TSTR)", c["tstr_acc"], c["trtr_acc"],
                         c["trtr_acc"], lambda v: v >= c["trtr_acc"] - 0.05,
                         "pass when at least the accuracy of the model trained on real minus 0.05"))
    for key, name, ideal, test, rule in (
            ("parsed_share", "answers parsed", 1.0, lambda v: v >= 0.95, "pass when at least 0.95"),
            ("right_length_share", "answers of the right length", 1.0, lambda v: v >= 0.95, "pass when at least 0.95"),
            ("retried_share", "answers needing a retry", 0.0, None, "for information"),
            ("dropped_share", "answers dropped", 0.0, lambda v: v <= 0.05, "pass when at most 0.05")):
        if key in val:
            rows.append(_row("validity", name, val[key], ideal, None, test, rule))
    return rows


def _series_rows(fid: dict, ref: dict) -> list[dict]:
    """Verdict rows of the shape-level score, the long-series figures and the gaps."""
    rows = []
    err_rule = "pass when at most 1.2 x the holdout's"

    def err_row(name, v, hv):
        rows.append(_row("fidelity", name, v, 0.0, hv, None if hv is None else lambda v, hv=hv: v <= 1.2 * hv + 1e-12,
                         err_rule))

    def disc_row(name, v, hv):
        lim = 0.10 if hv is None else max(0.10, hv + 0.05)
        rows.append(_row("fidelity", name, v, 0.0, hv, lambda v: v <= lim, "pass when at most 0.10 or within 0.05 of the holdout's"))

    shape, rshape = fid.get("shape"), ref.get("shape", {})
    if shape:
        disc_row("shape: disc_gbm with each series standardised", shape["disc_gbm"], rshape.get("disc_gbm"))
        if shape.get("cycle_lag") is not None:
            err_row(f"autocorrelation error at lag {shape['cycle_lag']}", shape["acf_err_cycle"],
                    rshape.get("acf_err_cycle"))
    long, rlong = fid.get("long"), ref.get("long", {})
    if long:
        if "subwindow" in long:
            disc_row(f"disc_gbm on sub-windows of {long['subwindow']['steps']} steps", long["subwindow"]["disc_gbm"],
                     rlong.get("subwindow", {}).get("disc_gbm"))
        for key, name in (("hour_of_day", "hour-of-day profile error"), ("day_of_week", "day-of-week profile error")):
            if key in long.get("profiles", {}):
                err_row(name + " (standardised)", long["profiles"][key]["err"],
                        rlong.get("profiles", {}).get(key, {}).get("err"))
        for key, name in (("day", "daily totals: Wasserstein distance"), ("week", "weekly totals: Wasserstein distance")):
            if key in long["totals"]:
                err_row(name + " (standardised)", long["totals"][key]["wasserstein"],
                        rlong.get("totals", {}).get(key, {}).get("wasserstein"))
        st, rst = long["stability"], rlong.get("stability", {})
        err_row(f"level drift error, first vs last {st['window']} steps", st["level_drift_err"], rst.get("level_drift_err"))
        err_row(f"spread drift error, first vs last {st['window']} steps", st["std_drift_err"], rst.get("std_drift_err"))
    gaps = fid.get("gap_share")
    if gaps and (gaps["real"] > 0 or gaps["synthetic"] > 0):
        rows.append(_row("fidelity", "share of missing values (gaps)", gaps["synthetic"], gaps["real"],
                         ref.get("gap_share", {}).get("synthetic"), None, "for information: the real share is the ideal"))
    return rows


# ---------------------------------------------------------------------- figures
def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _axes(n: int, width: float = 4.0, height: float = 2.8):
    import matplotlib.pyplot as plt

    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _figures(ev, train: np.ndarray, syn: np.ndarray, holdout: np.ndarray | None, channels: list[str]) -> list[tuple[str, str, str]]:
    """(title, caption, base64 PNG) of every figure."""
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.RandomState(ev.summary["seed"])
    n_ch = min(len(channels), MAX_CHANNELS)
    shown = f" (first {n_ch} of {len(channels)} channels)" if len(channels) > n_ch else ""
    steps = np.arange(train.shape[1])
    figs = []

    pick = subsample(len(syn), N_OVERLAYS, rng)
    dist, idx = nearest(syn[pick], train)
    fig, axes = _axes(len(pick))
    for ax, i, j, d in zip(axes, pick, idx, dist):
        ax.plot(steps, train[j, :, 0], color=COLORS["real"], lw=1.2, label="closest train series")
        ax.plot(steps, syn[i, :, 0], color=COLORS["synthetic"], lw=1.0, ls="--", label="synthetic")
        ax.set_title(f"synthetic #{i}: distance {d:.3g}", fontsize=9)
    axes[0].legend(fontsize=7)
    figs.append(("Closest-record overlays", f"{len(pick)} synthetic series (channel '{channels[0]}') over their "
                 "closest training series; lines that coincide are copies.", _png(fig)))

    sets = [("real", train), ("synthetic", syn)] + ([("holdout", holdout)] if holdout is not None else [])
    stats = {name: step_stats(x) for name, x in sets}
    fig, axes = _axes(n_ch)
    for c, ax in enumerate(axes):
        for name, (m, _) in stats.items():
            ax.plot(steps, m[:, c], color=COLORS[name], label=name)
        ax.set_title(f"mean per step: {channels[c]}", fontsize=9)
    axes[0].legend(fontsize=7)
    figs.append(("Means", "Mean across series at every step: real train, synthetic and holdout" + shown + ".", _png(fig)))

    fig, axes = _axes(n_ch)
    for c, ax in enumerate(axes):
        for name in ("real", "synthetic"):
            q = stats[name][1]
            ax.fill_between(steps, q[0, :, c], q[2, :, c], color=COLORS[name], alpha=0.2)
            ax.plot(steps, q[1, :, c], color=COLORS[name], label=f"{name} median")
        ax.set_title(f"10/50/90th percentiles: {channels[c]}", fontsize=9)
    axes[0].legend(fontsize=7)
    figs.append(("Percentile bands", "Median and 10-90th percentile band across series at every step" + shown + ".", _png(fig)))

    lag = ev.fidelity["cross_lag_corr"]["lag"]
    fig, axes = _axes(n_ch, 3.6, 3.4)
    for c, ax in enumerate(axes):
        for name, x in (("real", train), ("synthetic", syn)):
            s = x[subsample(len(x), MAX_POINTS, rng)]
            ax.scatter(s[:, 0, c], s[:, lag, c], s=6, alpha=0.4, color=COLORS[name], label=name)
        ax.set_xlabel("step 0", fontsize=8)
        ax.set_ylabel(f"step {lag}", fontsize=8)
        ax.set_title(channels[c], fontsize=9)
    axes[0].legend(fontsize=7)
    cc = ev.fidelity["cross_lag_corr"]
    figs.append((f"Step 0 vs step {lag}", f"Value at step 0 against step {lag} (hour 0 vs hour 24 for hourly data); "
                 f"correlation real {_fmt(cc['real'][0])}, synthetic {_fmt(cc['synthetic'][0])} for '{channels[0]}'.", _png(fig)))

    curves = ev.fidelity["acf_curves"]
    fig, axes = _axes(n_ch)
    for c, ax in enumerate(axes):
        ax.plot(curves["lags"], curves["real"][c], color=COLORS["real"], label="real")
        ax.plot(curves["lags"], curves["synthetic"][c], color=COLORS["synthetic"], label="synthetic")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"autocorrelation: {channels[c]}", fontsize=9)
    axes[0].legend(fontsize=7)
    figs.append(("Autocorrelation", "Mean autocorrelation of the series by lag" + shown + ".", _png(fig)))

    fig, axes = _axes(n_ch)
    for c, ax in enumerate(axes):
        lo, hi = np.percentile(np.r_[train[:, :, c].ravel(), syn[:, :, c].ravel()], [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        for name, x in (("real", train), ("synthetic", syn)):
            ax.hist(x[:, :, c].ravel(), bins=bins, density=True, histtype="step", color=COLORS[name], label=name)
        ax.set_title(f"values: {channels[c]}", fontsize=9)
    axes[0].legend(fontsize=7)
    figs.append(("Marginal distributions", "Histogram of all values per channel (0.5-99.5th percentile range)" + shown + ".", _png(fig)))

    a = flatten(train[subsample(len(train), MAX_POINTS, rng)])
    b = flatten(syn[subsample(len(syn), MAX_POINTS, rng)])
    mu, sd = a.mean(axis=0), a.std(axis=0)
    sd[sd == 0] = 1.0
    _, _, vt = np.linalg.svd((a - mu) / sd, full_matrices=False)
    fig, axes = _axes(1, 5.0, 4.2)
    for name, x in (("real", a), ("synthetic", b)):
        e = ((x - mu) / sd) @ vt[:2].T
        axes[0].scatter(e[:, 0], e[:, 1], s=6, alpha=0.4, color=COLORS[name], label=name)
    axes[0].set_xlabel("PC 1")
    axes[0].set_ylabel("PC 2")
    axes[0].legend(fontsize=7)
    figs.append(("2-D embedding", "Real and synthetic series projected on the first two principal components of the "
                 "standardised real series; a synthetic cloud that covers the real one without leaving it is ideal.", _png(fig)))
    return figs


def _long_figures(ev, prep, rng: np.random.RandomState) -> list[tuple[str, str, str]]:
    """The long-series figures: day x hour heat maps of one real and one synthetic series (sub-daily
    data of at least HEATMAP_DAYS days) and the hour-of-day / day-of-week profiles."""
    import matplotlib

    matplotlib.use("Agg")
    long = ev.fidelity.get("long")
    if not long:
        return []
    cal = calendar(long["freq"])
    channels = prep.channels
    figs = []
    length = prep.train.shape[1]
    if cal.per_day and length >= HEATMAP_DAYS * cal.per_day:
        i, j = int(rng.randint(len(prep.train))), int(rng.randint(len(prep.synthetic)))
        starts = [None if s is None else int(s[k]) for s, k in ((prep.starts.get("train"), i),
                                                                 (prep.starts.get("synthetic"), j))]
        if starts[1] is None and long.get("assumed_start"):
            starts[1] = int(pd.Timestamp(long["assumed_start"]).value)

        def series(name, k):      # channel 0 of series k with its gaps as NaN
            x = getattr(prep, name)[k, :, 0].copy()
            mask = prep.gaps.get(name)
            if mask is not None:
                x[mask[k, :, 0]] = np.nan
            return x

        grids = [day_grid(series(name, k), s, cal) for name, k, s in (("train", i, starts[0]), ("synthetic", j, starts[1]))]
        both = np.concatenate([g.ravel() for g in grids])
        lo, hi = np.nanpercentile(both, [1, 99])
        fig, axes = _axes(2, 5.0, max(2.8, min(9.0, 0.03 * len(grids[0]) + 1.5)))
        for ax, grid, what in zip(axes, grids, (f"real (train series #{i})", f"synthetic #{j}")):
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1)
            ticks = [h for h in range(0, 24, 6)]
            ax.set_xticks([h * cal.per_day / 24 - 0.5 for h in ticks], [str(h) for h in ticks])
            ax.set_xlabel("hour of day", fontsize=8)
            ax.set_ylabel("day", fontsize=8)
            ax.set_title(what, fontsize=9)
        fig.colorbar(im, ax=list(axes), shrink=0.8)
        rows = "calendar days from midnight" if long["calendar"] else "days from the series' start"
        figs.append(("Day x hour heat maps", f"One real and one synthetic series (channel '{channels[0]}'), one row per day "
                     f"({rows}), one column per step of the day, colour = value on a shared scale (1st-99th percentile); "
                     "a daily rhythm shows as vertical bands, a drifting level as colour changing down the rows, "
                     "gaps as blank cells.", _png(fig)))
    prof, rprof = long.get("profiles", {}), ev.holdout_reference.get("long", {}).get("profiles", {})
    kinds = [k for k in ("hour_of_day", "day_of_week") if k in prof]
    if kinds:
        import matplotlib.pyplot as plt

        n_ch = min(len(channels), MAX_CHANNELS)
        fig, axes = plt.subplots(len(kinds), n_ch, figsize=(4.0 * n_ch, 2.8 * len(kinds)), squeeze=False)
        for r, kind in enumerate(kinds):
            x = np.arange(len(prof[kind]["bins"]))
            for c in range(n_ch):
                ax = axes[r, c]
                ax.plot(x, prof[kind]["real"][c], color=COLORS["real"], marker=".", label="real")
                ax.plot(x, prof[kind]["synthetic"][c], color=COLORS["synthetic"], marker=".", label="synthetic")
                if kind in rprof:
                    ax.plot(x, rprof[kind]["synthetic"][c], color=COLORS["holdout"], marker=".", label="holdout")
                if kind == "day_of_week":
                    ax.set_xticks(x, prof[kind]["bins"], fontsize=7)
                ax.set_title(f"{kind.replace('_', ' ')}: {channels[c]} (error {_fmt(prof[kind]['err_by_channel'][c])})",
                             fontsize=9)
        axes[0, 0].legend(fontsize=7)
        fig.subplots_adjust(hspace=0.5)
        figs.append(("Calendar profiles", "Mean value by " + " and by ".join(k.replace("_", " ") for k in kinds)
                     + ": real train, synthetic and holdout; the error is the mean absolute difference in the real "
                     "data's standard deviations.", _png(fig)))
    return figs


def _series_table(ev) -> str:
    """The shape-level and long-series figures, synthetic and holdout side by side."""
    fid, ref = ev.fidelity, ev.holdout_reference
    rows = []

    def add(name, path):
        def get(d):
            for k in path:
                if not isinstance(d, dict) or k not in d:
                    return None
                d = d[k]
            return d
        v = get(fid)
        if v is not None or get(ref) is not None:
            rows.append([name, _fmt(v), _fmt(get(ref))])

    add("shape: disc_gbm, each series standardised", ("shape", "disc_gbm"))
    for lag in fid["shape"]["acf"]["err"]:
        add(f"autocorrelation error at lag {lag}", ("shape", "acf", "err", lag))
    add("hour-of-day profile error, standardised series", ("shape", "hour_of_day_profile_err"))
    long = fid.get("long")
    if long:
        if "subwindow" in long:
            add(f"disc_gbm on sub-windows of {long['subwindow']['steps']} steps", ("long", "subwindow", "disc_gbm"))
        add("hour-of-day profile error", ("long", "profiles", "hour_of_day", "err"))
        add("day-of-week profile error", ("long", "profiles", "day_of_week", "err"))
        for span in ("day", "week"):
            add(f"{span} totals: Wasserstein (standardised)", ("long", "totals", span, "wasserstein"))
            add(f"{span} totals: Kolmogorov-Smirnov", ("long", "totals", span, "ks"))
        w = long["stability"]["window"]
        for key, words in (("level_drift_mean", "level drift"), ("std_drift_mean", "spread drift")):
            add(f"mean {words}, last vs first {w} steps: synthetic (real {_fmt(long['stability']['real'][key])})",
                ("long", "stability", "synthetic", key))
        add("level drift error", ("long", "stability", "level_drift_err"))
        add("spread drift error", ("long", "stability", "std_drift_err"))
    add("share of missing values (gaps)", ("gap_share", "synthetic"))
    return _table(["figure", "synthetic", "holdout scored the same way"], rows)


TELLS_WORDS = {
    "values_sorted": "each series' values in ascending order (its own distribution: tails, dips, clipping)",
    "moments": "mean, standard deviation, minimum, quartiles, maximum",
    "autocorrelation": "autocorrelation at lags 1, 2 and half, one and two cycles",
    "roughness": "mean absolute first and second differences (relative to the spread), share of held values",
    "cycle_profile": "the series' own mean cycle (its mean day)",
    "cycle_deviation": "each cycle minus the series' mean cycle (how its days differ)",
}


def _tells_html(ev) -> list[str]:
    """The per-feature-family discriminative scores (:mod:`.tells`), synthetic and holdout side by side."""
    tells = ev.fidelity.get("tells")
    if not tells or not tells["families"]:
        return []
    ref = ev.holdout_reference.get("tells", {}).get("families", {})
    rows = [[f"{name}: {TELLS_WORDS[name]}", str(f["features"]), _fmt(f["disc_gbm"]),
             _fmt(ref.get(name, {}).get("disc_gbm"))] for name, f in tells["families"].items()]
    words = [f"{name}: {why}" for name, why in tells["left_out"].items()]
    return ["<h3>What tells the series apart</h3><p class='note'>The discriminative score (|AUC - 0.5|; 0: the "
            "classifier cannot tell them apart) on a few numbers per series, one family of features at a time. A "
            "family far above the holdout's figure names what the generator misses; the most telling here: "
            f"<b>{html.escape(str(tells['most_telling']))}</b>."
            + (f" Left out: {html.escape('; '.join(words))}." if words else "") + "</p>",
            _table(["features per series", "count", "synthetic", "holdout scored the same way"], rows,
                   [["", "num", "num", "num"] for _ in rows])]


# ---------------------------------------------------------------------- HTML
CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;padding:0 1em}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.92em}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#17732e;font-weight:600}
.warn{color:#b3261e;font-weight:600}.info{color:#666}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}
img{max-width:100%}.note{color:#555}"""


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(v)
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "—" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def _figure_html(title: str, caption: str, png: str) -> str:
    return (f'<figure><h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for i, r in enumerate(rows):
        cls = classes[i] if classes else [""] * len(r)
        out.append("<tr>" + "".join(f'<td class="{c}">{html.escape(str(v))}</td>' if c else f"<td>{html.escape(str(v))}</td>"
                                    for v, c in zip(r, cls)) + "</tr>")
    return "".join(out) + "</table>"


def _privacy_words(priv: dict) -> list[str]:
    d = priv["dcr_synthetic"]["median"]
    words = []
    if "dcr_ratio" in priv:
        words.append(f"The typical synthetic series lies {_fmt(d)} from its closest training series; fresh real series "
                     f"(the holdout) lie {_fmt(priv['dcr_holdout']['median'])} from theirs, a ratio of "
                     f"{_fmt(priv['dcr_ratio'])}. About 1 means the generator stays as far from its training data as new "
                     "real data does; near 0 means it reproduces training series.")
    if "share_closer_to_train" in priv:
        words.append(f"{priv['share_closer_to_train']:.1%} of synthetic series are closer to train than to the holdout "
                     f"(adjusted for the sizes of the two sets; unadjusted {priv['share_closer_to_train_raw']:.1%}, "
                     f"{priv['share_closer_expected_raw']:.1%} expected). 50% is ideal; far above it, the generator "
                     "has memorised its training series.")
    words.append(f"{priv['exact_copies']} synthetic series ({priv['exact_copies_share']:.1%}) are exact copies of a "
                 f"training series; {priv['near_copies']} ({priv['near_copies_share']:.1%}) lie within "
                 f"{_fmt(priv['near_copy_threshold'])} of one (the {priv['near_copy_threshold_source']}).")
    if "mia_auc" in priv:
        words.append(f"An attacker holding the synthetic data who guesses that a real series was in the training set "
                     f"when a synthetic series lies close to it reaches an AUC of {_fmt(priv['mia_auc'])} "
                     "(0.5 = no better than guessing, 1 = membership fully revealed).")
    else:
        words.append("Without a holdout there is no fresh real data to compare with: the distance ratio, the share "
                     "closer to train and the membership attack are not computed.")
    return words


def render_report(evaluation, train: SeriesSet, synthetic: SeriesSet, holdout: SeriesSet | None,
                  path: str | os.PathLike, title: str | None = None, extra: dict | None = None) -> Path:
    """Write the report of ``evaluation`` (computed on these sets) to ``path`` as one self-contained
    HTML file: verdict table, figures, privacy in words, utility, validity and what was not computed."""
    ev = evaluation
    prep = prepare(train, synthetic, holdout, ev.summary.get("freq"))
    title = title or "tsynth evaluation report"
    s = ev.summary
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    held = f", {s['n_holdout']} holdout" if s["n_holdout"] is not None else ", no holdout"
    parts.append(f"<p class='note'>{s['n_train']} train, {s['n_synthetic_used']} of {s['n_synthetic']} synthetic series "
                 f"used{held}; length {s['length']}, channels {html.escape(', '.join(s['channels']))}; seed {s['seed']}"
                 f"{', fast mode' if s['fast'] else ''}.</p>")

    parts.append("<h2>Verdict</h2><p class='note'>Each figure, its ideal, and the holdout's own value scored the same way "
                 "(the best a generator can be expected to reach with this much data).</p>")
    rows = [[r["section"], r["figure"], _fmt(r["value"]), _fmt(r["ideal"]), _fmt(r["holdout"]), r["status"], r["rule"]]
            for r in s["verdict"]]
    classes = [["", "", "num", "num", "num", r["status"], ""] for r in s["verdict"]]
    parts.append(_table(["section", "figure", "value", "ideal", "holdout's value", "mark", "rule"], rows, classes))

    parts.append("<h2>Fidelity</h2>")
    for fig_title, caption, png in _figures(ev, prep.train, prep.synthetic, prep.holdout, prep.channels):
        parts.append(_figure_html(fig_title, caption, png))

    long = ev.fidelity.get("long")
    heading = "Series shape and long-series figures" if long else "Series shape"
    parts.append(f"<h2>{heading}</h2><p class='note'>Shape: every series standardised on its own (its level and "
                 "scale removed), so that the figures judge the rhythm alone. "
                 + ("Long series: calendar profiles, totals over days and weeks, and the drift of level and spread "
                    "from the first to the last window; errors in the real data's standard deviations." if long else
                    html.escape(ev.not_computed.get("fidelity.long", ""))) + "</p>")
    parts.append(_series_table(ev))
    for fig_title, caption, png in _long_figures(ev, prep, np.random.RandomState(ev.summary["seed"])):
        parts.append(_figure_html(fig_title, caption, png))
    parts.extend(_tells_html(ev))

    parts.append("<h2>Privacy</h2>" + "".join(f"<p>{html.escape(w)}</p>" for w in _privacy_words(ev.privacy)))

    parts.append("<h2>Utility (train on synthetic, test on real)</h2>")
    u = ev.utility
    if u.get("forecast"):
        f = u["forecast"]
        parts.append(_table(["model", "trained on synthetic (MAE)", "trained on real (MAE)", "ratio", "last value (MAE)"],
                            [[f"{f['model']}, k={f['k']}", _fmt(f["tstr_mae"]), _fmt(f["trtr_mae"]), _fmt(f["ratio"]),
                              _fmt(f["persistence_mae"])]]))
    if u.get("classification"):
        c = u["classification"]
        parts.append(_table(["label", "trained on synthetic (accuracy)", "trained on real (accuracy)", "majority class"],
                            [[c["label"], _fmt(c["tstr_acc"]), _fmt(c["trtr_acc"]), _fmt(c["majority_acc"])]]))
    if ev.validity:
        parts.append("<h2>Validity (text backends)</h2>")
        parts.append(_table(["count", "value"], [[k, _fmt(v)] for k, v in ev.validity.items()]))
    parts.append("<h2>Not computed</h2>")
    if ev.not_computed:
        parts.append("<ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                                      for k, v in ev.not_computed.items()) + "</ul>")
    else:
        parts.append("<p>Every figure was computed.</p>")
    if extra:
        parts.append("<h2>Run details</h2>" + _table(["key", "value"], [[k, _fmt(v)] for k, v in extra.items()]))
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in s["seconds"].items())
    parts.append(f"<p class='note'>Computed in {html.escape(secs)}.</p></body></html>")
    text = "".join(parts)
    return atomic_write(Path(path), lambda f: Path(f).write_text(text, encoding="utf-8"))
