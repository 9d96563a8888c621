"""Beyond one machine (docs/scale-out.md): data-parallel training in real processes (gloo), sampling on a real
local Ray cluster, training from a partitioned Parquet data set read as a stream, evaluation on a subsample."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tsynth import SeriesSet

ROOT = Path(__file__).resolve().parents[1]


def meters(n: int = 64, length: int = 72, seed: int = 0) -> SeriesSet:
    """Hourly daily-cycle series with noise, their phases drawn at random."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    vals = [10 + 5 * np.sin(2 * np.pi * (t + rng.integers(24)) / 24) + rng.normal(0, 1, length) for _ in range(n)]
    return SeriesSet.from_arrays(vals, item_id=[f"m{i}" for i in range(n)], channels=["load"],
                                 start=["2020-01-01"] * n, freq="h")


def tsynth(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsynth.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=600)


def run_together(commands: list[tuple[list[str], dict]], cwd: Path) -> tuple[list[int], list[tuple[str, str]]]:
    """Each (arguments after the interpreter, environment) started at once in ``cwd``; their exit statuses and
    (stdout, stderr) once all end."""
    procs = [subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, env in commands]
    outs = [p.communicate(timeout=600) for p in procs]
    return [p.returncode for p in procs], outs


FIT = ("--ensemble", "1", "--epochs", "3", "--batch-size", "16", "--seed", "3")


def rank_envs(processes: int) -> list[dict]:
    """The environment of each process of a launch on this machine, as `accelerate launch` sets it (one torch
    thread each); one process: no launcher variables at all."""
    from tsynth.distributed import RANK_VARS, SIZE_VARS, _free_port

    env = {k: v for k, v in os.environ.items()
           if k not in {*RANK_VARS, *SIZE_VARS, "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}}
    env["OMP_NUM_THREADS"] = "1"
    if processes == 1:
        return [env]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(processes))
    return [{**env, "RANK": str(rank), "LOCAL_RANK": str(rank)} for rank in range(processes)]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """2 gloo processes at the same global batch: the same loss curve within noise, the same model directory."""
    meters().write(tmp_path / "m.parquet")
    # both fits at once: each is deterministic on its own, and the test's wall time is then the longer one
    codes, outs = run_together([(["-m", "tsynth.cli", "fit", "m.parquet", "-o", out, *FIT, *extra],
                                 {**os.environ, "OMP_NUM_THREADS": "1"})
                                for out, extra in (("one", ()), ("two", ("--processes", "2")))], tmp_path)
    assert codes == [0, 0], outs
    docs = [json.loads((tmp_path / d / "tsynth.json").read_text()) for d in ("one", "two")]
    runs = [d["training"]["members"][0] for d in docs]
    for key in ("train_loss", "valid_loss"):
        a, b = np.asarray(runs[0][key]), np.asarray(runs[1][key])
        assert len(a) == len(b) == 3
        assert np.all(np.abs(a - b) / a < 0.03), (key, a, b)  # random offsets and dropout differ: noise only
    assert runs[0]["steps"] == runs[1]["steps"]  # the same global batches
    assert sorted(p.name for p in (tmp_path / "one").rglob("*")) == sorted(p.name for p in (tmp_path / "two").rglob("*"))
    assert docs[0]["codec"] == docs[1]["codec"] and docs[0]["schema"] == docs[1]["schema"]
    assert not (tmp_path / "two.checkpoints").exists()
    from tsynth import Synthesizer

    assert len(Synthesizer.load(tmp_path / "two").sample(4, seed=0)) == 4


@pytest.mark.slow
def test_processes_that_disagree_on_the_data_are_refused(tmp_path):
    """Two processes of one launch given other data files: refused before the first step, exit status 2."""
    meters(seed=0).write(tmp_path / "a.parquet")
    meters(seed=1).write(tmp_path / "b.parquet")
    codes, outs = run_together([(["-m", "tsynth.cli", "fit", data, "-o", f"out{rank}", *FIT], env)
                                for rank, (data, env) in enumerate(zip(("a.parquet", "b.parquet"), rank_envs(2)))],
                               tmp_path)
    assert codes == [2, 2], outs
    assert "training processes disagree" in outs[0][1] and "training data" in outs[0][1]
    assert not (tmp_path / "out0").exists() and not (tmp_path / "out1").exists()


def test_data_parallel_refuses_a_time_limit(monkeypatch):
    """What data-parallel training does not support is refused before any work, in one line."""
    from tsynth import Synthesizer
    from tsynth.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="time limit is not supported with 2 training processes"):
        Synthesizer(time_limit_s=10.0, epochs=1).fit(meters(16, 24))


