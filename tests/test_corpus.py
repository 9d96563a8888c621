"""tsynth.corpus: every public source really loads, KernelSynth, user files, and the no-leakage rule."""

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest

from tsynth.corpus import (
    DEFAULT_CORPUS,
    EXCLUDED,
    LOAD_CORPUS,
    MIN_LENGTH,
    SOURCES,
    Kernel,
    _gp_factor,
    _import,
    _package_data,
    kernel_synth,
    load_corpus,
    regularise,
)
from tsynth.errors import ConfigError, DataError

pytestmark = pytest.mark.slow   # reads every public source
MANIFEST_KEYS = {"name", "description", "frequency", "package", "package_version", "origin", "licence", "series",
                 "values"}
# name: (number of series, length of each)
EXPECTED = {
    "acsf1": (200, 1460),
    "covid3month": (201, 84),
    "kdd_tsad_135": (1, 7501),
    "daphnet": (9, 7040),
    "tmy": (23, 8760),  # 3 stations x 8 columns, less Sand Point's constant pressure
    "weather": (2, 8759),
    "seattle_daily": (4, 1461),
    "taylor": (1, 4032),
    "kernelsynth": (2000, 512),
    "simbench": (123, 8784),  # 96 profiles, plus 27 grid-node profiles that differ in the future scenarios
    "simbench_regular": (246, 8784),  # two regularised copies of each
}

_opened: list[str] | None = None


def _record_open(event: str, args: tuple) -> None:
    if event == "open" and _opened is not None:
        _opened.append(str(args[0]))


@pytest.fixture(scope="module")
def loaded():
    """Every registered source loaded once, with the paths of every file opened meanwhile."""
    global _opened
    sys.addaudithook(_record_open)
    _opened = []
    try:
        out = {name: load_corpus([name], seed=1) for name in SOURCES}
        return out, list(_opened)
    finally:
        _opened = None


def _acf(x: np.ndarray, lag: int) -> float:
    """Correlation of the series with itself ``lag`` steps later."""
    return float(np.corrcoef(x[:-lag], x[lag:])[0, 1])


# ---------------------------------------------------------------------- registered sources
def test_registry_and_default_corpus():
    assert set(SOURCES) == set(EXPECTED)
    assert set(DEFAULT_CORPUS) <= set(SOURCES) and "kernelsynth" in DEFAULT_CORPUS
    assert len(DEFAULT_CORPUS) == len(set(DEFAULT_CORPUS))
    assert set(LOAD_CORPUS) <= set(SOURCES) and not set(LOAD_CORPUS) & set(DEFAULT_CORPUS)
    for name, src in SOURCES.items():
        assert src.name == name
        for text in (src.description, src.frequency, src.package, src.origin, src.licence):
            assert isinstance(text, str) and text


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_loads(loaded, name):
    series, manifest = loaded[0][name]
    n, length = EXPECTED[name]
    assert len(series) == n
    for s in series:
        assert s.dtype == np.float64 and s.shape == (length,)
        assert np.isfinite(s).all() and np.ptp(s) > 0
    assert len(manifest) == 1
    entry = manifest[0]
    assert set(entry) == MANIFEST_KEYS
    src = SOURCES[name]
    assert (entry["name"], entry["frequency"], entry["package"]) == (name, src.frequency, src.package)
    assert entry["series"] == n and entry["values"] == n * length
    assert isinstance(entry["package_version"], str) and entry["package_version"]
    assert entry["licence"] == src.licence and entry["origin"] == src.origin


def test_tmy_columns_are_physical(loaded):
    series, _ = loaded[0]["tmy"]
    ghi, temp, rh = series[0], series[3], series[5]  # Greensboro: GHI, air temperature, relative humidity
    assert ghi.min() == 0 and 800 < ghi.max() < 1400  # W/m2, dark at night
    assert -30 < temp.min() < temp.max() < 45  # deg C
    assert 0 <= rh.min() and rh.max() <= 100
    miami_temp = series[-5]  # TMY2 stores tenths of a degree; the loader converts
    assert 0 < miami_temp.min() < miami_temp.max() < 40
    assert max(_acf(ghi, 24), _acf(temp, 24)) > 0.5  # daily cycle


