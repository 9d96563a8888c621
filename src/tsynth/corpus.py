"""The public pretraining corpus: time series that ship inside packages installable from PyPI, plus
KernelSynth series generated here, for building tsynth's public prior without any hub download.

Sources (``SOURCES``), each loaded by its own loader, which imports its package only when called:

* ``acsf1``        -- aeon: ACS-F1 appliance power signatures (UCR version), 200 series x 1,460 steps;
* ``covid3month``  -- aeon: WHO daily confirmed COVID-19 cases of 201 countries, Jan-Mar 2020 (84 days);
* ``kdd_tsad_135`` -- aeon: the 'InternalBleeding16' physiological record of the UCR/KDD-2021 anomaly archive;
* ``daphnet``      -- aeon: Daphnet gait accelerometers (9 channels at 64 Hz) of one Parkinson's patient;
* ``tmy``          -- pvlib: NREL Typical Meteorological Years of three US stations, hourly, 8,760 steps;
* ``weather``      -- vega_datasets: hourly temperatures of Seattle and San Francisco in 2010 (NOAA);
* ``seattle_daily`` -- vega_datasets: daily Seattle weather 2012-2015 (precipitation, temperatures, wind);
* ``taylor``       -- pmdarima: half-hourly electricity demand of England and Wales, summer 2000 (Taylor 2003);
* ``kernelsynth``  -- 2,000 Gaussian-process series of 512 steps from :func:`kernel_synth`;
* ``simbench``     -- simbench: a year of electric load profiles (households, trade, agriculture, heat pumps,
  e-mobility, grid nodes) of the SimBench grid data set, 15-minute values averaged to hourly;
* ``simbench_regular`` -- the same profiles made more regular from day to day (:func:`regularise`), two
  copies each: many metered customers repeat their day far more closely than SimBench's profiles do.
  Neither is in ``DEFAULT_CORPUS``: they build the shipped *load* prior (``LOAD_CORPUS``).

No-leakage rule: the prior must never see the data sets tsynth demonstrates or benchmarks on, or it
could copy them instead of generalising. ``EXCLUDED`` names them with the reason; no source reads them,
and ``load_corpus`` refuses their names.

Left out of the aeon bundle on purpose: short toy series (Airline, Lynx, Longley, ShampooSales, PBS,
Uschange, the 289-step solar excerpt, M1 yearly), short classification cases (GunPoint, BasicMotions,
JapaneseVowels, CardanoSentiment, PickupGestureWiimoteZ), shape outlines posing as series (OSULeaf,
ArrowHead), spliced or generated test data (segmentation, UnitTest) and Covid3Month_disc (a copy of
Covid3Month with other labels).

Every series comes back 1-D float64, finite and non-constant, with at least ``MIN_LENGTH`` steps.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from .errors import ConfigError, DataError

MIN_LENGTH = 32
INSTALL_HINT = 'pip install "tsynth[prior]"'

EXCLUDED = {
    "ItalyPowerDemand": "tsynth's demo data set (load_demo, the italy24 benchmark): the prior must not contain it",
    "stocks": "vega_datasets' stock prices include GOOG, which overlaps the stocks24 benchmark task",
}


@dataclass(frozen=True)
class CorpusSource:
    """One registered corpus source. ``loader()`` returns its series; a ``seeded`` source's loader
    also takes ``seed=`` (``load_corpus`` passes its own)."""

    name: str
    description: str
    frequency: str
    package: str
    origin: str
    licence: str
    loader: Callable[..., list[np.ndarray]]
    seeded: bool = False


# ---------------------------------------------------------------------- KernelSynth
KERNEL_KINDS = ("rbf", "rq", "periodic", "linear", "white", "constant")


@dataclass(frozen=True)
class Kernel:
    """One kernel of the KernelSynth bank; what ``param`` means depends on ``kind``.

    ``rbf`` / ``rq`` (rational quadratic, alpha 1): length scale as a fraction of the series length;
    ``periodic`` (exp-sine-squared, length scale 1): period in steps; ``linear``: offset sigma_0 of the
    dot-product kernel on t / length; ``white``: noise variance; ``constant``: the constant.
    """

    kind: str
    param: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KERNEL_KINDS:
            raise ConfigError(f"unknown kernel kind {self.kind!r} ({', '.join(KERNEL_KINDS)})")

    def matrix(self, length: int) -> np.ndarray:
        """The (length, length) covariance matrix over steps 0..length-1."""
        t = np.arange(length, dtype=np.float64)
        if self.kind == "white":
            return self.param * np.eye(length)
        if self.kind == "constant":
            return np.full((length, length), float(self.param))
        if self.kind == "linear":
            x = t / length
            return self.param**2 + np.outer(x, x)
        d = np.abs(t[:, None] - t[None, :])
        if self.kind == "periodic":
            return np.exp(-2.0 * np.sin(np.pi * d / self.param) ** 2)
        r2 = (d / (length * self.param)) ** 2
        return np.exp(-0.5 * r2) if self.kind == "rbf" else 1.0 / (1.0 + 0.5 * r2)


# The Chronos bank (Ansari et al. 2024, appendix), with an extra short RBF / RQ length scale.
KERNEL_BANK: tuple[Kernel, ...] = (
    *(Kernel("rbf", s) for s in (0.03, 0.1, 1.0, 10.0)),
    *(Kernel("rq", s) for s in (0.03, 0.1, 1.0)),
    *(Kernel("periodic", p) for p in (24, 48, 96, 168, 336, 672, 7, 14, 30, 60, 365, 730, 4, 26, 52, 6, 12, 40, 10)),
    *(Kernel("linear", s) for s in (0.0, 1.0, 10.0)),
    Kernel("white", 0.1), Kernel("white", 1.0),
    Kernel("constant", 1.0),
)


def kernel_synth(n_series: int, length: int, seed: int = 0, bank: Sequence[Kernel] = KERNEL_BANK,
                 max_kernels: int = 5) -> list[np.ndarray]:
    """KernelSynth (Chronos, Ansari et al. 2024): each series is one draw of a zero-mean Gaussian process
    whose kernel combines 1..``max_kernels`` kernels picked from ``bank`` (with replacement), joined left
    to right by + or * at random. Deterministic for a seed."""
    if n_series < 0 or length < 1 or max_kernels < 1 or not bank:
        raise ConfigError(f"kernel_synth needs n_series >= 0, length >= 1, max_kernels >= 1 and a non-empty "
                          f"bank (got {n_series}, {length}, {max_kernels}, {len(bank)} kernels)")
    rng = np.random.default_rng(seed)
    matrices: dict[int, np.ndarray] = {}
    out = []
    for _ in range(n_series):
        picks = rng.integers(len(bank), size=int(rng.integers(1, max_kernels + 1)))
        cov: np.ndarray | None = None
        for i in picks:
            if i not in matrices:
                matrices[i] = bank[i].matrix(length)
            if cov is None:
                cov = matrices[i].copy()
            elif rng.random() < 0.5:
                cov = cov + matrices[i]
            else:
                cov = cov * matrices[i]
        assert cov is not None   # picks holds at least one kernel
        out.append(_gp_factor(cov) @ rng.standard_normal(length))
    return out


def _gp_factor(cov: np.ndarray) -> np.ndarray:
    """A matrix F with F @ F.T = cov (up to jitter): Cholesky with growing jitter, else eigh."""
    n = len(cov)
    scale = float(np.mean(np.diag(cov))) or 1.0
    for jitter in (1e-6, 1e-4):
        try:
            return np.linalg.cholesky(cov + jitter * scale * np.eye(n))
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0.0, None))


# ---------------------------------------------------------------------- loaders
def _import(module: str, package: str) -> ModuleType:
    """Import ``module`` or say which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"this corpus source needs the '{package}' package: {INSTALL_HINT}") from None