# A DP fit in this process or in one of a launch's processes, its secret seed (drawn from the OS in use) fixed
# to argv[3], so that runs can be compared; dropout off, so that a process' share of a batch draws no random
# numbers of its own. Rank 0 saves the model.
DP_FIT = """
import secrets, sys
secrets.randbits = lambda bits: int(sys.argv[3])
from tsynth import SeriesSet, Synthesizer
from tsynth.distributed import is_main_process
syn = Synthesizer(dp_epsilon=8.0, epochs=2, batch_size=4, dropout=0.0, seed=3)
syn.fit(SeriesSet.read(sys.argv[1]), progress=False)
if is_main_process():
    syn.save(sys.argv[2])
"""


def _dp_fits(tmp_path: Path, launches: list[tuple[str, int, int]]) -> list[dict]:
    """Each launch (output directory, secret seed, processes) started at once; their saved models once all end."""
    codes, outs = run_together([(["-c", DP_FIT, "m.parquet", out, str(secret)], env)
                                for out, secret, processes in launches for env in rank_envs(processes)], tmp_path)
    assert codes == [0] * len(codes), outs
    from tsynth import Synthesizer

    fits = []
    for out, _, _ in launches:
        syn = Synthesizer.load(tmp_path / out)
        fits.append({"privacy": syn.info["privacy"], "weights": syn.backend.models[0].state_dict(),
                     "train_loss": syn.info["training"]["members"][0]["train_loss"]})
    return fits


@pytest.mark.slow
def test_dp_sgd_on_two_processes_takes_the_one_process_steps(tmp_path):
    """DP-SGD data-parallel: with the same secret seed, 2 gloo processes (each its items' share of the Poisson
    sample, clipped sums added up, the noise drawn once) train the same weights as 1 process, with the same
    noise multiplier, sampling rate, steps and epsilon; another secret seed moves the weights far beyond the
    tolerance."""
    meters(60, 24).zscore().write(tmp_path / "m.parquet")
    # the three launches run at once (4 processes): each is deterministic given its secret seed
    one, two, other = _dp_fits(tmp_path, [("one", 1234567, 1), ("two", 1234567, 2), ("other", 7654321, 1)])
    for key in ("epsilon", "noise_multiplier", "sample_rate", "steps", "delta", "items"):
        assert one["privacy"][key] == pytest.approx(two["privacy"][key], rel=1e-9), key
    assert one["privacy"]["steps"] == 30 and one["privacy"]["epsilon"] <= 8.0
    # the same draws as the run's (one window per item): some steps left a process without items of its own,
    # so the placeholder rows took part, on both processes
    from tsynth.privacy import DPEngine, DPSettings

    replica = DPEngine(DPSettings(epsilon=8.0), np.arange(60))
    replica.world, replica.sample_rate = 2, one["privacy"]["sample_rate"]
    replica.epoch_steps = replica.steps_per_epoch(round(replica.sample_rate * 60))
    for rank in (0, 1):
        replica.rank, replica.rng = rank, torch.Generator().manual_seed(1234567)
        assert sum(not live for _ in range(2) for _, live in replica.batches()) > 0

    def gap(a: dict, b: dict) -> float:
        return max(float((a["weights"][k] - b["weights"][k]).abs().max()) for k in a["weights"])

    assert gap(one, two) < 1e-4, gap(one, two)      # float sums in another order only
    assert gap(one, other) > 1e-2, gap(one, other)  # the noise and the sample: what the tolerance must tell apart
    np.testing.assert_allclose(one["train_loss"], two["train_loss"], rtol=1e-4)


# ---------------------------------------------------------------------- sampling into partitions, on Ray
@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    from tsynth import Synthesizer

    d = tmp_path_factory.mktemp("scale-model")
    Synthesizer(ensemble=1, epochs=1, seed=0).fit(meters(16, 24), progress=False).save(d / "model")
    return d / "model"


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for this module's tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def read_partitions(folder: Path):
    import pyarrow.dataset as ds

    return ds.dataset(folder, format="parquet").to_table().to_pandas()


