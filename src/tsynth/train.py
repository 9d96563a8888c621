"""The one training loop of the local backend, built on ``accelerate``.

It trains a Hugging Face causal LM on token sequences from the value codec: AdamW, linear warm-up then
cosine decay, a loss that spreads each value target over neighbouring bins (a Gaussian of
``smoothing`` bins, so predicting bin 101 for 100 is nearly right; by default per channel, narrower where
the channel moves by fewer bins a step: :func:`step_smoothing`), condition dropout, a validation
split of the training items with early stopping, a checkpoint at the end of every epoch and resume.
``accelerate launch`` runs the same loop on several GPUs or nodes; optional DP-SGD plugs in through
``dp`` (see :mod:`tsynth.privacy`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .devicememory import train_within_memory
from .errors import ConfigError
# the token model's definition lives in tokenmodel.py; these names stay importable from here
from .tokenmodel import FACTORED_POSITIONS_FROM, PRESETS, TRAINABLE, build_model, factor_positions, select_trainable  # noqa: F401

log = logging.getLogger(__name__)


class _TiedWeightsNote(logging.Filter):
    """Drops accelerate's "Removed shared tensor" warning, which ``save_state`` logs at every checkpoint of a model
    with tied weights (GPT-2's output layer is its input embedding): safetensors stores the tensor once and loading
    ties it again (a resumed fit continues with the same losses), so it says nothing a user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@dataclass
class TrainConfig:
    """Settings of one training run (all recorded in ``tsynth.json``)."""

    preset: str = "tiny"
    epochs: int = 150
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    dropout: float = 0.1
    smoothing: float | None = None  # bins; None: per channel from the training data (step_smoothing), 2 under DP
    condition_dropout: float = 0.1
    # step model: the share of the values shown as inputs that training moves by about a bin (None: INPUT_NOISE where
    # a step holds several channels, else 0; see stepmodel.input_noise)
    input_noise: float | None = None
    patience: int = 20
    seed: int = 0
    time_limit_s: float | None = None  # fewer steps (and a shorter lr schedule) when they would not fit (the local
    # backend reads it as the whole fit's limit and gives each member its share)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown model preset {self.preset!r} (choose from {', '.join(PRESETS)})")
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ConfigError("epochs, batch_size and learning_rate must be positive")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ConfigError(f"time_limit_s must be positive, got {self.time_limit_s}")
        if self.input_noise is not None and not 0 <= self.input_noise < 1:
            raise ConfigError(f"input_noise must be a share in [0, 1) or None, got {self.input_noise}")
        if self.smoothing is not None and not self.smoothing >= 0:
            raise ConfigError(f"smoothing must be a width in bins (0 or more) or None, got {self.smoothing}")


@dataclass
class TrainResult:
    """What a run did: figures that go into the artifact."""

    epochs_run: int = 0
    best_epoch: int = 0
    steps: int = 0
    tokens: int = 0
    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    epochs_planned: int = 0  # cfg.epochs, or fewer where the time limit cut the plan (the last may be partial)
    steps_planned: int = 0   # optimizer steps the lr schedule ends with
    time_limited: bool = False


MAX_SMOOTHING = 2.0  # bins: the widest smoothing, and the data-independent one under DP


def step_smoothing(bins: np.ndarray, lengths: np.ndarray) -> list[float]:
    """The label-smoothing width of each channel: half its median step (|bin change| between consecutive values
    of a series), at most ``MAX_SMOOTHING`` bins.

    A fixed width is noise where a channel moves by less than it a step: the model learns to spread each value
    over that many bins, and samples come out rougher than the data (prices that move by a median 1 bin a day;
    docs/model-and-training.md, "Training"). ``bins``: (n, steps, channels) from
    :meth:`ValueCodec.value_bins`; steps at or beyond ``lengths`` are ignored.
    """
    bins = np.asarray(bins, dtype=np.float64)
    inside = np.arange(bins.shape[1])[None, :] < np.asarray(lengths)[:, None]
    steps = np.abs(np.diff(bins, axis=1))[inside[:, 1:]]  # (k, channels): both ends inside the series
    if len(steps) == 0:  # one step per series: nothing to measure
        return [MAX_SMOOTHING] * bins.shape[2]
    return [float(min(MAX_SMOOTHING, np.median(steps[:, c]) / 2)) for c in range(bins.shape[2])]


def smoothed_kernel(n_values: int, sigma: float, values: torch.Tensor | None = None) -> torch.Tensor:
    """Row k: the target distribution over value bins for true bin k (a discretised Gaussian of width ``sigma``
    bins). With ``values`` (n_values,), each bin's value in units of the median bin width
    (:func:`tsynth.stepmodel.bin_values`), two bins lie the larger of their distances in bins and in median
    widths apart: a wide edge bin keeps its target's mass instead of lending it to bins far away in value."""
    k = torch.arange(n_values, dtype=torch.float32)
    if sigma <= 0:
        return torch.eye(n_values)
    dist = (k[None, :] - k[:, None]).abs()
    if values is not None:
        v = values.float()
        dist = torch.maximum(dist, (v[None, :] - v[:, None]).abs())
    w = torch.exp(-0.5 * (dist / sigma) ** 2)
    return w / w.sum(1, keepdim=True)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, value_lo: int, value_hi: int,
                  kernels: torch.Tensor, first_value: int = 0, reduction: str = "mean") -> torch.Tensor:
    """Next-token loss: cross-entropy on non-value targets, smoothed cross-entropy on value targets.

    ``targets`` holds -100 where nothing is predicted. ``kernels`` (channels, bins, bins): each channel's
    :func:`smoothed_kernel`; values follow each other channel by channel from sequence position
    ``first_value`` on (target j is the token at position j + 1). With ``reduction="none"`` it returns the mean
    loss of each sequence (used for per-example gradients and likelihood audits).
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    valid = targets != -100
    is_value = valid & (targets >= value_lo) & (targets < value_hi)
    safe = torch.where(valid, targets, torch.zeros_like(targets))
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    channel = (torch.arange(1, targets.shape[1] + 1, device=targets.device) - first_value) % len(kernels)
    soft = kernels.to(logp.device)[channel, (safe - value_lo).clamp(0, value_hi - value_lo - 1)]
    smooth = -(soft * logp[..., value_lo:value_hi]).sum(-1)
    per_tok = torch.where(is_value, smooth, nll) * valid
    if reduction == "none":
        return per_tok.sum(1) / valid.sum(1).clamp(min=1)
    return per_tok.sum() / valid.sum().clamp(min=1)


def shift(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets; <pad> targets are ignored."""
    inputs = tokens[:, :-1]
    targets = tokens[:, 1:].clone()
    targets[targets == 0] = -100
    return inputs, targets


