"""Peer generators: gretel-synthetics DGAN (DoppelGANger) and SDV PARSynthesizer.

Same signature as the generators in ``generators.py``. Neither package is a dependency of tsynth;
a missing one raises :class:`PeerUnavailable` (the harness records the peer as unavailable).
Both train on one torch thread within ``BUDGET_S`` seconds (baselines.md: a 10-minute CPU budget).
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import pandas as pd
import torch

from tsynth import SeriesSet

from .tasks import Task

BUDGET_S = 600.0
INSTALL = ("pip install -c constraints.txt -r benchmarks/requirements-peers.txt && "
           "pip install --no-deps gretel-synthetics==0.22.20")


class PeerUnavailable(RuntimeError):
    """A peer's package cannot be imported."""


def _require(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise PeerUnavailable(f"{package} is not importable ({e}); install the peers with: {INSTALL}") from e


def _as_set(task: Task, values: np.ndarray, prefix: str) -> SeriesSet:
    n, length = values.shape[:2]
    return SeriesSet(values.astype(np.float32), np.full(n, length), [f"{prefix}_{i}" for i in range(n)],
                     task.train.channels)


class _OutOfTime(Exception):
    pass


def dgan(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """DGAN with the settings of gretel-synthetics' README (at most 4 generator steps, as its 20/5
    ``max_sequence_len``/``sample_len``; batch 1000; the rest library defaults), as many whole epochs as
    fit in ``BUDGET_S`` (smoke: one epoch)."""
    dgan_mod = _require("gretel_synthetics.timeseries_dgan.dgan", "gretel-synthetics")
    config_mod = _require("gretel_synthetics.timeseries_dgan.config", "gretel-synthetics")
    x = task.train.values.astype(np.float32)
    n, length = x.shape[:2]
    sample_len = min(s for s in range(1, length + 1) if length % s == 0 and length // s <= 4)
    config = config_mod.DGANConfig(max_sequence_len=length, sample_len=sample_len, batch_size=min(1000, n),
                                   epochs=1 if smoke else 100_000, cuda=False)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = dgan_mod.DGAN(config)
    deadline = time.time() + BUDGET_S
    epochs = 0

    def stop_at_budget(info) -> None:
        nonlocal epochs
        if info.batch == info.total_batches - 1:
            epochs = info.epoch + 1
            if time.time() > deadline:
                raise _OutOfTime

    t0 = time.time()
    try:
        model.train_numpy(features=x, progress_callback=stop_at_budget)
    except _OutOfTime:
        pass
    fit_s = time.time() - t0
    t0 = time.time()
    _, features = model.generate_numpy(n)
    synthetic = _as_set(task, np.stack(features), "dgan")
    return synthetic, fit_s, time.time() - t0, {"epochs": epochs, "sample_len": sample_len,
                                                "batch_size": config.batch_size, "budget_s": BUDGET_S}


def par(task: Task, seed: int, smoke: bool) -> tuple[SeriesSet, float, float, dict]:
    """SDV PARSynthesizer with its defaults (128 epochs), fewer epochs where 128 would not fit in
    ``BUDGET_S`` as timed by a one-epoch fit (smoke: that one epoch). fit_s includes the timing fit."""
    metadata_mod = _require("sdv.metadata", "sdv")
    sequential = _require("sdv.sequential", "sdv")
    x = task.train.values
    n, length, channels = x.shape
    cols = [f"c{j}" for j in range(channels)]   # channel names may clash with SDV's own columns
    df = pd.DataFrame(x.reshape(-1, channels), columns=cols)
    df.insert(0, "sequence_id", np.repeat(np.arange(n), length))
    metadata = metadata_mod.Metadata.load_from_dict({"tables": {"series": {
        "columns": {"sequence_id": {"sdtype": "id"}, **{c: {"sdtype": "numerical"} for c in cols}},
        "sequence_key": "sequence_id"}}})

    def fit(epochs: int):
        torch.manual_seed(seed)
        np.random.seed(seed)
        synth = sequential.PARSynthesizer(metadata, epochs=epochs, cuda=False, verbose=False)
        synth.fit({"series": df})
        return synth

    t0 = time.time()
    synth = fit(1)
    epoch_s = time.time() - t0
    epochs = 1 if smoke else max(1, min(128, int(BUDGET_S / epoch_s)))
    if epochs > 1:
        synth = fit(epochs)
    fit_s = time.time() - t0
    t0 = time.time()
    out = synth.sample_sequences(n, sequence_length=length)["series"]
    values = np.stack([g[cols].to_numpy(np.float32) for _, g in out.groupby("sequence_id", sort=False)])
    return _as_set(task, values, "par"), fit_s, time.time() - t0, {"epochs": epochs, "timing_fit_s": epoch_s,
                                                                    "budget_s": BUDGET_S}