def test_sample_streams_partitions_without_ray(small_model, tmp_path):
    """Synthesizer.sample(output=...) writes a partitioned data set as batches finish; a repeated request
    resumes (nothing redrawn), another one is refused."""
    from tsynth import Synthesizer
    from tsynth.errors import ConfigError

    syn = Synthesizer.load(small_model)
    events = []
    figures = syn.sample(50, seed=1, output=tmp_path / "out", batch_size=20, on_event=events.append)
    assert figures["batches"] == 3 and figures["drawn"] == 3 and len(events) == 3
    table = read_partitions(tmp_path / "out")
    assert len(table) == 50 and table["item_id"].is_unique
    assert sorted(table["item_id"]) == sorted(f"synthetic_{i}" for i in range(50))
    assert json.loads((tmp_path / "out" / "_tsynth_sample.json").read_text())["complete"] is True
    (tmp_path / "out" / "part-000001.parquet").unlink()
    again = syn.sample(50, seed=1, output=tmp_path / "out", batch_size=20, resume=True)
    assert again["drawn"] == 1 and again["already_there"] == 2
    assert read_partitions(tmp_path / "out").sort_values("item_id").reset_index(drop=True).equals(
        table.sort_values("item_id").reset_index(drop=True))
    with pytest.raises(ConfigError, match="holds another sample.*seed"):
        syn.sample(50, seed=2, output=tmp_path / "out", batch_size=20, resume=True)
    with pytest.raises(ConfigError, match="already holds sampled partitions"):
        syn.sample(50, seed=1, output=tmp_path / "out", batch_size=20)