def value_token_loss(value_range: tuple[int, int], smoothing: float | list[float], first_value: int = 0,
                     values: torch.Tensor | None = None) -> Callable:
    """``loss(model, tokens, reduction)`` for value-token sequences (smoothed on value targets): ``smoothing``
    one width for every value, or one per channel, the first value at sequence position ``first_value``;
    ``values`` (channels, bins): each channel's bin values for :func:`smoothed_kernel`."""
    widths = [smoothing] if isinstance(smoothing, (int, float)) else list(smoothing)
    n = value_range[1] - value_range[0]
    # one kernel per width, or per channel where the channels' bin values differ
    rows = len(widths) if values is None else len(values)
    kernels = torch.stack([smoothed_kernel(n, widths[c % len(widths)], None if values is None else values[c])
                           for c in range(rows)])

    def loss(model, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        inputs, targets = shift(tokens)
        # explicit per-row positions: per-example gradients (DP-SGD) need a batch dimension everywhere
        positions = torch.arange(inputs.shape[1], device=inputs.device).expand_as(inputs)
        logits = model(input_ids=inputs, position_ids=positions).logits
        return sequence_loss(logits, targets, *value_range, kernels.to(tokens.device), first_value, reduction)

    return loss


def train_device() -> str:
    """Where models train and sample: the GPU where there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def seconds_per_step(model, tokens: np.ndarray, loss_fn: Callable, batch_size: int, steps: int = 3) -> float:
    """Seconds one training step of ``model`` takes here, on its device and with torch's current threads: one
    untimed and ``steps`` timed AdamW steps on the first rows of ``tokens``. It trains ``model``: pass a
    throwaway one. Running out of memory raises :class:`~tsynth.errors.DeviceMemoryError` (as in :func:`train_lm`)."""
    return train_within_memory(lambda: _seconds_per_step(model, tokens, loss_fn, batch_size, steps), batch_size)


def _seconds_per_step(model, tokens: np.ndarray, loss_fn: Callable, batch_size: int, steps: int) -> float:
    model.train()
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    rows = torch.as_tensor(tokens[:batch_size]).to(device)
    for k in range(steps + 1):
        if k == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        loss_fn(model, rows).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def drop_conditions(tokens: torch.Tensor, field_slots: list[tuple[int, int]], p: float,
                    gen: torch.Generator) -> torch.Tensor:
    """Replace each condition token by its field's unknown token with probability ``p``."""
    if p <= 0 or not field_slots:
        return tokens
    tokens = tokens.clone()
    for pos, unknown_id in field_slots:
        hit = torch.rand(tokens.shape[0], generator=gen) < p
        tokens[hit, pos] = unknown_id
    return tokens


def train_lm(model, train_tokens: np.ndarray, valid_tokens: np.ndarray | None, loss_fn: Callable,
             field_slots: list[tuple[int, int]], cfg: TrainConfig, checkpoint_dir: Path | None = None,
             resume: bool = False, callback: Callable[[dict], None] | None = None, dp=None,
             progress: bool = True, source_arrays: dict[str, np.ndarray] | None = None,
             stream=None, micro_batches: Callable[[torch.Tensor], list[tuple[torch.Tensor, float]]] | None = None
             ) -> tuple[object, TrainResult]:
    """Train ``model`` on token arrays; returns the best model (lowest validation loss) and the figures.

    ``loss_fn(model, batch, reduction)`` computes the loss of a batch of rows of the token arrays
    (:func:`value_token_loss` for value tokens; other modes pass their own). ``callback(event)`` gets
    ``{"type": "epoch", ...}`` after every epoch (raise to stop the run; the checkpoint of the last finished
    epoch stays). ``dp`` is a :class:`tsynth.privacy.DPEngine` or None. Each checkpoint records a fingerprint of
    the run (:func:`run_fingerprint`; ``source_arrays``: arrays the rows of ``train_tokens`` index, as the step
    model's do), and ``resume`` refuses a checkpoint whose fingerprint differs, naming the difference.
    ``stream`` (a :class:`tsynth.streaming.RowStream`) gives each epoch's rows instead of ``train_tokens`` (then
    unused): data read partition by partition, never held whole. ``micro_batches(rows)`` splits a batch into
    ``(part, share)`` pairs whose gradients accumulate (the batch loss is the sum of share x part loss), so that
    only one part's activations are held at a time. Only trainable parameters are copied as the best state.
    Running out of memory raises :class:`~tsynth.errors.DeviceMemoryError`, which names the batch size to lower
    (:mod:`tsynth.devicememory`).
    """
    return train_within_memory(lambda: _train_lm(model, train_tokens, valid_tokens, loss_fn, field_slots, cfg,
                                                 checkpoint_dir, resume, callback, dp, progress, source_arrays, stream,
                                                 micro_batches), cfg.batch_size)


def _train_lm(model, train_tokens: np.ndarray, valid_tokens: np.ndarray | None, loss_fn: Callable,
              field_slots: list[tuple[int, int]], cfg: TrainConfig, checkpoint_dir: Path | None,
              resume: bool, callback: Callable[[dict], None] | None, dp, progress: bool,
              source_arrays: dict[str, np.ndarray] | None, stream,
              micro_batches: Callable[[torch.Tensor], list[tuple[torch.Tensor, float]]] | None
              ) -> tuple[object, TrainResult]:
    """:func:`train_lm` without its out-of-memory handling."""
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from .distributed import check_same_data, make_accelerator, mean_over_processes, shard_rows, sharded_loss

    fingerprint = run_fingerprint(model, train_tokens, valid_tokens, cfg, source_arrays)
    set_seed(cfg.seed)
    accelerator = make_accelerator(train_device() == "cpu")  # several processes under accelerate launch
    check_same_data(accelerator, fingerprint)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = torch.as_tensor(train_tokens) if stream is None else None
    n = len(data) if data is not None else len(stream)
    batch = min(cfg.batch_size, n)
    # under DP an epoch is the DP engine's: Poisson batches of items, one window each, not a pass over every window
    steps_per_epoch = max(1, math.ceil(n / batch)) if dp is None else dp.steps_per_epoch(batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95))
    result = TrainResult(epochs_planned=cfg.epochs, steps_planned=cfg.epochs * steps_per_epoch)
    # warm-up and cosine end with the planned steps, which the time limit may shorten (``result`` is read per call)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, result,
                                                                             cfg.warmup_epochs * steps_per_epoch))
    if dp is not None:
        model, optimizer = dp.attach(model, optimizer, batch, cfg.epochs, accelerator.device)
    if dp is not None and accelerator.num_processes > 1:  # opacus' DPDDP adds up the clipped sums, not DDP
        optimizer, sched = accelerator.prepare(optimizer, sched)
        accelerator.register_for_checkpointing(model)
    else:
        model, optimizer, sched = accelerator.prepare(model, optimizer, sched)
    plain = accelerator.unwrap_model(model)
    plain = dp.detach(plain) if dp is not None else plain  # the HF model inside every wrapper
    best_state, best_loss, bad_epochs, start_epoch = None, math.inf, 0, 0
    # frozen weights (a LoRA fit's base model) never change: the best state holds the trained ones only
    frozen = {k for k, p in plain.named_parameters(remove_duplicate=False) if not p.requires_grad}
    t0 = time.time()
    state_file = checkpoint_dir / "progress.json" if checkpoint_dir else None
    if resume and state_file is not None and state_file.exists():
        saved = json.loads(state_file.read_text())
        differ = fingerprint_difference(saved.get("fingerprint"), fingerprint)
        if differ:
            raise ConfigError(f"--resume: the checkpoint in {checkpoint_dir} belongs to another fit ({differ}); "
                              "resume with the data and options of that fit, or fit again without --resume")
        state_dir = checkpoint_dir / saved.get("state", "last")  # "last": the layout before epoch-N states
        accelerator.load_state(str(state_dir))
        result = TrainResult(**{"epochs_planned": cfg.epochs, "steps_planned": cfg.epochs * steps_per_epoch,
                                **saved["result"]})
        start_epoch, best_loss, bad_epochs = saved["epoch"], saved["best_loss"], saved["bad_epochs"]
        gen.set_state(torch.load(state_dir / "generator.pt"))
        best_state = torch.load(state_dir / "best.pt") if (state_dir / "best.pt").exists() else None
    validated = valid_tokens is not None
    bar = tqdm(total=initial_epochs(cfg, validated) if start_epoch == 0 else
               expected_epochs(result, bad_epochs, cfg.patience, validated),
               initial=start_epoch, desc="training", unit="epoch",
               disable=not progress or not accelerator.is_main_process, leave=False)
    clock = _TimeLimit(cfg.time_limit_s, steps_per_epoch, cfg.epochs * steps_per_epoch,
                       None if valid_tokens is None else
                       lambda: evaluate_loss(model, valid_tokens[:batch], loss_fn, accelerator.device, batch),
                       0 if valid_tokens is None else math.ceil(len(valid_tokens) / batch))
    epoch = start_epoch
    while epoch < result.epochs_planned:
        model.train()
        loss_total, loss_rows = 0.0, 0  # the epoch's training loss: a mean over rows, on every process
        if dp is not None:
            batches = dp.batches()
        elif stream is not None:
            batches = (shard_rows(rows, accelerator) for rows in stream.epoch(gen, batch))
        else:
            perm = torch.randperm(n, generator=gen)
            batches = [shard_rows(perm[i: i + batch], accelerator) for i in range(0, n, batch)]
        for idx in batches:
            if result.steps >= result.steps_planned:
                break  # the time limit ends the run inside this epoch
            live = True
            if dp is not None:
                idx, live = idx
            tokens = drop_conditions(data[idx] if data is not None else idx, field_slots, cfg.condition_dropout,
                                     gen).to(accelerator.device)
            loss: torch.Tensor | None
            if dp is not None:
                loss = dp.step(model, optimizer, tokens, loss_fn, live)
            else:
                parts = micro_batches(tokens) if micro_batches is not None else [(tokens, 1.0)]
                done = []
                for part, share in parts:
                    part_loss = loss_fn(model, part) * share
                    accelerator.backward(part_loss)
                    done.append(part_loss.detach())
                loss = torch.stack(done).sum()
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sched.step()
            if loss is not None:
                loss_total += float(loss.detach()) * len(tokens)
                loss_rows += len(tokens)
            result.steps += 1
            result.tokens += int((tokens != 0).sum()) if live else 0
            clock.after_step(result)
        result.epochs_run = epoch + 1
        result.train_loss.append(mean_over_processes(accelerator, loss_total, loss_rows))
        clock.validation_starts()
        vloss = (sharded_loss(accelerator, lambda rows: evaluate_loss(model, rows, loss_fn, accelerator.device, batch),
                              valid_tokens) if valid_tokens is not None else None)
        clock.validation_ends()
        if vloss is not None:
            result.valid_loss.append(vloss)
        score = vloss if vloss is not None else result.train_loss[-1]
        if score < best_loss - 1e-4:
            best_loss, bad_epochs, result.best_epoch = score, 0, epoch + 1
            best_state = {k: v.detach().clone() for k, v in plain.state_dict().items() if k not in frozen}
        else:
            bad_epochs += 1
        result.seconds = time.time() - t0
        early = valid_tokens is not None and bad_epochs >= cfg.patience
        if not early:
            clock.after_epoch(result)
        expected = result.epochs_run if early else expected_epochs(result, bad_epochs, cfg.patience, validated)
        bar.total = expected
        state_dir = None if checkpoint_dir is None else _save_checkpoint(
            accelerator, checkpoint_dir, gen, best_state, epoch + 1, best_loss, bad_epochs, result, fingerprint)
        bar.set_postfix(train=f"{result.train_loss[-1]:.3f}", valid="-" if vloss is None else f"{vloss:.3f}")
        bar.update(1)
        if callback is not None:
            callback({"type": "epoch", "epoch": epoch + 1, "epochs": cfg.epochs, "expected_epochs": expected,
                      "step": result.steps,
                      "train_loss": result.train_loss[-1], "valid_loss": vloss, "tokens": result.tokens,
                      "checkpoint": str(state_dir) if state_dir else None})
        if early:
            result.stopped_early = True
            break
        epoch += 1
    bar.close()
    if dp is not None:
        dp.close(model)
    if best_state is not None:
        plain.load_state_dict(best_state, strict=not frozen)
    plain.eval()
    return plain, result


