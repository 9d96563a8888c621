"""Backend "local": a compact causal LM over value tokens, trained and sampled on this machine.

``fit`` fits the value codec on the training items, keeps a validation split of *other* items for
early stopping, trains one model (or an ensemble of ``ensemble`` models with different seeds, whose
distributions are averaged when sampling) and keeps the best epoch of each. ``save`` writes each member
as a standard Hugging Face model directory (``model/``, ``model_1/``...) whose tokenizer is the codec, so
``AutoModelForCausalLM.from_pretrained(dir/"model")`` works without tsynth.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..codecs.calendar import phases_differ
from ..codecs.steps import StepCodec, default_context, has_gaps
from ..codecs.values import POINT_MASS_SERIES, ValueCodec, choose_scaling
from ..data import (SeriesSet, atomic_write, duplicate_channels, keep_channels, restore_copies,
                    standardised_ddof)
from ..distributed import check_options as check_distributed_options
from ..distributed import world_size
from ..errors import ArtifactError, ConfigError, DataError, TsynthError, check_min_prob
from ..prior import CORPUS_FILE, DEFAULT_PRIOR, DOMAIN_PRIORS, Prior, auto_prior, resolve_prior
from ..privacy import PROFILE_SHARE, TILT_DRAWS, TILT_MIN_GAP, DPEngine, DPSettings, fit_tilt, tilt_keep
from ..sample import generate
from ..stepgen import GAPS, generate_steps, parse_start
from ..stepmodel import StepModel, StepModelConfig, bin_values, input_noise, window_loss
from .common import MIN_ITEMS_FOR_VALIDATION, data_schema
from ..tokenmodel import PRESETS, build_model, factor_positions, select_trainable
from ..train import (MAX_SMOOTHING, TrainConfig, initial_epochs, seconds_per_step, step_smoothing, train_device, train_lm,
                     value_token_loss)

log = logging.getLogger("tsynth")

MIN_SERIES = 8
CODECS = ("auto", "step", "token")
MAX_VALID_WINDOWS = 4  # step model: fixed validation windows per long validation series
POINT_MASS_FILE = "point_masses.npz"  # the codec's point masses (ValueCodec.save_point_masses)
# members averaged when sampling: six from scratch (more gave nothing); from a prior without DP members stop after a
# few epochs, so more are cheap, and they keep helping (the measurements: docs/model-and-training.md, "Ensemble")
DEFAULT_ENSEMBLE = 6
# windows this short (steps, and values: steps x channels) of equal length without gaps train the token model by
# default: it sees every value of the window exactly. Windows of more values make long token sequences (attention
# over all of them), and there the step model, whose heads read the channels drawn before them in their step
# (stepmodel.CrossReadout), scores better and samples about ten times faster (docs/long-series.md)
SHORT_STEPS = 32
SHORT_VALUES = 256
STEP_BATCH_POSITIONS, MIN_STEP_BATCH = 32 * 96, 8  # step model: time steps per batch, fewest windows per batch
MIN_MEMBER_EPOCHS = 20  # under a time limit, members are dropped while each would train fewer epochs
PRIOR_ENSEMBLE = 24
# a member fine-tuned from a prior reaches its best validation loss within a few epochs (3-10 on electricity100):
# early stopping waits this many epochs past the best, where a model from scratch waits TrainConfig.patience
PRIOR_PATIENCE = 5
# dropout without DP on little data: a model from scratch on at most SMALL_DATA_VALUES readings (a few hundred short
# series overfit a fresh model within 15-30 epochs at TrainConfig's 0.1, and 0.2 fits them better: samples told
# apart less often), members fine-tuned from a prior on at most PRIOR_SMALL_DATA_VALUES (on a hundred meters'
# hundred hours 0.2 halved the error of the samples' daily autocorrelation at no cost in disc_gbm; on more series
# it cost disc_gbm). On more data, and under DP (its noise regularises), TrainConfig's 0.1 (the measurements:
# docs/model-and-training.md, "Dropout")
SMALL_DATA_DROPOUT, SMALL_DATA_VALUES, PRIOR_SMALL_DATA_VALUES = 0.2, 50_000, 10_000

DP_MAX_OUTSIDE = 0.25  # a DP fit refuses data with more of its values beyond the public value range (clipped)
# DP-SGD has no validation split to stop on: a fixed schedule, unless the caller sets these (why 60 epochs:
# docs/privacy.md)
DP_TRAIN_DEFAULTS = {"epochs": 60, "batch_size": 64, "learning_rate": 3e-3}
# a token model trained under DP draws no value token below this probability (sample.floor_values; docs/privacy.md)
DP_MIN_PROB = 5e-4
# A DP tilt's later rounds draw TILT_SPARE / (the share of draws kept) candidates for each series not yet kept, and
# after TILT_ROUNDS rounds a series not kept stays as first drawn (each round keeps some with probability ~1 - e^-1.5)
TILT_SPARE, TILT_ROUNDS = 1.5, 20


def default_dropout(n_readings: float, from_prior: bool, dp: bool) -> float:
    """The dropout a fit takes unless one is given: without DP, ``SMALL_DATA_DROPOUT`` on at most
    ``SMALL_DATA_VALUES`` readings (values that are not NaN) for a model from scratch, ``PRIOR_SMALL_DATA_VALUES``
    for one fine-tuned from a prior; else TrainConfig's."""
    small = PRIOR_SMALL_DATA_VALUES if from_prior else SMALL_DATA_VALUES
    return SMALL_DATA_DROPOUT if not dp and n_readings <= small else TrainConfig.dropout


def readings(data: SeriesSet) -> int:
    """How many values of ``data`` are not NaN."""
    return int(np.sum(~np.isnan(data.values)))


def short_windows(train: SeriesSet) -> bool:
    """Whether ``train`` holds windows short enough for a token per value (``SHORT_STEPS``, ``SHORT_VALUES``; equal
    lengths, no gaps): from scratch they train the token model."""
    steps = int(train.lengths.max())
    return train.is_regular and steps <= SHORT_STEPS and steps * train.n_channels <= SHORT_VALUES


def longer_than_context(train: SeriesSet) -> bool:
    """Whether the longest series exceeds the step model's default context (a token model sees series whole)."""
    steps = int(train.lengths.max())
    return default_context(train.freq, steps) < steps