def test_load_corpus_concatenates_in_order():
    series, manifest = load_corpus(["taylor", "weather"])
    assert [m["name"] for m in manifest] == ["taylor", "weather"]
    assert [len(s) for s in series] == [4032, 8759, 8759]


def test_kernelsynth_source_follows_the_seed(loaded):
    series, _ = loaded[0]["kernelsynth"]  # loaded with seed=1
    assert all(np.array_equal(a, b) for a, b in zip(series[:2], kernel_synth(2, 512, seed=1)))


# ---------------------------------------------------------------------- no leakage
def test_italy_power_demand_is_excluded(loaded):
    assert EXCLUDED.get("ItalyPowerDemand")
    assert "stocks" in EXCLUDED
    opened = loaded[1]
    assert any("ACSF1" in p for p in opened)  # the recorder saw the data files
    assert not [p for p in opened if "ItalyPowerDemand" in p or p.endswith("stocks.csv")]
    for src in SOURCES.values():
        assert "italy" not in f"{src.name} {src.description} {src.origin}".lower()
    with pytest.raises(ConfigError, match="excluded"):
        load_corpus(["ItalyPowerDemand"])


# ---------------------------------------------------------------------- KernelSynth
def test_kernel_synth_deterministic_and_seeded():
    a = kernel_synth(12, 128, seed=5)
    b = kernel_synth(12, 128, seed=5)
    c = kernel_synth(12, 128, seed=6)
    assert len(a) == 12 and all(s.shape == (128,) and np.isfinite(s).all() for s in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.allclose(x, y) for x, y in zip(a, c))


def test_kernel_synth_periodic_kernel_gives_its_period():
    for s in kernel_synth(6, 256, seed=1, bank=[Kernel("periodic", 24)], max_kernels=1):
        assert _acf(s, 24) > 0.99
        assert _acf(s, 12) < 0.5


def test_kernel_synth_default_bank_mixes_smooth_and_rough():
    lag1 = np.array([_acf(s, 1) for s in kernel_synth(64, 256, seed=0)])
    assert (lag1 > 0.98).sum() >= 5 and (lag1 < 0.3).sum() >= 5


def test_kernel_rejects_unknown_kind_and_factor_falls_back():
    with pytest.raises(ConfigError, match="periodic"):
        Kernel("sine", 3)
    f = _gp_factor(np.diag([1.0, -1.0]))  # not PSD: Cholesky fails even with jitter, eigh clips
    assert np.allclose(f @ f.T, np.diag([1.0, 0.0]))


# ---------------------------------------------------------------------- user files
def test_csv_file(tmp_path):
    t = pd.date_range("2024-01-01", periods=48, freq="h")
    rng = np.random.default_rng(0)
    path = tmp_path / "small.csv"
    pd.DataFrame({"timestamp": t, "a": np.sin(np.arange(48) / 3), "b": rng.normal(size=48)}).to_csv(path, index=False)
    series, manifest = load_corpus([str(path)])
    assert len(series) == 2 and all(s.shape == (48,) and s.dtype == np.float64 for s in series)
    assert np.allclose(series[0], np.sin(np.arange(48) / 3), atol=1e-6)
    assert manifest == [{"name": "small.csv", "description": manifest[0]["description"], "frequency": "h",
                         "package": None, "package_version": None, "origin": str(path.resolve()),
                         "licence": "user-supplied: check before sharing", "series": 2, "values": 96}]


def test_long_file_drops_short_and_constant_series(tmp_path):
    rows = [("x", i, float(i % 7)) for i in range(40)] + [("y", i, float(i)) for i in range(20)]
    rows += [("z", i, 1.0) for i in range(40)]
    path = tmp_path / "long.csv"
    pd.DataFrame(rows, columns=["item_id", "timestamp", "value"]).to_csv(path, index=False)
    series, manifest = load_corpus([str(path)])
    assert [len(s) for s in series] == [40]
    assert manifest[0]["series"] == 1 and manifest[0]["values"] == 40


def test_jsonl_channels_become_series(tmp_path):
    path = tmp_path / "multi.jsonl"
    lines = [{"load": list(range(i, i + 40)), "temp": [float(v % 5) for v in range(40)]} for i in range(3)]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    series, manifest = load_corpus([str(path)])
    assert len(series) == 6 and manifest[0]["values"] == 240