@pytest.mark.slow
def test_sample_on_ray_matches_local_and_survives_a_dead_worker(small_model, tmp_path, ray_cluster):
    """On a real local Ray cluster: the same series as in this process (batches are seeded by their index); a
    worker killed mid-run has its batches drawn again by a fresh one, and nothing is duplicated."""
    import signal

    from tsynth import Synthesizer

    syn = Synthesizer.load(small_model)
    syn.sample(60, seed=5, output=tmp_path / "local", batch_size=10)
    events, killed = [], []

    def on_event(event):  # the first partition written: kill the first worker, which has batches in flight
        events.append(event)
        if event["type"] == "batch" and not killed:
            victim = next(e for e in events if e["type"] == "workers")["pids"][0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    figures = syn.sample(60, seed=5, output=tmp_path / "ray", batch_size=10, engine="ray", on_event=on_event)
    assert figures["batches"] == 6 and figures["engine"] == "ray"
    assert any(e["type"] == "worker lost" for e in events)
    batches = [e["batch"] for e in events if e["type"] == "batch"]
    assert sorted(batches) == list(range(6))  # each batch reported written once
    got, want = read_partitions(tmp_path / "ray"), read_partitions(tmp_path / "local")
    assert len(got) == 60 and got["item_id"].is_unique
    key = ["item_id"]
    assert got.sort_values(key).reset_index(drop=True).equals(want.sort_values(key).reset_index(drop=True))
    assert not list((tmp_path / "ray").glob(".part-*"))


def test_unanswering_ray_address_fails_fast(small_model, tmp_path):
    """RAY_ADDRESS pointing at nothing: one clear line within seconds, exit status 2, nothing written."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    t0 = time.time()
    r = tsynth("sample", str(small_model), "-n", "10", "-o", str(tmp_path / "out"), "--engine", "ray",
               env={"RAY_ADDRESS": f"127.0.0.1:{port}"})
    assert r.returncode == 2, r.stderr
    assert f"the Ray cluster at 127.0.0.1:{port} does not answer" in r.stderr
    assert time.time() - t0 < 60  # the interpreter's start-up included; the check itself waits at most 3 s
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------- a partitioned data set, read as a stream
def write_partitions(folder: Path, sizes=(30, 25, 40), length: int = 60) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for k, n in enumerate(sizes):
        part = meters(n, length, seed=k)
        part.item_id[:] = [f"m{first + i}" for i in range(n)]
        part.write(folder / f"part-{k}.parquet")
        first += n


def test_row_stream_visits_every_training_window_once(tmp_path):
    """An epoch's rows cover each training series' windows exactly once (leftovers carried across buffers), never
    a validation series; the sample is uniform-sized and seeded."""
    from tsynth.backends.local import window_rows
    from tsynth.codecs.steps import StepCodec
    from tsynth.codecs.values import ValueCodec
    import torch

    from tsynth.streaming import PartitionedSeries, RowStream

    write_partitions(tmp_path / "d")
    data = PartitionedSeries(tmp_path / "d", sample_size=40, seed=0)
    sample = data.scan()
    assert len(sample) == 40 and data.n_series == 95
    assert list(PartitionedSeries(tmp_path / "d", sample_size=40, seed=0).scan().item_id) == list(sample.item_id)
    codec = StepCodec.fit(sample, ValueCodec(), context=24)
    valid = sample.subset(np.arange(5))
    stream = RowStream(data, codec, valid, lambda lengths: window_rows(lengths, 24), buffer_series=20)
    seen = []
    for rows in stream.epoch(torch.Generator().manual_seed(0), 16):
        assert len(rows) <= 16 and (rows[:, 1] == -1).all()
        assert (rows[:, 0] >= len(valid)).all()  # validation series come first in the arrays, never trained on
        assert (rows[:, 0] < len(stream.arrays["lengths"])).all()  # rows of the buffer loaded for them
        seen += rows[:, 0].tolist()
    assert len(seen) == len(stream) == (95 - 5) * 3  # 60 steps, context 24: three windows a series


@pytest.mark.slow
def test_fit_streams_a_partitioned_data_set(tmp_path):
    """tsynth fit FOLDER: the codec from a stated uniform sample, the model trains and samples."""
    write_partitions(tmp_path / "d")
    r = tsynth("fit", "d", "-o", "model", "--ensemble", "1", "--epochs", "2", "--context", "24",
               "--domain", "electricity", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--domain 'electricity' picks no prior here" in r.stderr  # said, not silently ignored
    doc = json.loads((tmp_path / "model" / "tsynth.json").read_text())
    data = doc["training"]["data"]
    assert data["partitions"] == 3 and data["series"] == 95
    assert data["codec_fitted_on"]["series"] == 95 and "uniform sample" in data["codec_fitted_on"]["how"]
    assert doc["training"]["members"][0]["epochs_run"] == 2
    from tsynth import Synthesizer

    assert Synthesizer.load(tmp_path / "model").sample(3, seed=0).length == 60


def test_partition_with_another_schema_is_refused_before_training(tmp_path):
    """A partition with other columns or types is named, exit status 2, before anything is read or trained."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_partitions(tmp_path / "d")
    table = pq.read_table(tmp_path / "d" / "part-1.parquet")
    pq.write_table(table.append_column("region", pa.array(["north"] * len(table))), tmp_path / "d" / "part-1.parquet")
    from tsynth.cli import main

    assert main(["fit", str(tmp_path / "d"), "-o", str(tmp_path / "model")]) == 2
    assert not (tmp_path / "model").exists()
    from tsynth.errors import DataError
    from tsynth.streaming import PartitionedSeries

    with pytest.raises(DataError, match="part-1.parquet: this partition has another schema than part-0.parquet "
                                        r"\(an extra column 'region'\)"):
        PartitionedSeries(tmp_path / "d")


def test_series_split_over_partitions_is_refused(tmp_path):
    from tsynth.errors import DataError
    from tsynth.streaming import PartitionedSeries

    write_partitions(tmp_path / "d", sizes=(10, 10))
    again = meters(10, 60, seed=5)
    again.item_id[:] = [f"m{i}" for i in range(10)]  # the ids of part-0
    again.write(tmp_path / "d" / "part-9.parquet")
    with pytest.raises(DataError, match=r"a series id appears 2 times \(in part-0.parquet, part-9.parquet\)"):
        PartitionedSeries(tmp_path / "d").scan()


# ---------------------------------------------------------------------- evaluation on a subsample
def test_evaluate_on_a_seeded_subsample_with_confidence_intervals(tmp_path):
    """A partitioned set is sampled as a stream; repeats give 95 % intervals of the headline figures; the draw
    is stated and seeded."""
    from tsynth.evalscale import evaluate_subsampled
    from tsynth.streaming import PartitionedSeries

    write_partitions(tmp_path / "d", sizes=(30, 30), length=24)
    synthetic = meters(80, 24, seed=9)
    ev, sets = evaluate_subsampled(PartitionedSeries(tmp_path / "d"), synthetic, size=25, repeats=3, seed=4, fast=True)
    info = ev.summary["subsample"]
    assert info["sets"] == {"train": 60, "synthetic": 80} and info["seeds"] == [4, 5, 6]
    assert len(sets["train"]) == len(sets["synthetic"]) == 25 == ev.summary["n_train"]
    lo, hi = info["ci95"]["disc_gbm"]
    assert lo <= np.mean(info["values"]["disc_gbm"]) <= hi
    again, _ = evaluate_subsampled(PartitionedSeries(tmp_path / "d"), synthetic, size=25, repeats=1, seed=4, fast=True)
    assert again.summary["headline"]["disc_gbm"] == ev.summary["headline"]["disc_gbm"]  # seeded: the same draw


def test_evaluate_refuses_a_partitioned_set_without_subsample(tmp_path):
    from tsynth.cli import main

    write_partitions(tmp_path / "d", sizes=(10, 10), length=24)
    meters(20, 24, seed=9).write(tmp_path / "s.parquet")
    assert main(["evaluate", "--train", str(tmp_path / "d"), "--synthetic", str(tmp_path / "s.parquet"),
                 "-o", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r" / "metrics.json").exists()