@dataclass
class LocalOptions:
    """Options of the local backend: codec, model and training settings."""

    n_bins: int = 256
    binning: str = "quantile"
    scaling: str = "auto"
    conditions: Sequence[str] | str = "auto"
    validation_fraction: float = 0.1
    ensemble: int | None = None  # default: DEFAULT_ENSEMBLE, PRIOR_ENSEMBLE from a prior, 1 under DP (set by fit)
    temperature: float = 1.0
    min_prob: float | None = None  # token model: value tokens below it are not drawn; None: DP_MIN_PROB under DP, else 0
    value_range: tuple[float, float] | None = None
    point_mass_series: int = POINT_MASS_SERIES  # values held by this many items decode exactly; 0: never
    workers: int | None = None
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_max_grad_norm: float = 1.0
    # None: PROFILE_SHARE from the general default prior or from scratch, 0 from a domain prior (the shipped load
    # prior or one of your own: a model fine-tuned from it does worse on residuals its prior never saw;
    # docs/priors.md)
    dp_profile_share: float | None = None
    trainable: str = "all"  # or a subset (train.TRAINABLE): less DP noise in all, no better samples so far
    # "auto" (prior.auto_prior: from --domain, DP, frequency and channels), "default", "load", "none" or a directory
    prior: str | None = "auto"
    domain: str | None = None  # what the data is ("electricity", "finance", ...): public, picks a prior under "auto"
    codec: str = "auto"  # "step" (a position per time step), "token" (a token per value: what priors are), "auto"
    context: int | None = None  # step model: steps in its context (default: codecs.steps.default_context)
    # profile classes (codecs.profiles) where the data has them, never under DP: a prefix token of either model
    profiles: bool = True
    train: TrainConfig = None  # type: ignore[assignment]

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "LocalOptions":
        own = {f.name for f in fields(cls)} - {"train"}
        train_names = {f.name for f in fields(TrainConfig)}
        unknown = set(kw) - own - train_names
        if unknown:
            raise ConfigError(f"unknown option(s) for the local backend: {', '.join(sorted(unknown))}")
        opts = cls(**{k: v for k, v in kw.items() if k in own})
        dp_defaults = DP_TRAIN_DEFAULTS if opts.dp_epsilon is not None else {}
        opts.train = TrainConfig(**{**dp_defaults, **{k: v for k, v in kw.items() if k in train_names}})
        if opts.dp_epsilon is not None:
            opts._restrict_for_dp()
        if opts.ensemble is not None and opts.ensemble < 1:
            raise ConfigError("ensemble must be at least 1")
        if opts.codec not in CODECS:
            raise ConfigError(f"codec must be one of {', '.join(CODECS)}, got {opts.codec!r}")
        if opts.context is not None and opts.context < 2:
            raise ConfigError(f"context must be at least 2 steps, got {opts.context}")
        if opts.min_prob is None:
            opts.min_prob = DP_MIN_PROB if opts.dp_epsilon is not None else 0.0
        check_min_prob(opts.min_prob)
        return opts

    def _restrict_for_dp(self) -> None:
        """Make every data-dependent choice public under DP (see :mod:`tsynth.privacy`)."""
        if self.ensemble not in (None, 1):
            raise ConfigError("ensemble > 1 is not supported with differential privacy (each member would spend "
                              "the whole budget)")
        self.ensemble = 1
        if self.train.time_limit_s is not None:
            raise ConfigError("a time limit is not supported with differential privacy: the noise is calibrated for "
                              "a fixed number of steps; cap the epochs instead")
        if self.conditions == "auto":
            self.conditions = []
        if "item_id" in self.conditions:
            raise ConfigError("item-id conditioning is refused under differential privacy: a token per item lets "
                              "the model memorise that item, which defeats the guarantee")
        if self.conditions:
            log.warning("DP: the vocabulary of the condition fields %s is treated as public knowledge", list(self.conditions))
        self.binning, self.scaling = "uniform", "none"
        self.point_mass_series = 0  # which values recur is a fact about the data, so not released under DP
        self.value_range = tuple(self.value_range or (-5.0, 5.0))


def check_dp_range(codec: ValueCodec, train: SeriesSet) -> None:
    """Refuse a DP fit whose public ``value_range`` leaves more than ``DP_MAX_OUTSIDE`` of the training values
    outside the codec's bins (they would be clipped to the edge bins: raw kW against the default [-5, 5] clipped
    98 %, and the model learnt nothing of the data). The check reads the data, but its answer goes only to whoever
    holds the data and runs the fit, not into the model."""
    share = codec.outside_share(train)
    if share > DP_MAX_OUTSIDE:
        raise ConfigError(f"{share:.0%} of the training values lie outside the DP value range {list(codec.value_range)}, "
                          "so they would be clipped: give public bounds in the data's units (value_range=(lo, hi), "
                          "--value-range=LO,HI), or standardise each series first (--zscore)")


