"""Sampling into a partitioned Parquet data set: in this process, or spread over the workers of a Ray cluster.

A sample of ``n`` series is cut into batches of ``batch_size``; batch ``k`` holds series ``k * batch_size``
onwards, is seeded from the seed and ``k`` (so the series do not depend on which worker draws them, nor on how
many there are) and is written, as it finishes, to ``part-KKKKKK.parquet`` in the output folder (one file
per batch, written to a hidden temporary file and renamed into place, so a partition is either whole or
absent). Nothing is gathered: the driver hands out batch numbers and counts finished partitions.

``_tsynth_sample.json`` in the folder records the request (model, ``n``, batch size, seed, sampling options)
before the first batch, and ``"complete": true`` once every partition is there. A run that stopped part-way
continues with ``resume``: the partitions already written are kept and only the missing ones are drawn; a
request that differs from the recorded one is refused. Readers of Parquet data sets (pyarrow, pandas, Spark)
skip the files whose names start with ``_`` or ``.``.

On Ray (:func:`sample_to_directory` with ``engine="ray"``) each worker is an actor that loads the model once
and then draws batch after batch; the output folder must be reachable from every node (a shared file system).
A worker that dies has its unfinished batches handed to a fresh worker: a batch's partition name is fixed, so a
batch drawn twice is written once. The cluster is the one at ``address`` (default ``$RAY_ADDRESS``), checked
to answer within seconds before Ray connects, or a local one with ``workers`` CPUs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import ConfigError, TsynthError

log = logging.getLogger("tsynth")

MANIFEST = "_tsynth_sample.json"
DEFAULT_BATCH = 4096
CONNECT_TIMEOUT_S = 3.0
MAX_TRIES = 3  # a batch whose worker died this many times fails the run (it is likely what kills them)


def partition_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def batch_seed(seed: int, k: int) -> int:
    """Batch ``k``'s seed: from the run's seed and ``k`` alone."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, k]).generate_state(1)[0])


def model_digest(model_dir: str | os.PathLike) -> str:
    """What identifies a model directory: a digest of its ``tsynth.json`` (options, codec, training figures)."""
    return hashlib.sha256((Path(model_dir) / "tsynth.json").read_bytes()).hexdigest()[:16]


def peak_memory_mb() -> float:
    """This process' peak resident memory so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_batch(syn, out_dir: str | os.PathLike, k: int, first: int, size: int, seed: int,
                options: dict[str, Any]) -> dict[str, Any]:
    """Draw batch ``k`` (``size`` series, ids counted from ``first``) and write its partition; returns what the
    driver counts (never the series)."""
    t0, cpu0 = time.time(), time.process_time()
    part = syn.sample(size, seed=batch_seed(seed, k), progress=False, **options)
    for i, x in enumerate(part.item_id):  # unconditional ids count on across batches
        if x == f"synthetic_{i}":
            part.item_id[i] = f"synthetic_{first + i}"
    part.write(Path(out_dir) / partition_name(k))
    return {"batch": k, "series": len(part), "seconds": time.time() - t0, "cpu_seconds": time.process_time() - cpu0,
            "pid": os.getpid(), "peak_mb": peak_memory_mb()}


def prepare_output(out_dir: str | os.PathLike, request: dict[str, Any], resume: bool, overwrite: bool) -> list[int]:
    """Check the output folder against ``request`` and record it; returns the batches still to draw."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: is a file; sampling with an engine writes a folder of Parquet partitions")
    manifest = out / MANIFEST
    parts = sorted(out.glob("part-*.parquet")) if out.is_dir() else []
    if manifest.exists() or parts:
        if resume and manifest.exists():
            try:
                recorded = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"--resume: {manifest} cannot be read ({e}); sample into a new folder") from None
            differ = [key for key in request if recorded.get(key) != request[key]]
            if differ:
                raise ConfigError(f"--resume: {out} holds another sample ({', '.join(differ)} differ from this "
                                  "request); repeat that request, or sample into a new folder")
        elif overwrite:
            for p in [*parts, manifest]:
                p.unlink(missing_ok=True)
            parts = []
        else:
            raise ConfigError(f"-o {out}: already holds sampled partitions; pass --resume to continue that sample "
                              "or --overwrite to replace it")
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"-o {out}: a folder that holds other files; sample into an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    _write_manifest(out, {**request, "complete": False})
    batches = -(-request["n"] // request["batch_size"])
    done = {int(p.name[5:11]) for p in out.glob("part-*.parquet") if p.name[5:11].isdigit()}
    extra = sorted(k for k in done if k >= batches)
    if extra:
        raise ConfigError(f"{out}: holds partition {partition_name(extra[0])} beyond this sample's {batches} batches")
    return [k for k in range(batches) if k not in done]


def _remove_stale(out: Path) -> None:
    """Remove the temporary files of workers that died while writing (before a run, and after one: every worker
    is gone by then, so a temporary file left is a dead worker's)."""
    for stale in out.glob(".part-*"):
        stale.unlink(missing_ok=True)


def _write_manifest(out: Path, doc: dict[str, Any]) -> None:
    tmp = out / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / MANIFEST)


