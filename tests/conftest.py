"""Shared fixtures: small in-memory data sets (no test reads /work/shared/data)."""

import os

# The suite runs on two pytest-xdist workers (pyproject.toml): each takes one core, one torch/OpenMP thread, so
# that the two do not contend for both cores (threads spinning on a busy core slow a test many times over).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from tsynth import SeriesSet  # noqa: E402


@pytest.fixture
def hourly() -> SeriesSet:
    """Three hourly electricity series, ragged (48, 48, 30 steps), with a text and a numeric attribute."""
    rng = np.random.default_rng(0)
    return SeriesSet.from_arrays(
        [rng.gamma(2.0, 50.0, size=n) for n in (48, 48, 30)],
        item_id=["MT_001", "MT_002", "MT_003"], channels=["consumption"],
        start=["2014-01-01 00:00", "2014-01-01 00:00", "2014-03-01 12:00"], freq="h",
        attributes=pd.DataFrame({"region": ["north", "south", "north"], "capacity": [10, 20, 30]}),
    )


@pytest.fixture
def electricity_records():
    """GluonTS/HF-style records like ``LeoTungAnh/electricity_hourly``: item_id MT_001.., start, target."""
    def make(n_items: int = 4, length: int = 24) -> list[dict]:
        rng = np.random.default_rng(1)
        return [{"item_id": f"MT_{i:03d}", "start": "2012-01-01 00:00:00", "feat_static_cat": [i - 1],
                 "target": rng.normal(size=length).round(4).tolist()} for i in range(1, n_items + 1)]
    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tsynth_server(tmp_path_factory):
    """One ``tsynth serve`` (uvicorn in a thread + its worker process) on loopback for the whole session."""
    from server_helpers import ThreadServer

    server = ThreadServer(tmp_path_factory.mktemp("tsynth-serve"), models_dir=tmp_path_factory.mktemp("base-models"))
    yield server
    server.stop()
