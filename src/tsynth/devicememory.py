"""What training and sampling do when the GPU (or the machine) runs out of memory.

Sampling draws again at half the batch size, as often as it takes (a warning says so each time): batches of series
are independent, and each retry starts the draw anew, so the result is exactly what asking for that batch size
gives. Training does not change its batch on its own (the batch size shapes the fit, and under DP the noise is
calibrated for it): it stops with one line that names the batch size and the value to try. On a CPU, an allocation
the machine cannot serve is treated alike; the operating system may instead stop the process before that."""

from __future__ import annotations

import gc
import logging
from typing import Callable, TypeVar

import torch

from .errors import DeviceMemoryError

log = logging.getLogger("tsynth")

T = TypeVar("T")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is torch's out-of-memory error (any accelerator) or its CPU allocator's failure."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def release_memory() -> None:
    """Give back what the failed attempt held: its tensors (once unreferenced) and the GPU allocator's cache."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def memory_note() -> str:
    """The GPU's free and total memory, for a message (empty without a GPU)."""
    if not torch.cuda.is_available():
        return ""
    free, total = torch.cuda.mem_get_info()
    return f" ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free on {torch.cuda.get_device_name()})"


def device_name() -> str:
    """What ran out of memory, for a message: the GPU where there is one, else the machine."""
    return "the GPU" if torch.cuda.is_available() else "the machine"


def draw_within_memory(draw: Callable[[int], T], batch_size: int, what: str) -> T:
    """``draw(batch_size)``; where it runs out of memory, ``draw`` again at half the batch size (a warning says so),
    down to one series a batch, past which :class:`DeviceMemoryError` says what else to lower. ``what`` names the
    work in messages ("drawing series of 100 steps")."""
    while True:
        try:
            return draw(batch_size)
        except Exception as e:  # noqa: BLE001 (only out-of-memory errors are handled; the rest propagate)
            if not is_out_of_memory(e):
                raise
        release_memory()
        if batch_size <= 1:
            raise DeviceMemoryError(f"{device_name()} ran out of memory {what} one series at a time{memory_note()}: "
                                    "draw shorter series (--length), or sample on a machine with more memory")
        log.warning("%s ran out of memory %s in batches of %d series%s: drawing again in batches of %d",
                    device_name(), what, batch_size, memory_note(), batch_size // 2)
        batch_size //= 2


def train_within_memory(run: Callable[[], T], batch_size: int) -> T:
    """``run()``, a fit (or a part of one) at ``batch_size`` rows a step; where it runs out of memory,
    :class:`DeviceMemoryError` names the batch size to try instead."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 (only out-of-memory errors are translated; the rest propagate)
        if not is_out_of_memory(e):
            raise
    release_memory()  # outside the handler: the failed step's tensors are unreferenced by now
    raise _training_error(batch_size)


def _training_error(batch_size: int) -> DeviceMemoryError:
    if batch_size > 1:
        advice = f"lower the batch size (--batch-size {batch_size // 2}, or batch_size={batch_size // 2})"
    else:
        advice = "one row a step does not fit either: a smaller model (--preset) or shorter windows (--context, --length)"
    return DeviceMemoryError(f"{device_name()} ran out of memory training at batch size {batch_size}{memory_note()}: "
                             f"{advice}")