TYPICAL_PATIENCE_SPANS = 2.5  # a run's length in patience spans, before its own validation losses say more


def initial_epochs(cfg: TrainConfig, validated: bool) -> int:
    """Epochs a run is expected to train before it starts: the cap without validation; with it, early stopping
    typically ends a run after two and a half patience spans (see :func:`expected_epochs`)."""
    return cfg.epochs if not validated else int(min(cfg.epochs, TYPICAL_PATIENCE_SPANS * cfg.patience))


def expected_epochs(result: TrainResult, bad_epochs: int, patience: int, validated: bool) -> int:
    """Epochs a run is expected to train, from what it has done: the plan (the cap, or what the time limit leaves)
    without validation; with it, early stopping ends the run ``patience`` epochs after its best epoch, and the best
    epoch keeps moving while the validation loss falls, taken as half again the best epoch so far, and a run is
    taken to last at least what a typical one does. Progress bars count this, so their totals and time estimates
    follow the work that will really be done."""
    if not validated:
        return result.epochs_planned
    guess = max(result.epochs_run + patience - bad_epochs, math.ceil(1.5 * result.best_epoch) + patience,
                math.ceil(TYPICAL_PATIENCE_SPANS * patience))
    return int(min(result.epochs_planned, guess))


def _lr_factor(step: int, result: TrainResult, warmup: int) -> float:
    """Linear warm-up, then a cosine that ends with the planned steps; a time-limited plan warms up for at most
    a tenth of its steps."""
    planned = max(1, result.steps_planned)
    warm = max(1, min(warmup, planned // 10) if result.time_limited else warmup)
    return min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / planned)))