@pytest.mark.parametrize("content, problem", [
    ("", "empty"),
    ("a,b\n1,x\n2,y\n", "non-numeric"),
    ("a,b\n,\n,\n", "empty"),
    ("a\n" + "\n".join(str(i) for i in range(MIN_LENGTH - 1)) + "\n", "no usable series"),
])
def test_bad_files_raise_data_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(str(path))) as err:
        load_corpus([str(path)])
    assert problem in str(err.value)


def test_missing_package_or_data_file_says_what_to_install():
    with pytest.raises(ConfigError, match=re.escape('pip install "tsynth[prior]"')):
        _import("tsynth_no_such_module", "somepackage")
    with pytest.raises(ConfigError, match=re.escape('pip install "tsynth[prior]"')):
        _package_data("tsynth_no_such_module", "somepackage", "a.csv")
    with pytest.raises(ConfigError, match=r"aeon \S+ does not ship datasets/data/NoSuchSet"):
        _package_data("aeon", "aeon", "datasets", "data", "NoSuchSet")
    with pytest.raises(ConfigError, match=re.escape("needs the 'somepackage' package: pip install --no-deps x")):
        _package_data("tsynth_no_such_module", "somepackage", "a.csv", hint="pip install --no-deps x")
    with pytest.raises(ConfigError, match=r"simbench \S+ does not ship networks/no-such-set"):
        _package_data("simbench", "simbench", "networks", "no-such-set", hint="")


def test_simbench_profiles_are_hourly_loads(loaded):
    series, _ = loaded[0]["simbench"]
    assert len({s.tobytes() for s in series}) == len(series)        # each distinct profile once
    assert np.mean([s.min() >= -1e-9 for s in series]) > 0.9        # loads draw power (a few grid nodes feed in)
    assert np.median([_acf(s, 24) for s in series]) > 0.5           # the daily cycle survives hourly averaging


def test_regularise_keeps_the_typical_day_and_scales_the_rest():
    rng = np.random.default_rng(0)
    day = np.sin(2 * np.pi * np.arange(24 * 60) / 24)
    noise = rng.standard_normal(len(day))
    assert np.allclose(regularise(day, 0.3), day)                      # a strictly daily series is its own typical day
    assert np.allclose(regularise(day + noise, 1.0), day + noise)      # alpha 1: the series itself
    middle = slice(24 * 15, 24 * 45)                                   # where the +-14-day mean is complete
    kept = regularise(day + noise, 0.25)[middle] - regularise(day + noise, 0.0)[middle]
    assert np.allclose(kept, 0.25 * (noise[middle] - regularise(noise, 0.0)[middle]))
    assert np.std(regularise(day + noise, 0.0)[middle] - day[middle]) < 0.25  # the mean of 29 days: noise / sqrt(29)


def test_simbench_regular_copies_are_more_regular_and_seeded(loaded):
    raw, _ = loaded[0]["simbench"]
    regular, _ = loaded[0]["simbench_regular"]
    assert np.median([_acf(s, 24) for s in regular]) > np.median([_acf(s, 24) for s in raw]) + 0.1
    typical, departure = regularise(raw[0], 0.0), raw[0] - regularise(raw[0], 0.0)
    alphas = [float(np.dot(regular[k] - typical, departure) / np.dot(departure, departure)) for k in (0, 1)]
    for k, alpha in enumerate(alphas):                                   # copy k of profile 0: typical + alpha * rest
        assert 0.0 <= alpha <= 0.6 and np.allclose(regular[k], typical + alpha * departure)
    assert abs(alphas[0] - alphas[1]) > 1e-6                             # each copy draws its own alpha
    other, _ = load_corpus(["simbench_regular"], seed=2)
    assert not np.allclose(other[0], regular[0])


def test_unknown_name_lists_sources():
    with pytest.raises(ConfigError, match="available sources") as err:
        load_corpus(["no-such-source"])
    assert all(name in str(err.value) for name in SOURCES)
    with pytest.raises(ConfigError, match="more than once"):
        load_corpus(["taylor", "taylor"])