def sample_to_directory(syn, n: int, out_dir: str | os.PathLike, *, model_dir: str | os.PathLike | None = None,
                        engine: str = "local", batch_size: int = DEFAULT_BATCH, seed: int = 0, resume: bool = False,
                        overwrite: bool = False, address: str | None = None, workers: int | None = None,
                        on_event: Callable[[dict], None] | None = None, **options: Any) -> dict[str, Any]:
    """Sample ``n`` series from ``syn`` (loaded from ``model_dir``; Ray workers load it from there) into the
    partitioned data set ``out_dir`` (see the module docstring). ``options``: :meth:`Synthesizer.sample`'s
    (conditions, temperature, top_p, length, start, gaps). ``on_event`` gets ``{"type": "batch", ...}`` for each
    partition written and ``{"type": "workers", "pids": [...]}`` / ``{"type": "worker lost", ...}`` on Ray.
    Returns the run's figures: batches drawn and already there, series, seconds, peak memory per worker."""
    if n < 1:
        raise ConfigError(f"the number of series to sample must be positive, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")
    if engine not in ("local", "ray"):
        raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray" and model_dir is None:
        raise ConfigError("sampling on Ray needs the model's directory (Synthesizer.load(path) or save it first)")
    digest = model_digest(model_dir) if model_dir is not None else hashlib.sha256(
        json.dumps(syn.info, sort_keys=True, default=str).encode()).hexdigest()[:16]
    request = {"model": digest, "n": int(n), "batch_size": int(batch_size), "seed": int(seed),
               "options": json.loads(json.dumps(options, default=str))}
    started = connect(address, workers) if engine == "ray" else False  # before anything is written
    try:
        todo = prepare_output(out_dir, request, resume, overwrite)
        t0 = time.time()
        if engine == "ray" and model_dir is not None:
            runs = _run_on_ray(type(syn).load, str(Path(model_dir).resolve()), str(Path(out_dir).resolve()), n,
                               todo, request, options, workers, on_event)
    finally:
        if started:
            import ray

            ray.shutdown()
    batches = -(-n // batch_size)
    if engine == "local":
        runs = []
        for k in todo:
            runs.append(write_batch(syn, out_dir, k, k * batch_size, min(batch_size, n - k * batch_size), seed, options))
            if on_event is not None:
                on_event({"type": "batch", **runs[-1]})
    missing = [k for k in range(batches) if not (Path(out_dir) / partition_name(k)).exists()]
    if missing:  # every batch reported written: a partition gone now was removed by someone else
        raise TsynthError(f"{out_dir}: partition {partition_name(missing[0])} is missing after the run")
    _remove_stale(Path(out_dir))
    _write_manifest(Path(out_dir), {**request, "complete": True})
    peaks: dict[int, float] = {}
    for r in runs:
        peaks[r["pid"]] = max(peaks.get(r["pid"], 0.0), r["peak_mb"])
    return {"batches": batches, "drawn": len(runs), "already_there": batches - len(todo), "series": n,
            "seconds": time.time() - t0, "engine": engine, "workers": len(peaks),
            "peak_mb_per_worker": sorted(peaks.values()), "redone": sum(r.get("redone", 0) for r in runs),
            "cpu_seconds": sum(r["cpu_seconds"] for r in runs)}


# ---------------------------------------------------------------------- Ray
def check_address(address: str) -> None:
    """Refuse a Ray address whose host does not answer within ``CONNECT_TIMEOUT_S`` (``ray.init`` would retry
    for minutes); ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        why = (f"no answer within {CONNECT_TIMEOUT_S:.0f} s" if isinstance(e, socket.timeout)
               else (e.strerror or str(e)).lower())
        raise ConfigError(f"the Ray cluster at {address} does not answer ({why}): start it (ray start --head) or "
                          "fix RAY_ADDRESS") from None


def connect(address: str | None, workers: int | None) -> bool:
    """Connect to the Ray cluster at ``address`` (default ``$RAY_ADDRESS``), or start a local one with
    ``workers`` CPUs; returns whether this call started the connection (and so should shut it down)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("sampling on Ray needs the ray package: pip install 'tsynth[scale]'") from None
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=workers or len(os.sched_getaffinity(0)), include_dashboard=False, log_to_driver=False)
    return True