def _package_data(module: str, package: str, *parts: str, hint: str = INSTALL_HINT, note: str = "") -> Path:
    """The path of a data file that ``package`` ships inside ``module``'s folder, found without importing
    ``module`` (simbench's import would pull in pandapower, which its data files do not need)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"this corpus source needs the '{package}' package: {hint}")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise ConfigError(f"{package} {_version(package)} does not ship {'/'.join(parts)}; install a version "
                          f"that does{note}")
    return path


def _aeon_data(*parts: str) -> Path:
    # aeon 1.6 deprecated the bundled ACSF1 and Daphnet files; 1.7 removes them
    return _package_data("aeon", "aeon", "datasets", "data", *parts, note=' (pip install "aeon<1.7")')


def _aeon_ts(problem: str) -> list[np.ndarray]:
    """Both splits of a bundled aeon .ts problem, one series per case and channel."""
    load_from_ts_file = _import("aeon.datasets", "aeon").load_from_ts_file
    out = []
    for split in ("TRAIN", "TEST"):
        X, _ = load_from_ts_file(str(_aeon_data(problem, f"{problem}_{split}.ts")))
        out += [np.asarray(c, dtype=np.float64) for case in X for c in case]
    return out


def _csv_columns(path: Path, columns: Sequence[str]) -> list[np.ndarray]:
    df = pd.read_csv(path)
    return [df[c].to_numpy(dtype=np.float64) for c in columns]


def _load_acsf1() -> list[np.ndarray]:
    return _aeon_ts("ACSF1")


def _load_covid3month() -> list[np.ndarray]:
    return _aeon_ts("Covid3Month")


def _load_kdd_tsad_135() -> list[np.ndarray]:
    # the TEST file is the whole record; TRAIN is its first 1,200 steps
    return _csv_columns(_aeon_data("KDD-TSAD_135", "135_UCR_Anomaly_InternalBleeding16_TEST.csv"), ["value"])


DAPHNET_CHANNELS = tuple(f"{part}_{axis}" for part in ("ankle", "leg", "trunk")
                         for axis in ("horiz_fwd", "vert", "horiz_lateral"))


def _load_daphnet() -> list[np.ndarray]:
    return _csv_columns(_aeon_data("Daphnet_S06R02E0", "S06R02E0.csv"), DAPHNET_CHANNELS)


TMY_FILES = ("723170TYA.CSV", "703165TY.csv", "12839.tm2")
TMY3_COLUMNS = ("ghi", "dni", "dhi", "temp_air", "temp_dew", "relative_humidity", "pressure", "wind_speed")
# TMY2 names, and the factor to the TMY3 units (TMY2 stores temperatures and wind speed in tenths)
TMY2_COLUMNS = {"GHI": 1.0, "DNI": 1.0, "DHI": 1.0, "DryBulb": 0.1, "DewPoint": 0.1, "RHum": 1.0,
                "Pressure": 1.0, "Wspd": 0.1}


def _load_tmy() -> list[np.ndarray]:
    iotools = _import("pvlib.iotools", "pvlib")
    out = []
    for name in TMY_FILES:
        path = str(_package_data("pvlib", "pvlib", "data", name))
        if name.endswith(".tm2"):
            df, _ = iotools.read_tmy2(path)
            out += [df[c].to_numpy(dtype=np.float64) * k for c, k in TMY2_COLUMNS.items()]
        else:
            df, _ = iotools.read_tmy3(path, map_variables=True)
            out += [df[c].to_numpy(dtype=np.float64) for c in TMY3_COLUMNS]
    return out  # constant columns (Sand Point's pressure) are dropped by load_corpus


def _load_weather() -> list[np.ndarray]:
    local_data = _import("vega_datasets", "vega_datasets").local_data
    return [local_data(name)["temp"].to_numpy(dtype=np.float64) for name in ("seattle-temps", "sf-temps")]


def _load_seattle_daily() -> list[np.ndarray]:
    df = _import("vega_datasets", "vega_datasets").local_data("seattle-weather")
    return [df[c].to_numpy(dtype=np.float64) for c in ("precipitation", "temp_max", "temp_min", "wind")]


def _load_taylor() -> list[np.ndarray]:
    return [np.asarray(_import("pmdarima.datasets", "pmdarima").load_taylor(), dtype=np.float64)]


KERNELSYNTH_SERIES, KERNELSYNTH_LENGTH = 2000, 512


def _load_kernelsynth(seed: int = 0) -> list[np.ndarray]:
    return kernel_synth(KERNELSYNTH_SERIES, KERNELSYNTH_LENGTH, seed=seed)


# the three complete SimBench data sets (today, and two future scenarios with more heat pumps and e-mobility)
SIMBENCH_SETS = tuple(f"1-complete_data-mixed-all-{k}-sw" for k in range(3))


def _load_simbench() -> list[np.ndarray]:
    """Every active-power load profile of the SimBench data sets, hourly means, each distinct one once."""
    out, seen = [], set()
    for name in SIMBENCH_SETS:
        path = _package_data("simbench", "simbench", "networks", name, "LoadProfile.csv",
                             hint="pip install --no-deps simbench")
        df = pd.read_csv(path, sep=";", usecols=lambda c: c.endswith("_pload"))
        for col in df.columns:
            quarter_hours = df[col].to_numpy(dtype=np.float64)
            hourly = quarter_hours[: len(quarter_hours) // 4 * 4].reshape(-1, 4).mean(1)
            if hourly.tobytes() not in seen:
                seen.add(hourly.tobytes())
                out.append(hourly)
    return out


REGULAR_DAYS = 14          # the same-hour mean runs over +-14 days
REGULAR_ALPHA = (0.0, 0.6)  # how much of each profile's departure from that mean is kept
REGULAR_COPIES = 2


def regularise(series: np.ndarray, alpha: float, period: int = 24, days: int = REGULAR_DAYS) -> np.ndarray:
    """``m + alpha * (x - m)``, where ``m`` is the mean of the same step of the period over +-``days``
    periods: ``alpha=1`` gives the series back, ``alpha=0`` its slowly changing typical day."""
    x = np.asarray(series, dtype=np.float64)
    n = len(x)
    total, count = np.zeros(n), np.zeros(n)
    for k in range(-days, days + 1):
        shift = period * k
        lo, hi = max(0, -shift), min(n, n - shift)
        if lo < hi:
            total[lo:hi] += x[lo + shift:hi + shift]
            count[lo:hi] += 1
    typical = total / count
    return typical + alpha * (x - typical)


def _load_simbench_regular(seed: int = 0) -> list[np.ndarray]:
    """Every SimBench profile, ``REGULAR_COPIES`` times regularised with alpha drawn from U(REGULAR_ALPHA)."""
    rng = np.random.default_rng(seed)
    return [regularise(p, rng.uniform(*REGULAR_ALPHA)) for p in _load_simbench() for _ in range(REGULAR_COPIES)]


_UCR = "UCR archive: no licence stated; free for research use as published by the archive"

SOURCES: dict[str, CorpusSource] = {s.name: s for s in (
    CorpusSource(
        "acsf1", "ACS-F1 appliance power signatures (10 appliance kinds), UCR version, z-normalised per series",
        "10s", "aeon", "Gisler et al. 2013, ACS-F1 database (HES-SO Fribourg); UCR Time Series Classification "
        "Archive (Dau et al. 2019)", f"aeon BSD-3-Clause; data: {_UCR}", _load_acsf1),
    CorpusSource(
        "covid3month", "daily confirmed COVID-19 cases of 201 countries over 84 days up to 1 April 2020",
        "1d", "aeon", "WHO COVID-19 database (https://covid19.who.int), via the Monash/UEA TSER archive "
        "(Tan et al. 2021)", "aeon BSD-3-Clause; data: WHO dashboard data, reuse with attribution under WHO's "
        "terms (no open-data licence stated in the archive)", _load_covid3month),
    CorpusSource(
        "kdd_tsad_135", "physiological record of a patient with internal bleeding (one series, 7,501 steps)",
        "unknown", "aeon", "UCR Time Series Anomaly Archive / KDD Cup 2021 (Keogh et al. 2021), record 135 "
        "'InternalBleeding16'", "aeon BSD-3-Clause; data: no licence stated by the archive", _load_kdd_tsad_135),
    CorpusSource(
        "daphnet", "3 tri-axial accelerometers (ankle, thigh, trunk) of a Parkinson's patient walking, 64 Hz",
        "15625us", "aeon", "Daphnet Freezing of Gait data set, Baechlin et al. 2010 (UCI ML Repository), "
        "excerpt S06R02", "aeon BSD-3-Clause; data: UCI lists it under CC BY 4.0", _load_daphnet),
    CorpusSource(
        "tmy", "Typical Meteorological Years (Greensboro NC, Sand Point AK, Miami FL): GHI, DNI, DHI, temperature, "
        "dew point, relative humidity, pressure, wind speed", "1h", "pvlib",
        "NREL National Solar Radiation Database (TMY3 1991-2005, TMY2 1961-1990)",
        "pvlib BSD-3-Clause; data: published by NREL (US DOE) for unrestricted public use; NREL is "
        "contractor-operated, so not strictly a US federal work", _load_tmy),
    CorpusSource(
        "weather", "hourly air temperature in Seattle and San Francisco, 2010 (local time; the spring DST "
        "hour is absent)", "1h", "vega_datasets", "NOAA, via the vega-datasets collection",
        "vega_datasets MIT; data: NOAA (US government work, public domain in the US)", _load_weather),
    CorpusSource(
        "seattle_daily", "daily Seattle precipitation, max/min temperature and wind, 2012-2015", "1d",
        "vega_datasets", "NOAA, via the vega-datasets collection",
        "vega_datasets MIT; data: NOAA (US government work, public domain in the US)", _load_seattle_daily),
    CorpusSource(
        "taylor", "half-hourly electricity demand of England and Wales, 5 June - 27 August 2000 (MW)",
        "30min", "pmdarima", "Taylor (2003), J. Oper. Res. Soc. 54, 799-805; the 'taylor' data of R's forecast "
        "package", "pmdarima MIT; data: from the R forecast package (GPL-3), provided by J. W. Taylor",
        _load_taylor),
    CorpusSource(
        "kernelsynth", f"{KERNELSYNTH_SERIES} KernelSynth Gaussian-process series of {KERNELSYNTH_LENGTH} steps",
        "mixed", "tsynth", "generated by tsynth.corpus.kernel_synth (method of Ansari et al. 2024, Chronos)",
        "generated; no third-party data", _load_kernelsynth, seeded=True),
    CorpusSource(
        "simbench", "electric load profiles of one year (German households, trade, agriculture, heat pumps, "
        "e-mobility charging, low/medium/high-voltage grid nodes), 15-minute values averaged to hourly", "1h",
        "simbench", "SimBench benchmark data set for grid analysis, Meinecke et al. (2020), Energies 13(12), 3290 "
        "(University of Kassel, TU Dortmund, RWTH Aachen, Fraunhofer IEE)",
        "simbench code BSD-3-Clause; data: Open Database License 1.0 (contents: Database Contents License 1.0); "
        "a prior trained on it is a Produced Work: credit SimBench when you share it", _load_simbench),
)}
SOURCES["simbench_regular"] = CorpusSource(
    "simbench_regular", f"the simbench profiles, {REGULAR_COPIES} copies each, pulled towards their same-hour mean "
    f"over +-{REGULAR_DAYS} days (tsynth.corpus.regularise, alpha drawn from U{REGULAR_ALPHA})", "1h", "simbench",
    SOURCES["simbench"].origin + "; regularised by tsynth", SOURCES["simbench"].licence, _load_simbench_regular,
    seeded=True)

# the shipped default prior's sources (general: no electricity-load family dominates) and the load prior's
DEFAULT_CORPUS: tuple[str, ...] = ("acsf1", "covid3month", "kdd_tsad_135", "daphnet", "tmy", "weather",
                                   "seattle_daily", "taylor", "kernelsynth")
LOAD_CORPUS: tuple[str, ...] = ("simbench", "simbench_regular")


# ---------------------------------------------------------------------- the corpus
def load_corpus(specs: Sequence[str], seed: int = 0) -> tuple[list[np.ndarray], list[dict]]:
    """Load every spec (a name from ``SOURCES`` or a path to a .csv/.parquet/.jsonl/.json data file) and
    return all series plus one manifest entry per spec (name, description, frequency, package,
    package_version, origin, licence, series, values).

    Files are read with :func:`tsynth.data.read_series` (layout detected); each channel of each item
    becomes one series. The reader refuses NaN inside a series (the DataError names the row); the NaN
    padding after ragged series is dropped. For every source and file, non-finite values split a series
    and pieces shorter than ``MIN_LENGTH`` steps or constant are dropped. ``seed`` drives the generated
    sources (kernelsynth).
    """
    if len(set(specs)) != len(specs):
        raise ConfigError(f"corpus sources listed more than once: {sorted({s for s in specs if specs.count(s) > 1})}")
    series: list[np.ndarray] = []
    manifest = []
    for spec in specs:
        if spec in SOURCES:
            got, entry = _load_source(SOURCES[spec], seed)
        elif spec in EXCLUDED:
            raise ConfigError(f"'{spec}' is excluded from the corpus: {EXCLUDED[spec]}")
        elif Path(spec).is_file():
            got, entry = _load_file(Path(spec))
        else:
            raise ConfigError(f"unknown corpus source '{spec}' and no such file; available sources: "
                              f"{', '.join(SOURCES)} (or a path to a data file)")
        series += got
        manifest.append({**entry, "series": len(got), "values": int(sum(len(s) for s in got))})
    return series, manifest


def _load_source(src: CorpusSource, seed: int) -> tuple[list[np.ndarray], dict]:
    raw = src.loader(seed=seed) if src.seeded else src.loader()
    entry = {"name": src.name, "description": src.description, "frequency": src.frequency,
             "package": src.package, "package_version": _version(src.package), "origin": src.origin,
             "licence": src.licence}
    return _usable(raw), entry


def _load_file(path: Path) -> tuple[list[np.ndarray], dict]:
    from .data import read_series

    data = read_series(path)
    raw = [data.series(i)[:, j] for i in range(len(data)) for j in range(data.n_channels)]
    got = _usable(raw)
    if not got:
        longest = max((len(s) for s in raw), default=0)
        raise DataError(f"{path}: no usable series: {len(raw)} read, the longest has {longest} steps; the corpus "
                        f"needs at least {MIN_LENGTH} finite steps that are not all equal")
    entry = {"name": path.name, "description": f"user file: {data!r}", "frequency": data.freq, "package": None,
             "package_version": None, "origin": str(path.resolve()), "licence": "user-supplied: check before sharing"}
    return got, entry


def _usable(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """1-D float64 pieces between non-finite values, keeping those of at least MIN_LENGTH steps that vary."""
    out = []
    for a in arrays:
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        ok = np.isfinite(a)
        edges = np.flatnonzero(np.diff(np.concatenate(([False], ok, [False])).astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2]):
            piece = a[start:stop]
            if len(piece) >= MIN_LENGTH and np.ptp(piece) > 0:
                out.append(piece)
    return out


def _version(package: str) -> str | None:
    """The installed version of a distribution (tsynth's own for generated sources), None if absent."""
    if package == "tsynth":
        from ._version import __version__

        return __version__
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