def steps_that_fit(seconds: float, pace: float, reserve: float, steps_per_epoch: int, into_epoch: int) -> int:
    """Optimizer steps that fit into ``seconds`` at ``pace`` seconds each, when every epoch end (full or
    partial) costs ``reserve`` seconds of validation and the current epoch is ``into_epoch`` steps old."""
    to_end = steps_per_epoch - into_epoch
    if seconds < to_end * pace + reserve:
        return max(0, int((seconds - reserve) // pace))
    seconds -= to_end * pace + reserve
    per_epoch = steps_per_epoch * pace + reserve
    full = int(seconds // per_epoch)
    return to_end + full * steps_per_epoch + max(0, int((seconds - full * per_epoch - reserve) // pace))


class _TimeLimit:
    """Keeps a run inside ``TrainConfig.time_limit_s``: plans the steps that fit from the pace so far, again
    and again as the pace settles (after 5, 10, 20, ... steps and at every epoch end; a plan may grow back up
    to the configured epochs, since the first steps of a run are slower than the rest), and stops a step early
    when the machine slows down. Every stop leaves room for the validation pass that picks the best model; at
    least one step is taken."""

    PROBE_STEPS = 5

    def __init__(self, limit: float | None, steps_per_epoch: int, most_steps: int,
                 validate_batch: Callable[[], object] | None, valid_batches: int):
        self.limit, self.steps_per_epoch, self.most_steps = limit, steps_per_epoch, most_steps
        self.validate_batch, self.valid_batches = validate_batch, valid_batches
        self.t0 = self.mark = time.time()  # start of the run; end of the last timed stretch
        self.train_s, self.steps = 0.0, 0  # seconds spent on the steps of this run, and their number
        self.next_plan = self.PROBE_STEPS  # this run's step count at which the plan is made again
        self.reserve: float | None = None  # seconds of one validation pass, once measured
        self.reserve_guess = 0.0  # until then (from the first step on): one timed batch of it, times the batches

    def _pace(self) -> float:
        return max(self.train_s / self.steps, 1e-9)  # seconds per training step in this run

    def _reserve(self) -> float:
        return self.reserve if self.reserve is not None else self.reserve_guess

    def _guess_reserve(self) -> None:
        if self.validate_batch is not None:
            t0 = time.time()
            self.validate_batch()
            self.reserve_guess = (time.time() - t0) * self.valid_batches
            self.mark = time.time()  # not a training step's time

    def _plan(self, result: TrainResult, planned: int) -> None:
        planned = min(max(planned, result.steps, 1), self.most_steps)
        if planned < self.most_steps and not result.time_limited:
            log.info("time limit %.0f s: %d of %d steps fit", self.limit, planned, self.most_steps)
        result.steps_planned, result.time_limited = planned, planned < self.most_steps
        result.epochs_planned = math.ceil(planned / self.steps_per_epoch)

    def _replan(self, result: TrainResult) -> None:
        assert self.limit is not None  # replanning happens only under a time limit
        pace = self._pace()
        into = result.steps % self.steps_per_epoch
        self._plan(result, result.steps + steps_that_fit(self.limit - (time.time() - self.t0), pace,
                                                         self._reserve(), self.steps_per_epoch, into))

    def after_step(self, result: TrainResult) -> None:
        if self.limit is None:
            return
        now = time.time()
        self.train_s += now - self.mark
        self.mark = now
        self.steps += 1
        if self.steps == 1:
            self._guess_reserve()
        if self.steps == self.next_plan:
            self.next_plan *= 2
            if result.steps % self.steps_per_epoch:  # an epoch end plans on its own
                self._replan(result)
        elif self.limit - (now - self.t0) < self._pace() + self._reserve():
            self._plan(result, result.steps)   # the machine got slower than planned: stop here

    def validation_starts(self) -> None:
        self.mark = time.time()

    def validation_ends(self) -> None:
        now = time.time()
        self.reserve, self.mark = now - self.mark, now

    def after_epoch(self, result: TrainResult) -> None:
        if self.limit is not None and self.steps:
            self._replan(result)


@torch.no_grad()
def evaluate_loss(model, tokens: np.ndarray, loss_fn: Callable, device, batch: int) -> float:
    """Mean per-sequence loss over ``tokens`` (conditions kept, no dropout), ``batch`` rows at a time (the
    training batch: larger ones are slower per row on a CPU, about twice as slow at 256 rows of long windows)."""
    model.eval()
    total, count = 0.0, 0
    data = torch.as_tensor(tokens)
    for i in range(0, len(data), batch):
        per_seq = loss_fn(model, data[i: i + batch].to(device), reduction="none")
        total += float(per_seq.sum())
        count += len(per_seq)
    model.train()
    return total / max(count, 1)


def run_fingerprint(model, train_tokens: np.ndarray, valid_tokens: np.ndarray | None, cfg: TrainConfig,
                    source_arrays: dict[str, np.ndarray] | None = None) -> dict:
    """What a checkpoint belongs to: digests of the training and validation tokens (the data as encoded, so
    its values, scaling, bins and conditions; with ``source_arrays``, the arrays that rows of tokens index,
    as the step model's windows do), the model's size and vocabulary, and every training setting but the
    time limit (a resumed run's share of it is measured again)."""
    def digest(*arrays: np.ndarray | None) -> str | None:
        if arrays[0] is None:
            return None
        h = hashlib.sha256()
        for a in arrays:
            a = np.ascontiguousarray(a)
            h.update(str((a.shape, a.dtype.str)).encode() + a.tobytes())
        return h.hexdigest()[:16]

    settings = {k: v for k, v in asdict(cfg).items() if k != "time_limit_s"}
    source = [source_arrays[k] for k in sorted(source_arrays)] if source_arrays else []
    return {"training data": digest(train_tokens, *source), "validation data": digest(valid_tokens, *source),
            "model parameters": int(sum(p.numel() for p in model.parameters())),
            "vocabulary": getattr(model.config, "vocab_size", None), **settings}


def fingerprint_difference(saved: dict | None, now: dict) -> str:
    """How a checkpoint's fingerprint differs from this run's, in words ('' when they match)."""
    if saved is None:
        return "it records no fingerprint of its data and options (an older tsynth wrote it)"
    out = []
    for key in dict.fromkeys([*saved, *now]):
        was, new = saved.get(key), now.get(key)
        if was == new or (isinstance(new, (list, tuple)) and list(new) == was):
            continue
        if key.endswith("data"):
            out.append(f"other {key} (or another scaling, binning or conditions)")
        else:
            out.append(f"{key} {was!r} in the checkpoint, {new!r} now")
    return "; ".join(out)


def _save_checkpoint(accelerator, directory: Path, gen: torch.Generator, best_state, epoch: int,
                     best_loss: float, bad_epochs: int, result: TrainResult, fingerprint: dict | None = None) -> Path:
    """Write the resumable state of a finished epoch to ``epoch-N/``, then point ``progress.json`` at it;
    returns that folder.

    The pointer moves (one atomic rename) only once the new state is complete, and older states go only after
    it has moved: a run killed at any moment leaves a pointer to a whole state.
    """
    directory.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch}"
    tmp = directory / f"{name}.tmp"
    if accelerator.is_main_process:  # under data-parallel training every process saves its own random state
        for stale in (tmp, directory / name):
            if stale.exists():
                shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    quiet, saver = _TiedWeightsNote(), logging.getLogger("accelerate.utils.other")
    saver.addFilter(quiet)
    try:
        accelerator.save_state(str(tmp))
    finally:
        saver.removeFilter(quiet)
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return directory / name
    torch.save(gen.get_state(), tmp / "generator.pt")
    if best_state is not None:
        torch.save(best_state, tmp / "best.pt")
    os.replace(tmp, directory / name)
    progress = {"epoch": epoch, "state": name, "best_loss": best_loss, "bad_epochs": bad_epochs,
                "result": asdict(result), "fingerprint": fingerprint}
    (directory / "progress.json.tmp").write_text(json.dumps(progress))
    os.replace(directory / "progress.json.tmp", directory / "progress.json")
    for old in directory.glob("epoch-*"):
        if old.name != name:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return directory / name