class SampleWorker:
    """A Ray actor: loads the model once (``load``: ``Synthesizer.load``), then writes batch after batch."""

    def __init__(self, load: Callable[[str], Any], model_dir: str, threads: int) -> None:
        import torch

        from .sample import set_sampling_cores

        torch.set_num_threads(threads)
        set_sampling_cores(threads)
        self.syn = load(model_dir)

    def pid(self) -> int:
        return os.getpid()

    def run(self, out_dir: str, k: int, first: int, size: int, seed: int, options: dict) -> dict:
        return write_batch(self.syn, out_dir, k, first, size, seed, options)


def _run_on_ray(load: Callable[[str], Any], model_dir: str, out_dir: str, n: int, todo: list[int], request: dict, options: dict,
                workers: int | None, on_event: Callable[[dict], None] | None) -> list[dict]:
    """Draw batches ``todo`` on the connected Ray cluster (see the module docstring)."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    size = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    size = min(size, max(1, len(todo)))
    actor_class: Any = ray.remote(num_cpus=1, max_restarts=0)(SampleWorker)
    actors = [actor_class.remote(load, model_dir, 1) for _ in range(size)]
    try:
        if on_event is not None:
            on_event({"type": "workers", "pids": ray.get([a.pid.remote() for a in actors])})
        bs, seed = request["batch_size"], request["seed"]
        pending = list(todo)
        tries: dict[int, int] = {}
        inflight: dict[Any, tuple[int, Any, int]] = {}  # ref -> (worker slot, actor, batch)
        runs: list[dict] = []

        def submit(slot: int) -> None:
            if pending:
                k = pending.pop(0)
                ref = actors[slot].run.remote(out_dir, k, k * bs, min(bs, n - k * bs), seed, options)
                inflight[ref] = (slot, actors[slot], k)

        for _ in range(2):  # two batches a worker, one round at a time: the next is queued while one is drawn
            for slot in range(size):
                submit(slot)
        lost = 0
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            slot, actor, k = inflight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError) as e:
                tries[k] = tries.get(k, 0) + 1
                if tries[k] >= MAX_TRIES:
                    raise TsynthError(f"sampling batch {k} killed its worker {tries[k]} times ({e}); see the Ray "
                                      "logs (out of memory?)") from None
                pending.insert(0, k)  # redone first; its partition name is fixed, so it is written once
                if actors[slot] is actor:  # the first of its batches to report: replace the worker
                    lost += 1
                    if lost > 2 * size + MAX_TRIES:
                        raise TsynthError(f"{lost} Ray workers died while sampling; see the Ray logs") from None
                    actors[slot] = actor_class.remote(load, model_dir, 1)
                    if on_event is not None:
                        on_event({"type": "worker lost", "batch": k, "error": type(e).__name__})
                    submit(slot)
                submit(slot)
                continue
            except RayTaskError as e:  # the worker raised: a tsynth error is the user's, one line
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
                if isinstance(cause, TsynthError):
                    raise cause from None
                raise
            result["redone"] = tries.get(k, 0)
            runs.append(result)
            if on_event is not None:
                on_event({"type": "batch", **result})
            submit(slot)
        return runs
    finally:  # the workers go however the run ends (on a shared cluster they would hold their CPUs)
        for a in actors:
            ray.kill(a)