class LocalBackend:
    """See the module docstring."""

    name = "local"

    def __init__(self, **options: Any) -> None:
        self.options = LocalOptions.from_kwargs(**options)
        self.ensemble_given = options.get("ensemble") is not None  # else a time limit may train fewer members
        self.batch_given = options.get("batch_size") is not None  # else the step model's batch follows its context
        self.patience_given = options.get("patience") is not None  # else PRIOR_PATIENCE from a prior
        self.dropout_given = options.get("dropout") is not None  # else default_dropout
        self.codec: ValueCodec | None = None
        self.models: list = []
        self.training: dict[str, Any] = {}
        self.schema: dict[str, Any] = {}
        self.privacy: dict[str, Any] | None = None
        self.plan: dict[str, Any] | None = None  # what the last fit planned (see fit)
        self.prior: dict[str, Any] | None = None  # the prior this model was fine-tuned from
        self.corpus: dict[str, Any] | None = None  # set when this model *is* a prior (see tsynth.prior)
        # where training channels repeat others exactly: every channel in order and {copy: original} by name
        self.channel_copies: dict[str, Any] | None = None
        # a DP token model's tilt toward its released per-step mean (privacy.fit_tilt), applied when sampling
        self.tilt: dict[str, Any] | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, train: SeriesSet, callback: Callable[[dict], None] | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
            dry_run: bool = False, on_plan: Callable[[dict], None] | None = None) -> None:
        """Fit the codec and train the model(s) on ``train``; ``callback`` gets every member's epoch events. Before
        training, ``on_plan`` gets the plan (also kept as ``self.plan``: models, expected epochs, and, timed by a
        probe of a few steps when ``progress``, ``dry_run`` or ``on_plan`` is set, seconds per epoch and expected
        minutes); ``dry_run`` stops there."""
        if len(train) < MIN_SERIES:
            raise DataError(f"{len(train)} series are too few to learn from; the local backend needs at least {MIN_SERIES}")
        started = time.time()
        opts = self.options
        items = pd.unique(train.item_id)
        dp_settings = (DPSettings(opts.dp_epsilon, opts.dp_delta, opts.dp_max_grad_norm,
                                  profile_share=PROFILE_SHARE if opts.dp_profile_share is None else opts.dp_profile_share)
                       if opts.dp_epsilon is not None else None)
        full, self.channel_copies = train, None
        copies = duplicate_channels(train) if dp_settings is None else {}  # under DP it would be a release
        if copies:
            names = {train.channels[j]: train.channels[i] for j, i in copies.items()}
            self.channel_copies = {"channels": list(train.channels), "copies": names}
            log.info("channels %s repeat %s exactly in every series: the model learns the originals, and samples "
                     "copy them", list(names), sorted(set(names.values())))
            train = keep_channels(train, self._learnt_channels())
        if dp_settings is not None:
            dp_settings.check(len(items))
            if resume:
                raise ConfigError("a DP fit cannot resume: the accountant would not count the steps taken before the "
                                  "interruption, so the reported epsilon would be too small; start the fit again")
        check_distributed_options(opts.train.time_limit_s)
        validate = len(items) >= MIN_ITEMS_FOR_VALIDATION and opts.validation_fraction > 0 and dp_settings is None
        if not validate:
            log.warning("%s: no validation split, training for a fixed %d epochs",
                        "differential privacy" if dp_settings else f"only {len(items)} items", opts.train.epochs)
        choice = self._prior_choice(train)
        kind = self._codec_kind(train, choice)
        prior = resolve_prior(choice, dp_settings is not None) if kind == "token" else None
        if prior is not None:
            try:
                self.codec = self._prior_codec(prior, train, dp_settings is not None)
            except ConfigError as e:
                if opts.prior != "auto":
                    raise
                log.warning("not starting from the %s prior: %s", choice, e)
                prior = None
                kind = self._codec_kind(train, None)  # what the data takes without a prior
        if dp_settings is not None and opts.dp_profile_share is None and prior is not None \
                and prior.path.resolve() != DEFAULT_PRIOR:
            dp_settings = replace(dp_settings, profile_share=0.0)
            log.info("DP: starting from a domain prior, so no profile release (dp_profile_share=0)")
        if prior is not None:
            init = prior.initial_weights(len(self.codec.vocab), self.codec)
            n_positions, preset = prior.n_positions, prior.preset
            self.prior = prior.summary()
            log.info("fine-tuning from the prior at %s (%s model)", prior.path, preset)
        else:
            values = ValueCodec(n_bins=opts.n_bins, binning=opts.binning, scaling=opts.scaling,
                                conditions=opts.conditions, value_range=opts.value_range,
                                point_mass_series=opts.point_mass_series)
            if kind == "step":
                self.codec = StepCodec.fit(train, values, opts.context, dp=dp_settings is not None,
                                           profiles=opts.profiles)
                n_positions = self.codec.prefix_length + self.codec.context
                log.info("step model: context %d steps%s, calendar features %s", self.codec.context,
                         " (windows at random offsets of longer series)" if self.codec.long else "",
                         [name for name, _ in self.codec.calendar] or "none")
            else:
                self.codec = values.fit(train, profiles=opts.profiles and dp_settings is None)
                n_positions = self.codec.sequence_length(train.length)
            init, preset, self.prior = None, opts.train.preset, None
        if opts.ensemble is None:
            opts.ensemble = DEFAULT_ENSEMBLE if prior is None else PRIOR_ENSEMBLE
        if prior is not None and not self.patience_given:
            opts.train = replace(opts.train, patience=PRIOR_PATIENCE)
        if not self.dropout_given:
            dropout = default_dropout(readings(train), prior is not None, dp_settings is not None)
            opts.train = replace(opts.train, dropout=dropout)
        codec = self.codec
        cycle = kind == "step" and train.start is not None and codec.cycle_length is not None
        if kind == "step" and dp_settings is not None:
            why = ("codec 'step'" if opts.codec == "step" else "missing readings" if has_gaps(train) else
                   f"series of {int(train.lengths.max())} steps, longer than the step model sees whole")
            log.warning("DP: the step model from scratch (%s)%s (docs/privacy.md, 'Long series and gaps under DP'); "
                        "shorter windows without gaps (--length) train the token model from a prior, whose DP samples "
                        "are closer to the data", why, "" if cycle and dp_settings.profile_share > 0 else
                        ", with no released profile: it learns little of a daily cycle under DP")
            if not cycle and dp_settings.profile_share > 0:
                dp_settings = replace(dp_settings, profile_share=0.0)
                log.info("DP: no time stamps or no cycle in the data: no profile is released (dp_profile_share=0)")
        step_rows = step_row_items = None
        if kind == "step":
            step_rows = window_rows(train.lengths, codec.context)
            step_row_items = pd.factorize(train.item_id)[0][step_rows[:, 0]]
        dp = (DPEngine(dp_settings, pd.factorize(train.item_id)[0] if step_row_items is None else step_row_items,
                       cpu=train_device() == "cpu") if dp_settings is not None else None)
        profile_release = None  # a token model's released per-step profile: its figures, which the tilt reads
        if dp is not None and dp_settings.profile_share > 0 and kind == "step":
            # the mean of each position of the day (week) over the items: series may start anywhere in it
            codec.set_cycle_profile(dp.release_profile(codec.cycle_means(train), pd.factorize(train.item_id)[0],
                                                       "mean profile by position in the cycle"))
            log.info("DP: released the mean of each of the %d positions of the cycle", codec.cycle_length)
        elif dp is not None and dp_settings.profile_share > 0:
            if train.is_regular:
                release = dp.release_profile(codec.to_units(train.values.astype(np.float64)))
                codec.set_profile(release, centred=prior is not None)  # a prior's bins expect centred values
                profile_release = dp.releases[-1]
            else:
                log.warning("DP: series of different lengths, so no per-step profile is released")
        values = codec.values if kind == "step" else codec
        if dp is not None:
            check_dp_range(values, train)
        # a fact read from the data without DP, under DP a release of its own
        values.standardised = standardised_ddof(train) if dp is None else dp.release_standardised(train)
        if values.standardised is not None:
            log.info("%s standardised each on its own (mean 0, standard deviation 1, ddof %d): the samples are "
                     "standardised alike", "the training series are" if dp is None else "DP: most items' series are",
                     values.standardised)
        smoothing = opts.train.smoothing
        if smoothing is None:  # under DP a fixed width: one measured on the data would leak it
            smoothing = MAX_SMOOTHING if dp is not None else step_smoothing(values.value_bins(train, warn=False)[0],
                                                                            train.lengths)
        arrays = codec.encode(train) if kind == "step" else None
        if kind != "step":
            codec.value_bins(train)  # says once how many values fall outside the range (members encode their parts)
        jobs: list[MemberJob] = []
        for member in range(opts.ensemble):
            # seeds seed*E .. seed*E+E-1: ensembles of different seeds share no member (one model: the seed itself)
            cfg = TrainConfig(**{**asdict(opts.train), "seed": opts.train.seed * opts.ensemble + member, "preset": preset})
            # each member holds out its own validation items, so together the ensemble sees every item
            fit_set, valid_set = train.split(opts.validation_fraction, seed=cfg.seed) if validate else (train, None)
            if kind == "step":
                jobs.append(self._step_job(member, cfg, arrays, train, fit_set, valid_set, step_rows, smoothing,
                                           checkpoint_dir, resume, dp))
                continue
            train_tokens = codec.encode(fit_set, warn=False)
            valid_tokens = codec.encode(valid_set, warn=False) if valid_set is not None else None
            jobs.append(TokenJob(
                member=member, cfg=cfg, train_tokens=train_tokens, vocab_size=len(codec.vocab),
                valid_tokens=valid_tokens, value_ids=(codec.value_offset, codec.value_offset + codec.n_value_tokens),
                smoothing=smoothing, first_value=codec.prefix_length, n_channels=codec.n_channels,
                edges=codec.edges, tails=codec.tails,
                slots=[(1 + k, codec.field_offset(k)) for k in range(len(codec.fields))],
                checkpoint=Path(checkpoint_dir) / f"member_{member}" if checkpoint_dir else None, resume=resume,
                dp=dp, n_positions=n_positions, init=init, trainable=opts.trainable,
                train_series=len(train_tokens), valid_series=0 if valid_tokens is None else len(valid_tokens)))
        plan = None
        if opts.train.time_limit_s is not None:
            jobs, plan = self._share_time(jobs, started + opts.train.time_limit_s, checkpoint_dir, resume)
        self.plan = self._plan(kind, jobs, plan, probe=progress or dry_run or on_plan is not None)
        if on_plan is not None:
            on_plan(self.plan)
        if dry_run:
            return
        t0 = time.time()
        outcomes = run_members(jobs, callback, progress, opts.workers)
        self.models = [o["model"] for o in outcomes]
        runs = [o["result"] for o in outcomes]
        self.privacy = outcomes[0]["privacy"]
        self.training = {
            "train_series": jobs[0].train_series,
            "valid_series": jobs[0].valid_series,
            "parameters": int(sum(p.numel() for p in self.models[0].parameters())),
            "seconds": time.time() - t0,  # wall clock; members train in parallel, each reports its own
            "members": runs,
            "smoothing": smoothing,  # label-smoothing width(s) in bins: one, or one per channel
            **({"input_noise": input_noise(codec.n_channels, opts.train.input_noise)} if kind == "step" else {}),
            **({"time_plan": plan} if plan else {}),
        }
        self.schema = data_schema(full)
        self.tilt = None
        if profile_release is not None:
            self.tilt = fit_tilt(self._over_scale(generate(
                self.models, codec, TILT_DRAWS, None, None, opts.temperature, 1.0, opts.train.seed,
                min_prob=opts.min_prob)), np.asarray(codec.profile), profile_release)
            if self.tilt["lambda"] is None:
                log.info("DP: the draws' mean is %.3f off the released per-step mean, within %g times the "
                         "release's own error (%.3f): no tilt", self.tilt["gap_before"], TILT_MIN_GAP,
                         self.tilt["release_error"])
            else:
                log.info("DP: samples are tilted toward the released per-step mean: the draws' mean %.3f off it "
                         "(the release's error %.3f), tilted %.3f; %.0f%% of the draws are kept",
                         self.tilt["gap_before"], self.tilt["release_error"], self.tilt["gap_after"],
                         100 * self.tilt["kept"])

    def _prior_choice(self, train: SeriesSet) -> str | None:
        """The prior to start from: the one asked for, or under ``prior="auto"`` what :func:`auto_prior` takes
        from public facts (``domain``, DP, the frequency and channel count), where a token model can take the
        data (no gaps, series within one step-model context), no step model is asked for and, without DP or a
        domain, the series start at one point of the daily (weekly) cycle or are short windows (:func:`phases_differ`,
        :func:`short_windows`). Longer series that start at different points of the cycle take the step model from
        scratch: its calendar inputs give every step its place in the cycle, where a token model has a condition
        token for the start's hour and knows a step by its position after it."""
        opts = self.options
        if opts.prior is None or str(opts.prior) != "auto":
            if opts.domain is not None:
                log.info("domain %r: the prior asked for (%s) is taken", opts.domain, opts.prior)
            return None if opts.prior in (None, "none") else str(opts.prior)
        name, why = auto_prior(opts.domain, opts.dp_epsilon is not None, train.freq, train.n_channels)
        (log.warning if opts.domain is not None and opts.domain.strip().lower() not in DOMAIN_PRIORS else log.info)(
            "prior: %s", why)
        if name is None:
            return None
        if opts.domain is None and opts.dp_epsilon is None and phases_differ(train) and not short_windows(train):
            log.info("prior: not the %s prior after all: the series start at different times of the day (week) and "
                     "are longer than %d steps: the step model from scratch, whose calendar inputs give every step "
                     "its place in the cycle (docs/priors.md); --prior %s or --domain takes the prior",
                     name, SHORT_STEPS, name)
            return None
        gaps = has_gaps(train)
        if opts.codec == "step" or gaps or longer_than_context(train):
            log.warning("prior: not the %s prior after all: it is a token model, and %s; the step model from scratch",
                        name, "the step model is asked for" if opts.codec == "step" else
                        "the data has gaps" if gaps else "the series are longer than one context")
            return None
        return name

    def _codec_kind(self, train: SeriesSet, prior: str | None) -> str:
        """Which model to train: 'step' (one position per time step: any length, many channels, gaps) unless a
        prior is taken (``prior``: priors are token models; under DP one is taken where the data has no gaps and
        its series fit in one step-model context), the windows are short (:func:`short_windows`) and, for one
        channel, start at one point of the daily (weekly) cycle (:func:`phases_differ`), or ``codec='token'``."""
        opts = self.options
        gaps = has_gaps(train)
        explicit_prior = opts.prior not in (None, "none", "auto")
        if opts.codec == "step" and explicit_prior:
            raise ConfigError(f"prior {opts.prior!r} is a token model: pass codec 'token' (--codec token) to start from "
                              "it, or no prior")
        steps = int(train.lengths.max())
        long = longer_than_context(train)
        short = short_windows(train)
        # one channel whose series start at different times of the day: the step model's calendar inputs, also on
        # short windows
        clock = train.n_channels == 1 and phases_differ(train)
        token = opts.codec == "token" or (opts.codec == "auto" and (prior is not None or (
            not gaps and not long and (opts.dp_epsilon is not None or (short and not clock)))))
        if token and opts.codec == "auto" and prior is None and opts.dp_epsilon is None:
            log.info("token model: series of %d steps x %d channels are short enough for a token per value (the step "
                     "model, for series of any length out: codec 'step')", steps, train.n_channels)
        elif clock and short and not token and opts.codec == "auto" and opts.dp_epsilon is None:
            log.info("step model: the series start at different times of the day (week), which its calendar inputs "
                     "give every step")
        if token and gaps:
            raise DataError("the token model cannot learn missing readings (NaN inside a series): use the step model "
                            "(codec 'step', no prior) or fill them when reading (--fill)")
        if not token and opts.trainable != "all":
            raise ConfigError(f"trainable {opts.trainable!r} applies to token models (priors); the step model trains all")
        return "token" if token else "step"

    def _step_job(self, member: int, cfg: TrainConfig, arrays: dict, train: SeriesSet, fit_set: SeriesSet,
                  valid_set: SeriesSet | None, rows: np.ndarray, smoothing, checkpoint_dir, resume: bool,
                  dp) -> StepJob:
        """A member's training job for the step model: rows of ``arrays`` (series, offset) to train and validate on.
        Unless the batch size was given (or under DP, whose accounting fixes it), a batch holds about
        ``STEP_BATCH_POSITIONS`` time steps: long contexts get smaller batches of windows, so an epoch of whole
        two-week series takes as many optimiser steps as one of four-day windows of the same data."""
        codec = self.codec
        if not self.batch_given and dp is None:
            cfg = replace(cfg, batch_size=int(np.clip(STEP_BATCH_POSITIONS // codec.context, MIN_STEP_BATCH, cfg.batch_size)))
        fit_rows, valid_rows = rows, None
        if valid_set is not None:
            fit_rows = rows[np.isin(train.item_id[rows[:, 0]], np.asarray(fit_set.item_id))]
            held = np.flatnonzero(np.isin(train.item_id, np.asarray(valid_set.item_id)))
            valid_rows = fixed_windows(train.lengths, codec.context, held)
        return StepJob(member=member, cfg=cfg, codec=codec, arrays=arrays, train_tokens=fit_rows,
                       valid_tokens=valid_rows, model_config=codec.model_config(PRESETS[cfg.preset], cfg.dropout),
                       smoothing=smoothing, slots=[],
                       checkpoint=Path(checkpoint_dir) / f"member_{member}" if checkpoint_dir else None,
                       resume=resume, dp=dp, init=None, trainable="all", n_channels=codec.n_channels,
                       train_series=len(fit_set), valid_series=0 if valid_set is None else len(valid_set))

    def _share_time(self, jobs: list[MemberJob], deadline: float, checkpoint_dir: str | Path | None,
                    resume: bool) -> tuple[list[MemberJob], dict]:
        """Split the time left until ``deadline`` (the fit's time limit) between the members, which train
        ``workers`` at a time: each gets an equal share, and a member of round r stops by the end of that round's
        share (``job.deadline``), so what a member's start-up costs (a child process, its imports) comes out of
        its own training time, not on top of the limit. A probe of a few steps here gives the time of one epoch.
        Unless the ensemble size was given, members are dropped (down to one round) while a member's share would
        not hold ``MIN_MEMBER_EPOCHS`` epochs: an ensemble's draws average its members' distributions, so
        undertrained members blur every draw (rough steps where the data is smooth), and fewer trained ones do
        better. Members that still cannot finish one epoch train without dropout, as single-pass language-model
        pretraining does: nothing is seen twice, so there is nothing to regularise, and attention dropout makes
        long windows 3x slower. The plan (returned; ``training["time_plan"]``) is kept with the checkpoints, so a
        resumed fit trains the same members the same way."""
        plan_file = Path(checkpoint_dir) / "plan.json" if checkpoint_dir else None
        workers = min(len(jobs), self.options.workers or len(os.sched_getaffinity(0)))
        if resume and plan_file is not None and plan_file.exists():
            plan = json.loads(plan_file.read_text())
        else:
            epoch_s = self._epoch_seconds(jobs[0], one_thread=workers > 1)
            seconds = deadline - time.time()
            n = len(jobs)
            while not self.ensemble_given and n > workers and seconds / math.ceil(n / workers) < MIN_MEMBER_EPOCHS * epoch_s:
                n -= 1
            share = max(seconds, 1e-3) / math.ceil(n / workers)  # time already spent: one step each
            plan = {"members": n, "time_limit_s": share, "epoch_s": epoch_s,
                    "dropout": jobs[0].cfg.dropout if share >= epoch_s else 0.0}
            if n < len(jobs):
                log.warning("time limit: one epoch takes about %.1f s per model here, so %d of %d models are "
                            "trained (%.1f s each)", epoch_s, n, len(jobs), share)
            if plan["dropout"] != jobs[0].cfg.dropout:
                log.info("time limit: less than one epoch per model, so no dropout")
            if plan_file is not None:
                atomic_write(plan_file, lambda tmp: Path(tmp).write_text(json.dumps(plan)))
        now = time.time()
        return [replace(job, cfg=replace(job.cfg, time_limit_s=plan["time_limit_s"], dropout=plan["dropout"]),
                        deadline=now + (i // workers + 1) * plan["time_limit_s"])
                for i, job in enumerate(jobs[:plan["members"]])], plan

    def _plan(self, kind: str, jobs: list[MemberJob], time_plan: dict | None, probe: bool) -> dict:
        """What the fit will do: models, workers, epochs (cap and expected), and, with ``probe`` or a time limit,
        seconds per epoch and the expected minutes (members train ``workers`` at a time)."""
        job = jobs[0]
        workers = min(len(jobs), self.options.workers or len(os.sched_getaffinity(0)))
        validated = job.valid_tokens is not None
        epochs = initial_epochs(job.cfg, validated)
        plan: dict = {"type": "plan", "model": kind, "models": len(jobs), "workers": workers,
                      "epochs_cap": job.cfg.epochs, "expected_epochs": epochs, "early_stopping": validated,
                      "train_rows": len(job.train_tokens), "batch_size": job.cfg.batch_size,
                      "time_limit_s": self.options.train.time_limit_s}
        epoch_s = time_plan["epoch_s"] if time_plan else (
            self._epoch_seconds(job, one_thread=workers > 1) if probe else None)
        if epoch_s is not None:
            rounds = math.ceil(len(jobs) / workers)
            if time_plan:
                plan["expected_epochs"] = epochs = max(1, min(epochs, math.ceil(time_plan["time_limit_s"] / epoch_s)))
            seconds = rounds * epochs * epoch_s
            plan.update(epoch_s=epoch_s, expected_s=min(seconds, self.options.train.time_limit_s or seconds))
        return plan

    @staticmethod
    def _epoch_seconds(job: MemberJob, one_thread: bool) -> float:
        """One member's epoch (training steps and a validation pass) in seconds, from a probe of a few steps
        on the device a member trains on, with the threads it gets (one when members train in parallel processes)."""
        cfg, threads = job.cfg, torch.get_num_threads()
        if one_thread:
            torch.set_num_threads(1)
        try:
            pace = seconds_per_step(member_model(job).to(train_device()), job.train_tokens, job.loss(), cfg.batch_size)
        finally:
            torch.set_num_threads(threads)
        batch = min(cfg.batch_size, len(job.train_tokens))
        valid_rows = 0 if job.valid_tokens is None else len(job.valid_tokens)
        steps = math.ceil(len(job.train_tokens) / batch) if job.dp is None else job.dp.steps_per_epoch(batch)
        # a validation batch (forward only) costs about a third of a training step
        return pace * (steps + math.ceil(valid_rows / batch) / 3)

    def _prior_codec(self, prior: Prior, train: SeriesSet, dp: bool) -> ValueCodec:
        """The prior's codec adapted to ``train``; refuses settings the prior cannot serve."""
        opts = self.options
        scaling = opts.scaling
        if scaling == "auto" and not dp:
            scaling = choose_scaling(train)
        if not dp and scaling not in ("global", "series"):
            raise ConfigError(f"scaling {scaling!r} cannot start from a prior (it needs standardised values: "
                              "'global' or 'series'): pass --prior none")
        if opts.train.preset != prior.preset and opts.train.preset != TrainConfig.preset:
            log.warning("the prior is a %r model; preset %r is ignored", prior.preset, opts.train.preset)
        return prior.codec_for(train, opts.conditions, dp, opts.value_range, opts.point_mass_series,
                               profiles=opts.profiles and not dp, scaling=scaling)

    # ------------------------------------------------------------------ sample
    def sample(self, n: int, conditions: Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, length: int | None = None, progress: bool = False,
               start=None, gaps: str = "keep", min_prob: float | None = None, tilt: bool = True) -> SeriesSet:
        """Draw ``n`` series; fields missing from ``conditions`` are drawn from the learned distribution. Step
        models draw series of any ``length`` from time stamp ``start`` (default: one of the training starts) and
        reproduce missing readings (``gaps="keep"``) or not (``"none"``). A token model draws no value token below
        ``min_prob`` (default: the fit's option, ``DP_MIN_PROB`` under DP); one trained under DP with a released
        per-step mean draws from its tilt toward that mean (:meth:`_tilted`) unless ``tilt`` is False."""
        if not self.models or self.codec is None:
            raise ConfigError("the model is not fitted")
        if gaps not in GAPS:
            raise ConfigError(f"gaps must be one of {', '.join(GAPS)}, got {gaps!r}")
        temperature = self.options.temperature if temperature is None else temperature
        if isinstance(self.codec, StepCodec):
            if start is None and not self.codec.starts:  # under DP: the data's one common start, if it has one
                start = self.schema.get("start")
            return self._with_copies(generate_steps(self.models, self.codec, n, conditions, length, start, gaps,
                                                    temperature, top_p, seed, progress=progress))
        floor = self.options.min_prob if min_prob is None else min_prob

        def draw(count: int, conds: Sequence[dict] | None, draw_seed: int | None, bar: bool) -> SeriesSet:
            return generate(self.models, self.codec, count, conds, length, temperature, top_p, draw_seed,
                            progress=bar, min_prob=floor)

        out = draw(n, conditions, seed, progress)
        if self.tilt is not None and self.tilt["lambda"] is not None and tilt and n > 0:
            out = self._tilted(out, conditions, draw, seed)
        first = parse_start(start) if start is not None else (
            np.datetime64(self.schema["start"], "ns") if self.schema.get("start") is not None else None)
        if first is not None and (out.start is None or start is not None):
            out = SeriesSet(out.values, out.lengths, out.item_id, out.channels,
                            start=np.full(len(out), first, dtype="datetime64[ns]"),
                            freq=self.schema.get("freq"), attributes=out.attributes)
        return self._with_copies(out)

    def _over_scale(self, data: SeriesSet) -> np.ndarray:
        """Sampled values over the codec's scale (per channel), the units of the released profile and the tilt."""
        return data.values.astype(np.float64) / np.asarray(self.codec.scale)

    def _tilted(self, first: SeriesSet, conditions: Sequence[dict] | None,
                draw: Callable[[int, Sequence[dict] | None, int | None, bool], SeriesSet],
                seed: int | None) -> SeriesSet:
        """``first`` (series drawn from the model) made draws of its tilt (:func:`tsynth.privacy.tilt_keep`): each
        series is kept with its tilt's probability, and each one not kept is drawn again, with its own conditions,
        in rounds of as many candidates as make a keep likely, until one is kept (after ``TILT_ROUNDS`` rounds the
        first draw stays). Every round has its own seed derived from ``seed``, so the result is reproducible."""
        tilt = self.tilt
        assert tilt is not None and tilt["lambda"] is not None
        n = len(first)
        rounds = [first]
        where = np.full(n, -1)  # each series' row in its round, -1 while none is kept
        which = np.zeros(n, dtype=int)  # its round
        kept = tilt_keep(self._over_scale(first), tilt, np.random.default_rng(None if seed is None else [seed, 0]))
        where[kept] = np.flatnonzero(kept)
        per = max(1, math.ceil(TILT_SPARE / max(tilt["kept"], 1e-3)))  # candidates a series in each later round
        for r in range(1, TILT_ROUNDS + 1):
            pending = np.flatnonzero(where < 0)
            if not len(pending):
                break
            conds = None if conditions is None else [conditions[i] for i in pending for _ in range(per)]
            round_seed = None if seed is None else int(np.random.SeedSequence([seed, r]).generate_state(1)[0])
            more = draw(len(pending) * per, conds, round_seed, False)
            hits = tilt_keep(self._over_scale(more), tilt, np.random.default_rng(None if seed is None else [seed, r]))
            hits = hits.reshape(len(pending), per)
            got = hits.any(axis=1)
            where[pending[got]] = (np.arange(len(pending)) * per + hits.argmax(axis=1))[got]
            which[pending[got]] = len(rounds)
            rounds.append(more)
        else:
            pending = np.flatnonzero(where < 0)
            if len(pending):
                log.warning("DP tilt: %d of %d series were not kept in %d rounds and stay as first drawn",
                            len(pending), n, TILT_ROUNDS)
                where[pending] = pending
        parts = [(idx, part) for k, part in enumerate(rounds) if len(idx := np.flatnonzero(which == k))]
        merged = SeriesSet.concat([part.subset(where[idx]) for idx, part in parts])
        order = np.argsort(np.concatenate([idx for idx, _ in parts]), kind="stable")
        out = merged.subset(order)
        return SeriesSet(out.values, out.lengths, first.item_id, out.channels, start=out.start, freq=out.freq,
                         attributes=out.attributes)

    def _learnt_channels(self) -> list[str]:
        """The channels the model learns where some repeat others (``channel_copies``): every one but the copies."""
        assert self.channel_copies is not None
        return [c for c in self.channel_copies["channels"] if c not in self.channel_copies["copies"]]

    def _with_copies(self, out: SeriesSet) -> SeriesSet:
        """Samples with the channels that repeat others (``channel_copies``) put back in the data's order."""
        if not self.channel_copies:
            return out
        return restore_copies(out, self.channel_copies["channels"], self.channel_copies["copies"])

    def values_codec(self) -> ValueCodec:
        """The scaler, bins, point masses and condition vocabulary (the step codec's, or the codec itself)."""
        return self.codec.values if isinstance(self.codec, StepCodec) else self.codec

    def series_loss(self, data: SeriesSet) -> np.ndarray:
        """Each series' mean loss per predicted value (or token) under the model, averaged over the members
        (unsmoothed; the likelihood audit's score)."""
        if self.channel_copies:
            data = keep_channels(data, self._learnt_channels())
        if isinstance(self.codec, StepCodec):
            arrays = self.codec.encode(data)
            rows = fixed_windows(data.lengths, self.codec.context, np.arange(len(data)), most=None)
            loss = window_loss(self.codec, arrays, 0.0, 0.0, 0)
        else:
            rows = self.codec.encode(data)
            loss = value_token_loss((self.codec.value_offset, self.codec.value_offset + self.codec.n_value_tokens), 0.0)
        with torch.no_grad():  # in chunks: the logits of every series at once do not fit in memory on wide data
            per_row = np.mean([np.concatenate([loss(m, chunk, reduction="none").numpy()
                                               for chunk in torch.as_tensor(rows).split(256)])
                               for m in self.models], axis=0)
        if isinstance(self.codec, StepCodec):
            return np.bincount(rows[:, 0], weights=per_row, minlength=len(data)) / np.bincount(rows[:, 0], minlength=len(data))
        return per_row

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """What ``tsynth.json`` records for this backend."""
        opts = asdict(self.options)
        opts["conditions"] = list(opts["conditions"]) if not isinstance(opts["conditions"], str) else opts["conditions"]
        return {"options": opts, "codec": self.codec.to_dict() if self.codec else None,
                "training": self.training, "schema": self.schema, "members": len(self.models),
                "privacy": self.privacy, "prior": self.prior, **({"corpus": self.corpus} if self.corpus else {}),
                **({"channel_copies": self.channel_copies} if self.channel_copies else {}),
                **({"tilt": self.tilt} if self.tilt else {})}

    def save(self, directory: Path) -> None:
        """Write each member as a Hugging Face model directory with the codec's tokenizer."""
        _quiet_transformers()
        tok = None if isinstance(self.codec, StepCodec) else self.codec.hf_tokenizer()
        for k, m in enumerate(self.models):
            d = directory / ("model" if k == 0 else f"model_{k}")
            m.save_pretrained(d)
            if tok is not None:
                tok.save_pretrained(d)
        if self.corpus:
            (directory / CORPUS_FILE).write_text(json.dumps(self.corpus, indent=2))
        if self.values_codec().point_masses:
            self.values_codec().save_point_masses(directory / POINT_MASS_FILE)

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> "LocalBackend":
        """Rebuild the backend from its model directory and ``tsynth.json`` state."""
        from transformers import AutoModelForCausalLM

        _quiet_transformers()
        opts = dict(state["options"])
        train_opts = opts.pop("train")
        self = cls(**opts, **train_opts)
        step = state["codec"].get("kind") == "step"
        self.codec = StepCodec.from_dict(state["codec"]) if step else ValueCodec.from_dict(state["codec"])
        if (directory / POINT_MASS_FILE).exists():
            self.values_codec().load_point_masses(directory / POINT_MASS_FILE)
        elif sum(state["codec"].get("point_masses_per_channel", [])):
            raise ArtifactError(f"{directory}: {POINT_MASS_FILE} is missing (tsynth.json records point masses)")
        self.training, self.schema = state.get("training", {}), state.get("schema", {})
        self.privacy, self.prior, self.corpus = state.get("privacy"), state.get("prior"), state.get("corpus")
        self.channel_copies = state.get("channel_copies")
        self.tilt = state.get("tilt")
        self.models = []
        device = train_device()  # where a fit leaves them
        for k in range(int(state.get("members", 1))):
            d = directory / ("model" if k == 0 else f"model_{k}")
            self.models.append(AutoModelForCausalLM.from_pretrained(d).to(device).eval())
        return self


@dataclass(kw_only=True)
class MemberJob:
    """One ensemble member's training, as the fit plans it; a child process receives it pickled, so a kind's
    behaviour is in its methods (``python -m`` loads this module twice, under two names)."""

    member: int
    cfg: TrainConfig
    train_tokens: np.ndarray  # token model: encoded sequences; step model: rows (series, offset) of its arrays
    valid_tokens: np.ndarray | None
    smoothing: float | list[float]  # label-smoothing width(s) in bins: one, or one per channel
    slots: list[tuple[int, int]]  # per condition field: (position, id of its unknown token), for condition dropout
    checkpoint: Path | None
    resume: bool
    dp: DPEngine | None
    init: dict | None  # a prior's weights
    trainable: str
    n_channels: int
    train_series: int
    valid_series: int
    deadline: float | None = None  # under a time limit: when the member stops (time.time()), start-up included

    def fresh_model(self, dropout: float) -> torch.nn.Module:
        """The member's untrained model."""
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module) -> None:
        """What a model that does not start from a prior's weights gets before training (nothing by default)."""

    def loss(self) -> Callable:
        """The training loss: next-token (or next-step) cross-entropy, value targets smoothed by ``smoothing``."""
        raise NotImplementedError

    def source_arrays(self) -> dict | None:
        """The arrays whose rows ``train_tokens`` index (the step model's), for the run's fingerprint."""
        return None


@dataclass(kw_only=True)
class TokenJob(MemberJob):
    """A member of the token model: a GPT-2 over value tokens."""

    vocab_size: int
    n_positions: int
    value_ids: tuple[int, int]  # the value tokens' ids: [first, last + 1)
    first_value: int  # sequence position of the first value token
    edges: list[float]  # the codec's bin edges and edge-bin tails: label smoothing by bin value
    tails: list[list[float]]

    def fresh_model(self, dropout: float) -> torch.nn.Module:
        # a member fine-tuned from a prior without DP stops early (a dozen epochs) and trains without attention
        # dropout: its fit is about a third faster, its samples told apart a little more often on most sets
        # (docs/model-and-training.md, "Training")
        from_prior = self.init is not None and not self.dp
        return build_model(self.vocab_size, self.n_positions, self.cfg.preset, dropout, 0.0 if from_prior else None)

    def prepare(self, model: torch.nn.Module) -> None:
        factor_positions(model, self.first_value, self.n_channels)

    def loss(self) -> Callable:
        return value_token_loss(self.value_ids, self.smoothing, self.first_value,
                                bin_values(self.edges, self.tails, self.n_channels))


@dataclass(kw_only=True)
class StepJob(MemberJob):
    """A member of the step model: windows of the encoded series."""

    codec: StepCodec
    arrays: dict
    model_config: dict

    def fresh_model(self, dropout: float) -> torch.nn.Module:
        return StepModel(StepModelConfig(**{**self.model_config, "dropout": dropout}))

    def loss(self) -> Callable:
        return window_loss(self.codec, self.arrays, self.smoothing, self.cfg.condition_dropout, self.cfg.seed,
                           input_noise(self.codec.n_channels, self.cfg.input_noise))

    def source_arrays(self) -> dict | None:
        return self.arrays


def member_model(job: MemberJob):
    """A member's model before training: built from its config, the prior's weights loaded if any, only the
    chosen parameters trainable."""
    model = job.fresh_model(job.cfg.dropout)
    if job.init is not None:
        model.load_state_dict(job.init)
    else:
        job.prepare(model)
    select_trainable(model, job.trainable)
    return model


def window_rows(lengths: np.ndarray, context: int) -> np.ndarray:
    """An epoch of step-model training rows (series, -1: a random offset each time): as many windows of each
    series as its length holds contexts, so an epoch sees about every step once."""
    per = np.maximum(1, -(-np.asarray(lengths) // context))
    series = np.repeat(np.arange(len(per)), per)
    return np.stack([series, np.full(len(series), -1)], axis=1).astype(np.int64)


def fixed_windows(lengths: np.ndarray, context: int, series: np.ndarray, most: int | None = MAX_VALID_WINDOWS) -> np.ndarray:
    """Rows (series, offset) of fixed windows spread evenly over each of ``series``: as many as its length holds
    contexts, at most ``most`` (None: all)."""
    out = []
    for i in series:
        n = int(lengths[i])
        k = max(1, -(-n // context))
        k = k if most is None else min(k, most)
        for off in np.unique(np.linspace(0, max(n - context, 0), k).astype(np.int64)):
            out.append((int(i), int(off)))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def train_member(job: MemberJob, callback: Callable[[dict], None] | None, progress: bool) -> dict:
    """Build and train one ensemble member; returns the model, its figures and its privacy report."""
    cfg = job.cfg
    if job.deadline is not None:  # the time limit counts from the plan, start-up included
        cfg = replace(cfg, time_limit_s=max(job.deadline - time.time(), 1e-3))
    torch.manual_seed(cfg.seed)
    model = member_model(job)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dp = job.dp
    member_callback = None if callback is None else (lambda e: callback({**e, "member": job.member}))
    model, result = train_lm(model, job.train_tokens, job.valid_tokens, job.loss(), job.slots, cfg,
                             job.checkpoint, job.resume, member_callback, dp=dp, progress=progress,
                             source_arrays=job.source_arrays())
    for p in model.parameters():
        p.requires_grad_(True)
    return {"model": model, "result": {**asdict(result), "trainable": job.trainable, "trainable_values": trainable},
            "privacy": dp.report() if dp is not None else None}


def run_members(jobs: list[MemberJob], callback: Callable[[dict], None] | None, progress: bool,
                workers: int | None = None) -> list[dict]:
    """Train every member: in this process when there is one member or one core, else in parallel child
    processes (``python -m tsynth.backends.local DIR``, one torch thread each, at most ``workers`` or the
    number of cores), each of which trains member after member, so a process's start-up (Python, torch and
    transformers imported: seconds) is paid once per worker, not once per member. Events reach ``callback`` in
    this process; if it raises (or the run is interrupted), the workers are stopped and the error propagates.
    A member's input (its job: the encoded training data) goes to :func:`_inputs_dir`, and the worker removes it
    as soon as it has read it; the directory is removed when training ends, however it ends."""
    workers = min(len(jobs), workers or len(os.sched_getaffinity(0)))
    if workers <= 1 or world_size() > 1:  # data-parallel: the processes train each member together, in turn
        return [train_member(job, callback, progress) for job in jobs]
    from tqdm.auto import tqdm

    events: Queue = Queue()  # (worker, line); line None: the worker's output closed
    pending, done = list(jobs), {}
    pool: list[subprocess.Popen] = []
    busy: dict[int, MemberJob] = {}  # worker -> the member it trains
    # the bar counts the epochs each member is expected to train (members report their estimate after every
    # epoch; members not yet started are taken to train as many as the latest estimate)
    expected = {j.member: initial_epochs(j.cfg, j.valid_tokens is not None) for j in jobs}
    bar = tqdm(total=sum(expected.values()), desc=f"training {len(jobs)} members", unit="epoch",
               disable=not progress, leave=False)

    def recount(member: int, epochs: int) -> None:
        expected[member] = epochs
        for j in pending:
            expected[j.member] = epochs
        bar.total = sum(expected.values())

    tmp = _inputs_dir(jobs)
    try:
        while pending or busy:
            for w in range(workers):
                if pending and w not in busy:
                    if w == len(pool):
                        pool.append(_start_worker(w, tmp, events))
                    busy[w] = pending.pop(0)
                    _give(pool[w], busy[w], tmp)
            worker, line = events.get()
            if line is None:  # a worker's output closed while the fit needs it: it died
                job = busy.get(worker)
                raise RuntimeError(f"training member {job.member if job else '?'} failed (exit code "
                                   f"{pool[worker].wait()}); see the log above")
            event = json.loads(line)
            if "error" in event:  # the worker refused its input (e.g. a checkpoint of another fit)
                raise ConfigError(event["error"])
            if "done" in event:
                job = busy.pop(worker)
                out = tmp / f"member_{job.member}.out"
                res = torch.load(out, weights_only=False)
                out.unlink()
                model = job.fresh_model(job.cfg.dropout)
                model.load_state_dict(res["weights"])
                done[job.member] = {"model": model.eval(), "result": res["result"], "privacy": res["privacy"]}
                recount(job.member, res["result"]["epochs_run"])
                bar.refresh()
                continue
            recount(event["member"], event.get("expected_epochs", event["epochs"]))
            bar.update(1)
            bar.set_postfix(member=event["member"], train=f"{event['train_loss']:.3f}")
            if callback is not None:
                callback(event)
    finally:
        for proc in pool:
            proc.kill()
            proc.wait()
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return [done[j.member] for j in jobs]


MEMBERS_TMP_PREFIX = "tsynth-members-"


def _inputs_dir(jobs: list[MemberJob]) -> Path:
    """Where the members' inputs go: ``inputs/`` of the fit's checkpoint directory, owner-only (never a shared
    temporary directory), or a private temporary directory (also owner-only) when the fit has none."""
    if jobs[0].checkpoint is None:
        return Path(tempfile.mkdtemp(prefix=MEMBERS_TMP_PREFIX))
    d = Path(jobs[0].checkpoint).parent / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    return d


def _start_worker(index: int, tmp: Path, events: Queue) -> subprocess.Popen:
    """Start a worker process on the inputs directory ``tmp``; a thread forwards its event lines (then None) to
    ``events`` as ``(index, line)``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # the worker is told who started it: read from os.getppid() once it has started, a parent killed while the worker
    # imports would already be gone, and the worker would watch its new parent instead
    proc = subprocess.Popen([sys.executable, "-m", "tsynth.backends.local", str(tmp), str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def forward() -> None:
        for line in proc.stdout:
            if line.startswith("{"):
                events.put((index, line))
        events.put((index, None))

    threading.Thread(target=forward, daemon=True).start()
    return proc


def _give(proc: subprocess.Popen, job: MemberJob, tmp: Path) -> None:
    """Hand ``job`` to a worker: its file in ``tmp``, its name on the worker's input."""
    path = tmp / f"member_{job.member}.pt"
    torch.save(job, path)
    proc.stdin.write(path.name + "\n")
    proc.stdin.flush()


ORPHAN_POLL_S = 1.0  # how often a worker checks that the process which started it is still there


def _remove_inputs(tmp: Path, current: list[Path]) -> None:
    """Remove what a worker holds of the inputs (the encoded training data) and its output: the whole directory
    where it is a private temporary one, else (``inputs/`` of a checkpoint directory) its current member's files."""
    if tmp.name.startswith(MEMBERS_TMP_PREFIX):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        for path in current:
            for p in (path, path.with_suffix(".out")):
                p.unlink(missing_ok=True)


def _stop_with_parent(tmp: Path, current: list[Path], parent: int) -> None:
    """Watch, on a daemon thread, for the process that started this worker (``parent``) to be gone (killed
    outright, so it could neither stop its workers nor remove their inputs): then remove the inputs and exit,
    rather than train on for nobody."""

    def watch() -> None:
        while True:
            time.sleep(ORPHAN_POLL_S)
            if os.getppid() != parent:
                _remove_inputs(tmp, current)
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _worker_main(directory: str, parent: int) -> None:
    """Worker process entry: train the members whose job files (names in ``directory``) arrive on its input, a line
    each, one after another; remove each job file once read, print the member's events as JSON lines, save its
    result beside the job and print ``{"done": member}``. Its input closed, it exits. Once the process that
    started it (``parent``) is gone (its events then have nowhere to go), it removes the inputs and exits."""
    tmp = Path(directory)
    current: list[Path] = []
    _stop_with_parent(tmp, current, parent)
    torch.set_num_threads(1)
    while line := sys.stdin.readline():
        path = tmp / line.strip()
        current[:] = [path]
        try:
            job = torch.load(path, weights_only=False)
            path.unlink()
            out = train_member(job, lambda e: print(json.dumps(e), flush=True), progress=False)
            torch.save({"weights": out["model"].state_dict(), "result": out["result"], "privacy": out["privacy"]},
                       path.with_suffix(".out"))
            print(json.dumps({"done": job.member}), flush=True)
        except TsynthError as e:  # the parent raises it as the fit's error (one line, not this traceback)
            print(json.dumps({"error": str(e)}), flush=True)
            sys.exit(2)
        except BaseException as e:
            # events that cannot be written (the pipe's reader is gone) mean the parent was killed: its pipe closes
            # before this process is handed to another parent, so the pipe says so first
            if isinstance(e, BrokenPipeError) or os.getppid() != parent:
                _remove_inputs(tmp, current)
                os._exit(1)
            raise
    if os.getppid() != parent:  # the input closed because the parent is gone, before the watch noticed
        _remove_inputs(tmp, current)
        os._exit(1)


def _quiet_transformers() -> None:
    """No per-file progress bars from transformers when saving or loading these tiny models."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    _worker_main(sys.argv[1], int(sys.argv[2]))
