"""Pieces every backend shares: request checks, condition rows, the data schema, answers -> SeriesSet."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data import SeriesSet
from ..errors import ConfigError, check_sample_request

__all__ = ["MIN_ITEMS_FOR_VALIDATION", "check_sample_request", "sample_conditions", "text_sample_inputs",
           "data_schema", "series_from_answers"]

MIN_ITEMS_FOR_VALIDATION = 20  # fewer items: no validation split, a fixed number of epochs


def sample_conditions(n: int, conditions: Sequence[dict] | None, pool: Sequence[dict],
                      rng: np.random.Generator) -> list[dict]:
    """One condition dict per series: the given ones, or ``n`` draws from the training ``pool``."""
    if conditions is None:
        return [dict(pool[k]) for k in rng.integers(len(pool), size=n)]
    conds = [dict(c) for c in conditions]
    if len(conds) != n:
        raise ConfigError(f"{len(conds)} condition rows for {n} series")
    return conds


def text_sample_inputs(codec, n: int, conditions: Sequence[dict] | None, pool: Sequence[dict],
                       temperature: float | None, top_p: float, seed: int | None,
                       length: int | None) -> tuple[int, np.random.Generator, list[dict]]:
    """What a text backend's ``sample`` starts from: the checked request, the series length, a seeded
    generator and one condition row per series."""
    check_sample_request(n, temperature, top_p)
    length = length or codec.length
    if not length:
        raise ConfigError("this model was trained on variable-length series: pass length=")
    rng = np.random.default_rng(seed)
    return length, rng, sample_conditions(n, conditions, pool, rng)


def data_schema(data: SeriesSet) -> dict[str, Any]:
    """The shape of the training data recorded in ``tsynth.json``."""
    starts = None if data.start is None else np.unique(data.start)
    return {"channels": data.channels, "length": data.length if data.is_regular else None,
            "freq": data.freq, "n_series": len(data), "n_items": int(len(pd.unique(data.item_id))),
            "attributes": list(data.attributes.columns),
            "start": str(starts[0]) if starts is not None and len(starts) == 1 else None}


def series_from_answers(arrays: list[np.ndarray], conds: list[dict], channels: list[str]) -> SeriesSet:
    """Parsed answers of a text backend as a SeriesSet; item ids and attributes from their conditions."""
    ids = [str(c.get("item_id", f"synthetic_{i}")) for i, c in enumerate(conds)]
    attrs = pd.DataFrame([{k: v for k, v in c.items() if k != "item_id"} for c in conds])
    return SeriesSet.from_arrays(arrays, ids, channels, attributes=attrs if len(attrs.columns) else None,
                                 source="answers")
