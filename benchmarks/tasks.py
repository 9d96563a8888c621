"""Benchmark tasks, built exactly as ../shared/reference/baselines.md defines them.

The real data is read from ``$TSYNTH_DATA`` (default ``../shared/data`` beside the repository); it is never
copied into the repository. ``italy24`` is the bundled demo set (ItalyPowerDemand from aeon).

``SUITE`` is the generalisation suite: sets that no default is tuned on (other windows and client subsets of
the electricity files, ETTh1's loads cut into meter-like windows, and the World Bank fertility rates that
statsmodels ships), plus italy24. ``python -m benchmarks.run --suite`` runs them and ``BENCHMARKS.md`` shows
them as one table (:func:`benchmarks.summary.suite_section`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tsynth import SeriesSet
from tsynth.data import load_demo


def data_dir() -> Path:
    """``$TSYNTH_DATA`` as it is now, else ``../shared/data`` beside the repository."""
    return Path(os.environ.get("TSYNTH_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@dataclass
class Task:
    """A train/holdout pair plus what the evaluation needs to know about it."""

    name: str
    train: SeriesSet
    holdout: SeriesSet
    description: str
    label: str | None = None
    data_names: tuple[str, ...] = ()  # names the task's data goes by: a prior whose corpus mentions one is refused
    dp_value_range: tuple[float, float] | None = None  # public bounds for a DP fit (None: the default, [-5, 5])
    dp_epochs: int | None = None  # a DP fit's epochs where the default 60 would take days on this CPU (None: 60)
    horizon: int | None = None  # also draw series this long and compare their first and last weeks (long series)


ELECTRICITY_NAMES = ("electricity_hourly", "ElectricityLoadDiagrams", "LD2011_2014")


def _electricity(file: str, name: str, what: str) -> Task:
    data = SeriesSet.read(data_dir() / file).window(0, 100)
    train, holdout = data.split(0.2, seed=0)  # RandomState(0).permutation(370): 296 train, 74 holdout
    return Task(name, train, holdout, f"{what}: first 100 hours of 370 clients, clients split 296/74 by RandomState(0)",
                data_names=ELECTRICITY_NAMES)


def _electricity_whole(file: str, name: str, what: str) -> Task:
    data = SeriesSet.read(data_dir() / file)
    train, holdout = data.split(0.2, seed=0)  # the same clients as electricity100 on each side
    return Task(name, train, holdout, f"{what}: the whole 336 hours (two weeks) of 370 clients, clients split 296/74 "
                "by RandomState(0)", data_names=ELECTRICITY_NAMES,
                horizon=2000)


PHASE_WINDOW = 24


def _electricity_phases(file: str, name: str, what: str) -> Task:
    """One day of each client, starting at a random hour of its two weeks (``RandomState(7)``): short windows whose
    series start at different times of the day, as windows cut from long series at random offsets do."""
    full = SeriesSet.read(data_dir() / file)
    offsets = np.random.RandomState(7).randint(0, full.length - PHASE_WINDOW, size=len(full))
    data = SeriesSet.from_arrays([full.values[i, o:o + PHASE_WINDOW] for i, o in enumerate(offsets)], list(full.item_id),
                                 list(full.channels), freq=full.freq,
                                 start=[pd.Timestamp(t) + pd.Timedelta(hours=int(o)) for t, o in zip(full.start, offsets)])
    train, holdout = data.split(0.2, seed=0)  # the same clients as electricity100 on each side
    return Task(name, train, holdout, f"{what}: {PHASE_WINDOW} hours of each of 370 clients from a random hour of its "
                "two weeks (RandomState(7)), clients split 296/74 by RandomState(0)", data_names=ELECTRICITY_NAMES)


def _timegan(file: str, name: str, blocked: bool) -> Task:
    """TimeGAN protocol: min-max over the table, windows of 24 stride 1, RandomState(0) permutation, 80/20.

    ``blocked``: the holdout is instead every window inside the last 20% of time (no overlap with train),
    which is what privacy figures need: shuffled overlapping windows put near-copies on both sides.
    """
    df = pd.read_parquet(data_dir() / file).select_dtypes("number")
    x = df.to_numpy(dtype=np.float64)
    x = (x - x.min(0)) / (x.max(0) - x.min(0) + 1e-7)
    n_win = len(x) - 24 + 1
    windows = np.stack([x[i: i + 24] for i in range(n_win)]).astype(np.float32)
    if blocked:
        cut = int(0.8 * len(x))
        train_idx = np.arange(0, cut - 24 + 1)
        hold_idx = np.arange(cut, n_win)
    else:
        perm = np.random.RandomState(0).permutation(n_win)
        train_idx, hold_idx = perm[: int(0.8 * n_win)], perm[int(0.8 * n_win):]

    def subset(idx):
        return SeriesSet(windows[idx], np.full(len(idx), 24), [f"w{i}" for i in idx], list(df.columns))

    split = "blocked holdout: last 20% of time" if blocked else "shuffled 80/20 windows"
    names = ("stock_data", "GOOG", "Google") if "stock" in file else ("energy_data", "appliances energy")
    # the protocol's min-max scaling puts every value in [0, 1]: the public bounds a DP fit needs. energy24's
    # DP-SGD step (per-example gradients over 673-token windows) takes about 9 s on one thread, so 60 epochs of
    # 246 steps would take 36 h: its DP fit trains one epoch (the noise is calibrated for the steps taken)
    return Task(name, subset(train_idx), subset(hold_idx), f"TimeGAN protocol on {file}, {split}", data_names=names,
                dp_value_range=(0.0, 1.0), dp_epochs=1 if "energy" in file else None)


def _italy() -> Task:
    train, holdout = load_demo().split(0.2, seed=0)
    return Task("italy24", train, holdout, "ItalyPowerDemand (aeon), days split 80/20 by item", label="season",
                data_names=("ItalyPowerDemand", "Italy"))


def _electricity_part(name: str, hours: tuple[int, int], clients: int | None, seed: int) -> Task:
    """Hours ``hours`` of the z-scored electricity file, ``clients`` of the 370 (all: None) drawn with
    ``RandomState(seed)``, split 80/20 by client with ``seed``: other windows and subsets than electricity100's."""
    data = SeriesSet.read(data_dir() / "electricity_hourly_std.parquet").window(hours[0], hours[1] - hours[0])
    if clients is not None:
        data = data.subset(np.sort(np.random.RandomState(seed).permutation(len(data))[:clients]))
    train, holdout = data.split(0.2, seed=seed)
    who = f"{clients} random clients" if clients else "all 370 clients"
    return Task(name, train, holdout, f"z-scored kW: hours {hours[0]}-{hours[1]} of {who}, split 80/20 by client "
                f"(RandomState({seed}))", data_names=ELECTRICITY_NAMES)


