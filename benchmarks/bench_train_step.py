"""Seconds per training step of the step model, by default and with the value layer run as its module.

On a CPU, where a batch holds at least ``FUSED_MIN_LOGITS`` value logits, the training loss computes the value layer
and its log-softmax a block of rows at a time (``stepmodel.LinearLogSoftmaxAt``); with fewer, or where hooks watch
the layer (opacus under DP), it runs the layer as a module and the log-softmax over its whole output
(``stepmodel.LogSoftmaxAt``). This times both on the benchmark tasks' training
sets: the default codec and model (preset ``tiny``), the default batch (``STEP_BATCH_POSITIONS`` time steps), one
torch thread as each training worker has, the same seeded batches for both; the runs alternate (module,
default, module, default) and each reports the median of its steps after the first two. The module path is forced by a no-op
forward hook on the value layer. Both give the same losses (printed, to check).

``python -m benchmarks.bench_train_step [--tasks energy24,stocks24] [--steps 20] [--out
benchmarks/results/train_step.json]`` (needs the benchmark data: ``TSYNTH_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def time_steps(task_name: str, steps: int, module: bool) -> dict:
    """Median seconds per step (after the first two) and the last losses of one seeded run."""
    from benchmarks.tasks import TASKS
    from tsynth.backends.local import MIN_STEP_BATCH, STEP_BATCH_POSITIONS, window_rows
    from tsynth.codecs.steps import StepCodec
    from tsynth.codecs.values import ValueCodec
    from tsynth.stepmodel import FUSED_MIN_LOGITS, StepModel, StepModelConfig, input_noise, window_loss
    from tsynth.tokenmodel import PRESETS
    from tsynth.train import TrainConfig, step_smoothing

    train = TASKS[task_name]().train
    codec = StepCodec.fit(train, ValueCodec(), None)
    smoothing = step_smoothing(codec.values.value_bins(train, warn=False)[0], train.lengths)
    arrays = codec.encode(train)
    rows = torch.as_tensor(window_rows(train.lengths, codec.context))
    batch = int(np.clip(STEP_BATCH_POSITIONS // codec.context, MIN_STEP_BATCH, TrainConfig().batch_size))
    torch.manual_seed(0)
    model = StepModel(StepModelConfig(**codec.model_config(PRESETS["tiny"], TrainConfig().dropout))).train()
    if module:
        model.value_head.register_forward_hook(lambda module, inputs, output: None)
    loss = window_loss(codec, arrays, smoothing, 0.0, 0, input_noise(codec.n_channels, None))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    seconds, losses = [], []
    for _ in range(steps):
        idx = torch.randint(len(rows), (batch,), generator=gen)
        t0 = time.perf_counter()
        value = loss(model, rows[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
        seconds.append(time.perf_counter() - t0)
        losses.append(round(float(value.detach()), 5))
    rows_per_step = batch * codec.context * codec.n_channels
    return {"median_s": float(np.median(seconds[2:])), "last_losses": losses[-3:], "batch": batch,
            "rows_per_step": rows_per_step, "bins": codec.n_bins + 1,
            "fused_by_default": rows_per_step * (codec.n_bins + 1) >= FUSED_MIN_LOGITS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="energy24,stocks24", help="benchmark tasks (comma-separated)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per run (the first two are not counted)")
    ap.add_argument("--out", default=str(RESULTS / "train_step.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out: dict = {"machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
                 "date": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps, "tasks": {}}
    for name in args.tasks.split(","):
        runs: dict[str, list[dict]] = {"module": [], "default": []}
        for module in (True, False, True, False):
            r = time_steps(name, args.steps, module)
            runs["module" if module else "default"].append(r)
            print(name, "module" if module else "default", f"{r['median_s']:.4f} s a step", r["last_losses"],
                  flush=True)
        first = runs["default"][0]
        out["tasks"][name] = {**{k: first[k] for k in ("batch", "rows_per_step", "bins", "fused_by_default")},
                              "module_s": [r["median_s"] for r in runs["module"]],
                              "default_s": [r["median_s"] for r in runs["default"]],
                              "same_losses": all(a["last_losses"] == b["last_losses"]
                                                 for a, b in zip(runs["module"], runs["default"]))}
    path = Path(args.out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
