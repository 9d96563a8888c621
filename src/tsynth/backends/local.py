"""Backend "local": a compact causal LM over value tokens, trained and sampled on this machine.

``fit`` fits the value codec on the training items, keeps a validation split of *other* items for
early stopping, trains one model (or an ensemble of ``ensemble`` models with different seeds, whose
probabilities are averaged when sampling) and keeps the best epoch of each. ``save`` writes each member
as a standard Hugging Face model directory (``model/``, ``model_1/``...) whose tokenizer is the codec, so
``AutoModelForCausalLM.from_pretrained(dir/"model")`` works without tsynth.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from ..codecs.values import ValueCodec
from ..data import SeriesSet
from ..errors import ConfigError, DataError
from ..sample import generate
from ..train import TrainConfig, build_model, train_lm

log = logging.getLogger("tsynth")

MIN_SERIES = 8
MIN_ITEMS_FOR_VALIDATION = 20


@dataclass
class LocalOptions:
    """Options of the local backend: codec, model and training settings."""

    n_bins: int = 256
    binning: str = "quantile"
    scaling: str = "auto"
    conditions: Sequence[str] | str = "auto"
    validation_fraction: float = 0.1
    ensemble: int = 1
    temperature: float = 1.0
    train: TrainConfig = None  # type: ignore[assignment]

    @classmethod
    def from_kwargs(cls, **kw: Any) -> "LocalOptions":
        own = {f.name for f in fields(cls)} - {"train"}
        train_names = {f.name for f in fields(TrainConfig)}
        unknown = set(kw) - own - train_names
        if unknown:
            raise ConfigError(f"unknown option(s) for the local backend: {', '.join(sorted(unknown))}")
        opts = cls(**{k: v for k, v in kw.items() if k in own})
        opts.train = TrainConfig(**{k: v for k, v in kw.items() if k in train_names})
        if opts.ensemble < 1:
            raise ConfigError("ensemble must be at least 1")
        return opts


class LocalBackend:
    """See the module docstring."""

    name = "local"

    def __init__(self, **options: Any) -> None:
        self.options = LocalOptions.from_kwargs(**options)
        self.codec: ValueCodec | None = None
        self.models: list = []
        self.training: dict[str, Any] = {}
        self.schema: dict[str, Any] = {}

    # ------------------------------------------------------------------ fit
    def fit(self, train: SeriesSet, callback: Callable[[dict], None] | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = False, progress: bool = True) -> None:
        """Fit the codec and train the model(s) on ``train``."""
        if len(train) < MIN_SERIES:
            raise DataError(f"{len(train)} series are too few to learn from; the local backend needs at least {MIN_SERIES}")
        opts = self.options
        items = pd.unique(train.item_id)
        validate = len(items) >= MIN_ITEMS_FOR_VALIDATION and opts.validation_fraction > 0
        if not validate:
            log.warning("only %d items: no validation split, training for a fixed %d epochs", len(items), opts.train.epochs)
        self.codec = ValueCodec(n_bins=opts.n_bins, binning=opts.binning, scaling=opts.scaling,
                                conditions=opts.conditions).fit(train)
        codec = self.codec
        value_range = (codec.value_offset, codec.value_offset + codec.n_value_tokens)
        slots = [(1 + k, codec.field_offset(k)) for k in range(len(codec.fields))]
        self.models, runs = [], []
        for member in range(opts.ensemble):
            cfg = TrainConfig(**{**asdict(opts.train), "seed": opts.train.seed + member})
            # each member holds out its own validation items, so together the ensemble sees every item
            fit_set, valid_set = train.split(opts.validation_fraction, seed=cfg.seed) if validate else (train, None)
            train_tokens = codec.encode(fit_set)
            valid_tokens = codec.encode(valid_set) if valid_set is not None else None
            torch.manual_seed(cfg.seed)
            model = build_model(len(codec.vocab), train_tokens.shape[1], cfg.preset, cfg.dropout)
            ckpt = Path(checkpoint_dir) / f"member_{member}" if checkpoint_dir else None
            model, result = train_lm(model, train_tokens, valid_tokens, value_range, slots, cfg, ckpt, resume,
                                     callback, progress=progress)
            self.models.append(model)
            runs.append(asdict(result))
        self.training = {
            "train_series": len(fit_set), "valid_series": 0 if valid_set is None else len(valid_set),
            "parameters": int(sum(p.numel() for p in self.models[0].parameters())),
            "seconds": float(sum(r["seconds"] for r in runs)), "members": runs,
        }
        self.schema = _schema(train)

    # ------------------------------------------------------------------ sample
    def sample(self, n: int, conditions: Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, length: int | None = None, progress: bool = False) -> SeriesSet:
        """Draw ``n`` series; fields missing from ``conditions`` are drawn from the learned distribution."""
        if not self.models or self.codec is None:
            raise ConfigError("the model is not fitted")
        temperature = self.options.temperature if temperature is None else temperature
        out = generate(self.models, self.codec, n, conditions, length, temperature, top_p, seed, progress=progress)
        if out.start is None and self.schema.get("start") is not None:
            out = SeriesSet(out.values, out.lengths, out.item_id, out.channels,
                            start=np.full(len(out), np.datetime64(self.schema["start"]), dtype="datetime64[ns]"),
                            freq=self.schema.get("freq"), attributes=out.attributes)
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """What ``tsynth.json`` records for this backend."""
        opts = asdict(self.options)
        opts["conditions"] = list(opts["conditions"]) if not isinstance(opts["conditions"], str) else opts["conditions"]
        return {"options": opts, "codec": self.codec.to_dict() if self.codec else None,
                "training": self.training, "schema": self.schema, "members": len(self.models)}

    def save(self, directory: Path) -> None:
        """Write each member as a Hugging Face model directory with the codec's tokenizer."""
        tok = self.codec.hf_tokenizer()
        for k, m in enumerate(self.models):
            d = directory / ("model" if k == 0 else f"model_{k}")
            m.save_pretrained(d)
            tok.save_pretrained(d)

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> "LocalBackend":
        from transformers import AutoModelForCausalLM

        opts = dict(state["options"])
        train_opts = opts.pop("train")
        self = cls(**opts, **train_opts)
        self.codec = ValueCodec.from_dict(state["codec"])
        self.training, self.schema = state.get("training", {}), state.get("schema", {})
        self.models = []
        for k in range(int(state.get("members", 1))):
            d = directory / ("model" if k == 0 else f"model_{k}")
            self.models.append(AutoModelForCausalLM.from_pretrained(d).eval())
        return self


def _schema(data: SeriesSet) -> dict[str, Any]:
    starts = None if data.start is None else np.unique(data.start)
    return {"channels": data.channels, "length": data.length if data.is_regular else None,
            "freq": data.freq, "n_series": len(data), "n_items": int(len(pd.unique(data.item_id))),
            "attributes": list(data.attributes.columns),
            "start": str(starts[0]) if starts is not None and len(starts) == 1 else None}