ETT_LOADS = ("HUFL", "MUFL", "LUFL")  # ETTh1's 'useful load' columns: high, middle and low voltage
ETT_WINDOW = 100


def _etth1_meters() -> Task:
    """ETTh1's three useful-load columns cut into consecutive 100-hour windows, each window a 'meter' z-scored
    over its own values (as the recipe's series are), windows split 80/20 with RandomState(0)."""
    df = pd.read_parquet(data_dir() / "ETTh1.parquet")
    n = len(df) // ETT_WINDOW
    arrays, ids, starts = [], [], []
    for col in ETT_LOADS:
        x = df[col].to_numpy(np.float64)[: n * ETT_WINDOW].reshape(n, ETT_WINDOW)
        sd = x.std(axis=1, keepdims=True)
        keep = np.flatnonzero(sd[:, 0] > 0)   # a constant window has no z-score; none in ETTh1
        arrays += list(((x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1))[keep].astype(np.float32))
        ids += [f"{col}_{k:03d}" for k in keep]
        starts += [pd.Timestamp(df["date"].iloc[k * ETT_WINDOW]) for k in keep]
    data = SeriesSet.from_arrays(arrays, ids, ["load"], start=starts, freq="h")
    train, holdout = data.split(0.2, seed=0)
    return Task("suite-etth1", train, holdout, f"ETTh1 {', '.join(ETT_LOADS)} cut into {n} consecutive {ETT_WINDOW}-"
                "hour windows each, every window z-scored, split 80/20 by window (RandomState(0))",
                data_names=("ETTh1", "ETT"))


