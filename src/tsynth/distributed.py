"""Data-parallel training over several processes (``accelerate launch`` or ``tsynth fit --processes N``).

Every process runs the same fit: it reads the data, fits the codec the same way and draws the same
permutation of training rows each epoch (the generator is seeded from the run's seed), then trains on its
own share of each batch (rows ``rank, rank + N, ...``), so the global batch is the configured one whatever
``N``; ``accelerate`` wraps the model in ``DistributedDataParallel`` and averages the gradients (gloo on CPUs,
NCCL on GPUs). Training and validation losses are averaged over the processes, so early stopping decides the
same everywhere; validation rows are split between the processes. Checkpoints are written by the main process
(``accelerate`` saves each process' random state beside them) and the model directory is written once, by the
main process. Before the first step the processes compare a fingerprint of their data and settings and refuse
to train when they differ. Under DP-SGD the processes share the secret seed and split the Poisson sample of items
instead of the batch, and opacus adds up the clipped gradients (:mod:`tsynth.privacy`).

:func:`launch` is what ``--processes N`` does on one machine: it starts N copies of the same command with the
environment ``accelerate launch`` / ``torchrun`` set (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import ConfigError

RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return default


def world_size() -> int:
    """Processes of this run, from the launcher's environment (1 when not launched by one)."""
    return _env_int(SIZE_VARS, 1)


def process_rank() -> int:
    """This process' rank (0: the main process)."""
    return _env_int(RANK_VARS, 0)


def is_main_process() -> bool:
    return process_rank() == 0


def check_options(time_limit: float | None) -> None:
    """Refuse what data-parallel training does not support: a time limit (each process would plan its own number
    of steps from its own pace, and processes that take different numbers of steps wait on each other for ever)."""
    if world_size() > 1 and time_limit is not None:
        raise ConfigError(f"a time limit is not supported with {world_size()} training processes: the processes "
                          "would plan different numbers of steps; cap the epochs instead (--epochs)")


def broadcast_seed(value: int, cpu: bool) -> int:
    """Rank 0's ``value`` on every process of the run (``value`` itself in one process). DP-SGD's secret seed
    goes through here, so that every process draws the same Poisson sample of items and takes its share of it.
    Starts the process group (accelerate's shared state, with the same ``cpu`` choice the training's
    ``Accelerator`` makes) when it is not running yet."""
    if world_size() <= 1:
        return value
    import torch.distributed as dist
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    t = torch.tensor([value], dtype=torch.int64, device=state.device)
    dist.broadcast(t, 0)
    return int(t.item())


def make_accelerator(cpu: bool):
    """The ``Accelerator`` of a training run. The learning-rate schedule steps once per optimizer step (not once
    per process, accelerate's default for per-process batches: here the batch is global). Every parameter of the
    local models takes part in the loss (DP-SGD needs that too), so DDP looks for no unused ones."""
    from accelerate import Accelerator

    return Accelerator(cpu=cpu, step_scheduler_with_optimizer=False)


def check_same_data(accelerator, fingerprint: dict) -> None:
    """Refuse to train when the processes' fingerprints (data digests, model size, settings) differ: each would
    train on other data or another model, and the averaged gradients would mean nothing."""
    if accelerator.num_processes <= 1:
        return
    from accelerate.utils import gather_object

    everyone = gather_object([fingerprint])
    differ = [rank for rank, fp in enumerate(everyone) if fp != everyone[0]]
    if differ:
        import torch.distributed as dist

        if dist.is_initialized():  # leave the group together: a peer gone first makes gloo abort this process
            dist.barrier()
            dist.destroy_process_group()
        keys = sorted(k for k in everyone[0] if everyone[differ[0]].get(k) != everyone[0].get(k))
        raise ConfigError(f"the {accelerator.num_processes} training processes disagree: process {differ[0]} has "
                          f"other {', '.join(keys)} than process 0; give every process the same data and options")


def shard_rows(rows: torch.Tensor, accelerator) -> torch.Tensor:
    """This process' share of a global batch of rows: every N-th row from its rank on (at least one row: a last
    batch smaller than N gives the others its first row again, so that every process takes every step)."""
    n = accelerator.num_processes
    if n <= 1:
        return rows
    part = rows[accelerator.process_index::n]
    return part if len(part) else rows[:1]


def mean_over_processes(accelerator, total: float, count: int) -> float:
    """The mean of a figure summed over rows (``total`` over ``count`` here) across all processes (NaN where no
    process counted any). Every process must call it, with or without rows of its own."""
    n = float(count)
    if accelerator.num_processes > 1:
        t = torch.tensor([total, n], dtype=torch.float64, device=accelerator.device)
        total, n = (float(x) for x in accelerator.reduce(t, reduction="sum"))
    return total / n if n else float("nan")


def sharded_loss(accelerator, evaluate, rows, *args: Any) -> float:
    """``evaluate(rows, *args)`` (a mean over rows) on this process' contiguous share of ``rows``, averaged
    over the processes with each share's weight."""
    if accelerator.num_processes <= 1:
        return evaluate(rows, *args)
    n, k = len(rows), accelerator.process_index
    lo, hi = n * k // accelerator.num_processes, n * (k + 1) // accelerator.num_processes
    mine = rows[lo:hi]
    total = evaluate(mine, *args) * len(mine) if len(mine) else 0.0
    return mean_over_processes(accelerator, total, len(mine))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: Sequence[str], processes: int, threads: int | None = None) -> tuple[int, str | None]:
    """Run ``python -m tsynth.cli ARGV`` as ``processes`` data-parallel processes on this machine and wait for
    them; returns the first non-zero exit status (the others are then stopped), else 0, and the last line another
    process than the main one wrote to its standard error when it failed first (else None).

    The main process' output goes to this terminal; the others' standard output is discarded and their standard
    error kept in a private temporary file. ``threads``: torch threads per process (default: the cores divided
    among them)."""
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {processes}")
    cores = len(os.sched_getaffinity(0))
    threads = threads or max(1, cores // processes)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(processes),
           "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(threads)}
    logs = Path(tempfile.mkdtemp(prefix="tsynth-launch-"))
    procs: list[subprocess.Popen] = []
    try:
        for rank in range(processes):
            err = None if rank == 0 else open(logs / f"rank{rank}.err", "w")
            procs.append(subprocess.Popen([sys.executable, "-m", "tsynth.cli", *argv],
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                          stdout=None if rank == 0 else subprocess.DEVNULL, stderr=err))
            if err is not None:
                err.close()
        status, message = 0, None
        pending = list(range(processes))
        while pending:
            for rank in list(pending):
                try:
                    code = procs[rank].wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                pending.remove(rank)
                if code != 0 and status == 0:
                    status = code
                    if rank != 0:
                        text = (logs / f"rank{rank}.err").read_text(errors="replace").strip().splitlines()
                        if text:
                            message = f"training process {rank} failed: {text[-1]}"
                    for other in pending:  # the rest would wait for the failed one for ever
                        procs[other].terminate()
        return status, message
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs.iterdir():
            f.unlink()
        logs.rmdir()
