"""The local backend's fit on a partitioned Parquet data set read as a stream (:mod:`tsynth.streaming`).

The step model only (the token model and priors need every series at once, as does DP-SGD's sampling of
items). The codec is fitted on the data set's uniform sample of series, the validation series are drawn from
that sample (``validation_fraction`` of it, at most ``MAX_VALID_SERIES``) and skipped wherever they are read
for training, and each member trains on :class:`tsynth.streaming.RowStream`'s epochs: memory is bounded by
the read buffer, the sample and the model, not by the data. ``tsynth.json`` records how the codec was fitted
(``training.data``: partitions, series, the sample's size and seed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..codecs.steps import StepCodec
from ..codecs.values import ValueCodec
from ..errors import ConfigError
from ..streaming import BUFFER_SERIES, PartitionedSeries, RowStream
from ..train import PRESETS, TrainConfig, step_smoothing, train_lm
from .common import MIN_ITEMS_FOR_VALIDATION, data_schema
from .local import (DEFAULT_ENSEMBLE, MIN_SERIES, LocalBackend, default_dropout, fixed_windows, readings,
                    window_rows)
from ..stepmodel import StepModel, StepModelConfig, input_noise, window_loss

log = logging.getLogger("tsynth")

MAX_VALID_SERIES = 512  # validation series (re-encoded with every buffer, so kept few)


def fit_streaming(backend: LocalBackend, data: PartitionedSeries, callback: Callable[[dict], None] | None = None,
                  checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
                  buffer_series: int = BUFFER_SERIES) -> None:
    """Fit ``backend`` (a :class:`LocalBackend`) on ``data`` (see the module docstring)."""
    opts = backend.options
    if opts.dp_epsilon is not None:
        raise ConfigError("differential privacy needs the whole data set in memory (items are sampled from all of "
                          "them): read one file, not a partitioned data set")
    if opts.codec == "token" or opts.prior not in (None, "none", "auto"):
        raise ConfigError("a partitioned data set trains the step model only: drop --codec token / --prior")
    if opts.train.time_limit_s is not None:
        raise ConfigError("a time limit is not supported on a partitioned data set yet: cap the epochs (--epochs)")
    if opts.domain is not None:
        log.warning("--domain %r picks no prior here: a partitioned data set trains the step model from scratch",
                    opts.domain)
    started = time.time()
    sample = data.scan()
    if data.n_series < MIN_SERIES:
        raise ConfigError(f"{data.n_series} series are too few to learn from; the local backend needs at least "
                          f"{MIN_SERIES}")
    values = ValueCodec(n_bins=opts.n_bins, binning=opts.binning, scaling=opts.scaling, conditions=opts.conditions,
                        value_range=opts.value_range, point_mass_series=opts.point_mass_series)
    codec = StepCodec.fit(sample, values, opts.context, profiles=opts.profiles)
    backend.codec = codec  # type: ignore[assignment]  # the backend holds a step codec or a value codec
    if opts.ensemble is None:
        opts.ensemble = DEFAULT_ENSEMBLE
    if not backend.dropout_given:  # a model from scratch without DP; the readings estimated from the sample
        n_readings = readings(sample) * data.n_series / len(sample)
        opts.train = replace(opts.train, dropout=default_dropout(n_readings, False, False))
    n_valid = min(MAX_VALID_SERIES, int(round(opts.validation_fraction * len(sample))))
    validate = len(sample) >= MIN_ITEMS_FOR_VALIDATION and n_valid >= 1
    smoothing: float | list[float] | None = opts.train.smoothing
    if smoothing is None:
        smoothing = step_smoothing(codec.values.value_bins(sample, warn=False)[0], sample.lengths)
    backend.models, runs = [], []
    for member in range(opts.ensemble):
        cfg = TrainConfig(**{**asdict(opts.train), "seed": opts.train.seed * opts.ensemble + member})
        valid = None
        if validate:
            pick = np.random.default_rng(cfg.seed).permutation(len(sample))[:n_valid]
            valid = sample.subset(np.sort(pick))
        stream = RowStream(data, codec, valid, lambda lengths: window_rows(lengths, codec.context), buffer_series)
        valid_rows = None if valid is None else fixed_windows(valid.lengths, codec.context, np.arange(len(valid)))
        torch.manual_seed(cfg.seed)
        model = StepModel(StepModelConfig(**codec.model_config(PRESETS[cfg.preset], cfg.dropout)))
        loss = window_loss(codec, stream.arrays, smoothing, cfg.condition_dropout, cfg.seed,
                           input_noise(codec.n_channels, cfg.input_noise))
        member_callback = None if callback is None else (lambda e, m=member: callback({**e, "member": m}))
        trained, result = train_lm(model, np.zeros((0, 2), dtype=np.int64), valid_rows, loss, [], cfg,
                                 Path(checkpoint_dir) / f"member_{member}" if checkpoint_dir else None, resume,
                                 member_callback, progress=progress, source_arrays={"partitions": data.digest()},
                                 stream=stream)
        model = trained  # type: ignore[assignment]  # the best epoch's weights, in the same model
        for p in model.parameters():
            p.requires_grad_(True)
        backend.models.append(model)
        runs.append({**asdict(result), "trainable": "all",
                     "trainable_values": int(sum(p.numel() for p in model.parameters()))})
    backend.privacy, backend.prior = None, None
    backend.training = {
        "train_series": data.n_series - (n_valid if validate else 0), "valid_series": n_valid if validate else 0,
        "parameters": int(sum(p.numel() for p in backend.models[0].parameters())),
        "seconds": time.time() - started, "members": runs, "smoothing": smoothing,
        "input_noise": input_noise(codec.n_channels, opts.train.input_noise),
        "data": {"source": "partitioned Parquet data set, read as a stream", "partitions": len(data.files),
                 "series": data.n_series, "buffer_series": buffer_series,
                 "codec_fitted_on": {"how": "uniform sample of series (bottom-k of seeded random keys)",
                                     "series": len(sample), "seed": data.seed},
                 "validation": "series drawn from that sample, skipped when read for training"},
    }
    backend.schema = {**data_schema(sample), "n_series": data.n_series, "n_items": data.n_series}