def _fertility() -> Task:
    """World Bank fertility rates (births per woman) of every country and region complete over 1960-2011, as
    statsmodels ships them: yearly, raw scale, 52 steps; split 80/20 with RandomState(0)."""
    import statsmodels.api as sm

    df = sm.datasets.fertility.load_pandas().data
    years = [str(y) for y in range(1960, 2012)]
    x = df[years].astype(np.float64)
    complete = x.notna().all(axis=1).to_numpy()   # 2012-2013 are empty in the file
    data = SeriesSet.from_arrays(list(x.to_numpy()[complete].astype(np.float32)),
                                 list(df["Country Code"][complete]), ["births_per_woman"],
                                 start=[pd.Timestamp("1960-01-01")] * int(complete.sum()), freq="YS")
    train, holdout = data.split(0.2, seed=0)
    return Task("suite-fertility", train, holdout, f"statsmodels' World Bank fertility rates, {int(complete.sum())} "
                f"of {len(df)} countries and regions (those complete over 1960-2011), yearly, raw, split 80/20 "
                "(RandomState(0))", data_names=("fertility", "World Bank"))


TASKS = {
    "electricity100": lambda: _electricity("electricity_hourly_std.parquet", "electricity100", "z-scored kW"),
    "electricity-raw": lambda: _electricity("electricity_hourly_raw.parquet", "electricity-raw", "raw kW"),
    "electricity336": lambda: _electricity_whole("electricity_hourly_std.parquet", "electricity336", "z-scored kW"),
    "electricity24-phases": lambda: _electricity_phases("electricity_hourly_std.parquet", "electricity24-phases",
                                                        "z-scored kW"),
    "electricity24-phases-raw": lambda: _electricity_phases("electricity_hourly_raw.parquet", "electricity24-phases-raw",
                                                            "raw kW"),
    "stocks24": lambda: _timegan("stock_data.parquet", "stocks24", blocked=False),
    "stocks24-blocked": lambda: _timegan("stock_data.parquet", "stocks24-blocked", blocked=True),
    "energy24": lambda: _timegan("energy_data.parquet", "energy24", blocked=False),
    "energy24-blocked": lambda: _timegan("energy_data.parquet", "energy24-blocked", blocked=True),
    "italy24": _italy,
}
# the generalisation suite: built from data no default was chosen on (italy24 is the one set shared with TASKS)
SUITE = {
    "suite-elec-h100": lambda: _electricity_part("suite-elec-h100", (100, 200), None, 1),
    "suite-elec-h236": lambda: _electricity_part("suite-elec-h236", (236, 336), None, 2),
    "suite-elec-100c": lambda: _electricity_part("suite-elec-100c", (0, 100), 100, 3),
    "suite-elec-160c": lambda: _electricity_part("suite-elec-160c", (0, 100), 160, 4),
    "suite-etth1": _etth1_meters,
    "suite-fertility": _fertility,
    "italy24": _italy,
}


def load_task(name: str) -> Task:
    """Build a task by name (see ``TASKS`` and ``SUITE``)."""
    known = TASKS | SUITE
    if name not in known:
        raise SystemExit(f"unknown task {name!r}; choose from {', '.join(known)}")
    return known[name]()
