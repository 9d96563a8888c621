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

from ..data import SeriesSet, atomic_write
from .fidelity import flatten, nearest, prepare, step_stats, subsample

MAX_CHANNELS = 4      # figures show at most this many channels
N_OVERLAYS = 6        # closest-record overlays
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
    prep = prepare(train, synthetic, holdout)
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
        parts.append(f'<figure><h3>{html.escape(fig_title)}</h3><img alt="{html.escape(fig_title)}" '
                     f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')

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
