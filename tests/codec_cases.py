"""Small value-codec fits whose saved form (``to_dict``), point masses, tokens and decoded values are kept in
``tests/fixtures/value_codec_v1.json`` and ``value_codec_v1_*.npz``, written by the codec before it was split
into its parts: ``tests/test_codec_format.py`` checks that the codec still loads them, saves them byte for
byte, and encodes and decodes to the same numbers. Regenerate only on a deliberate format change::

    cd tests && python codec_cases.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from tsynth import SeriesSet
from tsynth.codecs.values import ValueCodec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
JSON = FIXTURES / "value_codec_v1.json"


def npz_path(name: str) -> Path:
    return FIXTURES / f"value_codec_v1_{name}.npz"


def data_set(kind: str) -> SeriesSet:
    """Ten two-channel series of 12 hourly steps: a count channel (point masses) and a reading channel."""
    rng = np.random.default_rng(7)
    n, length = 10, 12
    t = np.arange(length)
    counts = rng.integers(0, 4, size=(n, length)).astype(float)
    readings = np.sin(2 * np.pi * t[None] / 12 + rng.uniform(0, 3, (n, 1))) + 0.3 * rng.normal(size=(n, length))
    if kind == "series":   # levels over three orders of magnitude
        readings = 10.0 ** np.linspace(0, 3, n)[:, None] * (2.0 + readings)
    if kind in ("dp", "prior"):   # inside a public range [-3, 3]
        readings = np.clip(readings, -2.9, 2.9)
    vals = np.stack([counts, readings], axis=2)
    lengths = np.full(n, length)
    lengths[-1] = 9   # one shorter series
    start = pd.Timestamp("2024-03-01") + pd.to_timedelta(rng.integers(0, 9, size=n) * 24, unit="h")
    attrs = pd.DataFrame({"season": rng.choice(["winter", "summer"], size=n), "temp": rng.normal(10, 5, size=n)})
    return SeriesSet.from_arrays([v[:k] for v, k in zip(vals, lengths)], [f"MT_{i:03d}" for i in range(n)],
                                 ["count", "load"], start=start.to_numpy(), freq="h", attributes=attrs)


def fit(kind: str) -> ValueCodec:
    """The codec of each case, fitted the way the backends fit it."""
    data = data_set(kind)
    if kind == "global":
        return ValueCodec(n_bins=16, point_mass_series=3).fit(data)
    if kind == "conditions":
        return ValueCodec(n_bins=8, binning="uniform", conditions=["item_id", "season", "temp", "hour"]).fit(data)
    if kind == "series":
        return ValueCodec(n_bins=16).fit(data)
    if kind == "dp":
        codec = ValueCodec(n_bins=16, binning="uniform", scaling="none", value_range=(-3.0, 3.0),
                           point_mass_series=0).fit(data)
        codec.set_profile(np.linspace(-0.5, 0.5, 24).reshape(12, 2), centred=False)
        return codec
    if kind == "prior":
        edges = np.concatenate([[-4.0], np.linspace(-2, 2, 15), [4.0]])
        codec = ValueCodec(n_bins=16, binning="quantile", scaling="none", value_range=(-3.0, 3.0),
                           point_mass_series=0).fit(data, edges=edges)
        codec.set_profile(np.linspace(-0.2, 0.2, 24).reshape(12, 2), centred=True)
        return codec
    raise ValueError(kind)


CASES = ["global", "conditions", "series", "dp", "prior"]


def record(kind: str, codec: ValueCodec) -> dict:
    """What a case's codec does on its data: tokens, vocabulary, units, decoded values (seeded)."""
    data = data_set(kind)
    tokens = codec.encode(data)
    p = codec.prefix_length
    back = codec.decode(tokens[:, :p], tokens[:, p: p + data.length * data.n_channels], data.lengths,
                        np.random.default_rng(0), start=data.start)
    units = codec.to_units(data.values.astype(np.float64))
    return {"tokens": tokens.tolist(), "vocab": codec.vocab, "units": np.nan_to_num(units, nan=1e9).tolist(),
            "decoded": np.nan_to_num(back.values.astype(np.float64), nan=1e9).tolist(),
            "decoded_item_id": list(back.item_id),
            "decoded_attributes": back.attributes.astype(str).to_dict("list"),
            "outside_share": codec.outside_share(data)}


def write() -> None:
    FIXTURES.mkdir(exist_ok=True)
    doc = {}
    for kind in CASES:
        codec = fit(kind)
        doc[kind] = {"codec": codec.to_dict(), "record": record(kind, codec)}
        if codec.point_masses:
            codec.save_point_masses(npz_path(kind))
    JSON.write_text(json.dumps(doc))


if __name__ == "__main__" and "--write" in sys.argv:
    write()
