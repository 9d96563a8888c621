"""SeriesSet: the one in-memory form of a time-series data set, with every reader and writer.

Nothing else in tsynth parses data files. Formats:

* long  -- one row per (series, time step): id column, time column, value columns, attribute columns;
* wide  -- a column per series (index = time) or a row per series (columns = time steps);
* records -- GluonTS / Hugging Face style rows ``item_id, start, target`` (+ attribute fields),
  from Parquet/JSONL files or ``datasets.load_dataset``;
* jsonl arrays -- one JSON array per line (the recipe's ``few_shots.jsonl``), or one object per line
  with a list per channel (``{"consumption": [...]}``).

Windowing (fixed cut or sliding windows), per-series z-scoring and the train/holdout split by item
live here too.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import DataError

log = logging.getLogger("tsynth")

SUPPORTED_EXTENSIONS = (".parquet", ".csv", ".jsonl", ".json")
FILL_POLICIES = ("interpolate", "ffill", "zero", "gap")  # "gap": missing time steps become NaN readings
LAYOUTS = ("auto", "long", "wide", "records", "arrays")
_HF_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_META_KEY = b"tsynth"


@dataclass
class SeriesSet:
    """A set of (possibly multivariate, possibly ragged) time series.

    ``values`` is float32 of shape (n, length, channels); steps at or beyond ``lengths[i]`` are NaN.
    ``start`` holds one timestamp per series (``datetime64[ns]``) or is None when the data has no time
    axis; ``freq`` is a pandas offset alias ("h", "D", "15min") or None. ``attributes`` is a DataFrame
    of static per-series fields with one row per series.
    """

    values: np.ndarray
    lengths: np.ndarray
    item_id: np.ndarray
    channels: list[str]
    start: np.ndarray | None = None
    freq: str | None = None
    attributes: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float32)
        if v.ndim == 2:
            v = v[:, :, None]
        if v.ndim != 3:
            raise DataError(f"values must have shape (n, length, channels), got {v.shape}")
        n, length, c = v.shape
        self.values = v
        self.lengths = np.asarray(self.lengths, dtype=np.int64).reshape(-1)
        self.item_id = np.asarray([str(x) for x in np.asarray(self.item_id, dtype=object).reshape(-1)], dtype=object)
        self.channels = [str(ch) for ch in self.channels]
        if len(self.lengths) != n or len(self.item_id) != n:
            raise DataError(f"{n} series but {len(self.lengths)} lengths and {len(self.item_id)} item ids")
        if len(self.channels) != c:
            raise DataError(f"{c} channels in values but {len(self.channels)} channel names {self.channels}")
        if n and (self.lengths.min() < 1 or self.lengths.max() > length):
            raise DataError(f"series lengths must lie in 1..{length}")
        if self.start is not None:
            start = _datetimes(np.asarray(self.start, dtype=object).reshape(-1))
            if len(start) != n or start.isna().any():
                raise DataError(f"{n} series need {n} valid start timestamps, got {start.tolist()[:3]}...")
            self.start = start.to_numpy()
        attrs = self.attributes if self.attributes is not None else pd.DataFrame()
        if len(attrs.columns) == 0:
            attrs = pd.DataFrame(index=range(n))
        if len(attrs) != n:
            raise DataError(f"{n} series but {len(attrs)} attribute rows")
        self.attributes = attrs.reset_index(drop=True)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def length(self) -> int:
        """The longest series' length (the padded time dimension)."""
        return int(self.values.shape[1])

    @property
    def n_channels(self) -> int:
        return int(self.values.shape[2])

    @property
    def is_regular(self) -> bool:
        """True when every series has the full length (no padding)."""
        return bool(len(self) == 0 or (self.lengths == self.length).all())

    def series(self, i: int) -> np.ndarray:
        """Series ``i`` without padding, shape (lengths[i], channels)."""
        return self.values[i, : self.lengths[i]]

    def subset(self, index: Sequence[int] | np.ndarray) -> "SeriesSet":
        """The series at the given positions (or boolean mask), in that order."""
        idx = np.arange(len(self))[np.asarray(index)]
        lengths = self.lengths[idx]
        max_len = int(lengths.max()) if len(idx) else 0
        return SeriesSet(
            values=self.values[idx, : max(max_len, 1)],
            lengths=lengths,
            item_id=self.item_id[idx],
            channels=list(self.channels),
            start=None if self.start is None else self.start[idx],
            freq=self.freq,
            attributes=self.attributes.iloc[idx].reset_index(drop=True),
        )

    def missing(self) -> np.ndarray:
        """(n, length) True where a series misses a reading before its end (NaN in a channel: a gap)."""
        inside = np.arange(self.length)[None, :] < self.lengths[:, None]
        return np.isnan(self.values).any(axis=2) & inside

    def require_complete(self, who: str) -> None:
        """Refuse missing readings where ``who`` cannot represent them, naming the first one."""
        gaps = self.missing()
        if gaps.any():
            i, t = np.argwhere(gaps)[0]
            raise DataError(f"series '{self.item_id[i]}', step {t}: a missing reading (NaN; {int(gaps.sum())} in all): "
                            f"{who} cannot represent gaps; fill them when reading (--fill interpolate|ffill|zero)")

    def __repr__(self) -> str:
        span = f"length {self.length}" if self.is_regular else f"lengths {self.lengths.min()}..{self.lengths.max()}"
        attrs = f", attributes {list(self.attributes.columns)}" if len(self.attributes.columns) else ""
        return (f"SeriesSet({len(self)} series, {span}, channels {self.channels}, "
                f"{len(np.unique(self.item_id))} items, freq {self.freq}{attrs})")

    def timestamps(self, i: int) -> pd.DatetimeIndex | None:
        """Time stamps of series ``i`` (None when the set has no time axis)."""
        if self.start is not None and self.freq is None and self.lengths[i] == 1:
            return pd.DatetimeIndex([self.start[i]])  # one step needs no frequency
        if self.start is None or self.freq is None:
            return None
        return pd.date_range(self.start[i], periods=int(self.lengths[i]), freq=self.freq)

    @classmethod
    def from_arrays(cls, arrays: Iterable[np.ndarray], item_id: Sequence[str] | None = None,
                    channels: Sequence[str] | None = None, start=None, freq: str | None = None,
                    attributes: pd.DataFrame | None = None, source: str = "arrays") -> "SeriesSet":
        """Build a set from a list of arrays, each (length,) or (length, channels); ragged lengths allowed."""
        arrs = [np.asarray(a, dtype=np.float64) for a in arrays]
        arrs = [a[:, None] if a.ndim == 1 else a for a in arrs]
        if not arrs:
            raise DataError(f"{source}: no series found")
        ids = [str(x) for x in item_id] if item_id is not None else [f"series_{i}" for i in range(len(arrs))]
        if len(ids) != len(arrs):
            raise DataError(f"{source}: {len(arrs)} series but {len(ids)} item ids")
        for i, a in enumerate(arrs):
            if a.ndim != 2 or a.shape[0] == 0:
                raise DataError(f"{source}: series '{ids[i]}' is empty or not a 1-D/2-D array (shape {a.shape})")
        n_ch = {a.shape[1] for a in arrs}
        if len(n_ch) != 1:
            raise DataError(f"{source}: series have different numbers of channels {sorted(n_ch)}")
        chans = list(channels) if channels is not None else _default_channels(n_ch.pop())
        for i, a in enumerate(arrs):
            _check_finite(a, source, f"series '{ids[i]}'", chans)
            _check_magnitude(a, source, f"series '{ids[i]}'", chans)
        lengths = np.array([a.shape[0] for a in arrs])
        vals = np.full((len(arrs), int(lengths.max()), arrs[0].shape[1]), np.nan, dtype=np.float32)
        for i, a in enumerate(arrs):
            vals[i, : a.shape[0]] = a
        return cls(vals, lengths, ids, chans, start=start, freq=freq, attributes=attributes)

    # ------------------------------------------------------------------ long format
    @classmethod
    def from_long(cls, df: pd.DataFrame, id_col: str | None = "item_id", time_col: str | None = "timestamp",
                  value_cols: Sequence[str] | None = None, attribute_cols: Sequence[str] | None = None,
                  freq: str | None = None, sort: bool = False, fill: str | None = None,
                  source: str = "data frame") -> "SeriesSet":
        """Read long format: one row per (series, time step).

        ``value_cols`` defaults to every column that is not the id, time or an attribute (each must be numeric).
        Timestamps must be strictly increasing within a series and evenly spaced; ``sort=True`` sorts
        them instead of failing, ``fill`` ("interpolate", "ffill" or "zero") fills missing steps and
        empty cells. An integer time column holds step numbers (no start time). Row numbers in
        messages count the header as row 1, as in a CSV file.
        """
        if len(df) == 0:
            raise DataError(f"{source}: the file holds no rows")
        if fill not in (None, *FILL_POLICIES):
            raise DataError(f"unknown fill policy {fill!r} ({', '.join(FILL_POLICIES)})")
        attribute_cols = list(attribute_cols or [])
        _require_columns(df, [c for c in [id_col, time_col] if c] + list(value_cols or []) + attribute_cols, source)
        hint = ""
        if value_cols is None:
            value_cols = [c for c in df.columns if c not in {id_col, time_col, *attribute_cols}]
            hint = "; name value columns with value_cols/--value-cols, static ones with attribute_cols/--attribute-cols"
            if not value_cols:
                raise DataError(f"{source}: no value column found{hint}")
        value_cols = list(value_cols)
        df = df.assign(**{c: _numeric_column(df[c], c, source, hint) for c in value_cols})
        ids = df[id_col].astype(str) if id_col else pd.Series(["series_0"] * len(df), index=df.index)
        steps = bool(time_col) and pd.api.types.is_integer_dtype(df[time_col])
        if time_col:
            df = df.assign(**{"__t": df[time_col] if steps else _parse_times(df[time_col], source, time_col)})
        timed = bool(time_col) and not steps
        arrays, starts, item_ids, attr_rows, freqs, filled = [], [], [], [], set(), {}
        for item, g in df.groupby(ids, sort=False):
            who = f"series '{item}'"
            g = _in_order(g, sort, source, who, steps) if time_col else g
            _check_finite(g[value_cols].to_numpy(np.float64), source, who, value_cols, g.index.to_numpy() + 2)
            _check_magnitude(g[value_cols].to_numpy(np.float64), source, who, value_cols, g.index.to_numpy() + 2)
            if timed:
                g, f, filled[item] = _regularise(g, value_cols, freq, fill, source, who)
                freqs.add(f)
                starts.append(g["__t"].iloc[0])
            arrays.append(g[value_cols].to_numpy(dtype=np.float64))
            item_ids.append(item)
            attr_rows.append(_constant_attributes(g, attribute_cols, source, item))
        freqs.discard(None)
        if len(freqs) > 1:
            raise DataError(f"{source}: series have different frequencies {sorted(freqs)}; pass freq/--freq")
        touched = {k: v for k, v in filled.items() if v}
        if touched:
            log.warning("%s: filled %d missing values in %d series with '%s'", source, sum(touched.values()),
                        len(touched), fill)
        attrs = pd.DataFrame(attr_rows, columns=attribute_cols) if attribute_cols else None
        return cls.from_arrays(arrays, item_ids, value_cols, start=starts if timed else None,
                               freq=(freqs.pop() if freqs else freq) if timed else None,
                               attributes=attrs, source=source)

    def to_long(self, id_col: str = "item_id", time_col: str = "timestamp") -> pd.DataFrame:
        """Long format: item id, time stamp (or step number), one column per channel, then attributes."""
        frames = []
        for i in range(len(self)):
            n = int(self.lengths[i])
            ts = self.timestamps(i)
            frame = {id_col: np.repeat(self.item_id[i], n), time_col: ts if ts is not None else np.arange(n)}
            for j, ch in enumerate(self.channels):
                frame[ch] = self.values[i, :n, j]
            for col in self.attributes.columns:
                frame[col] = np.repeat(self.attributes[col].iloc[i], n)
            frames.append(pd.DataFrame(frame))
        return pd.concat(frames, ignore_index=True)

    # ------------------------------------------------------------------ wide format
    @classmethod
    def from_wide(cls, df: pd.DataFrame, orient: str = "columns", time_col: str | None = None,
                  id_col: str | None = None, freq: str | None = None, source: str = "data frame") -> "SeriesSet":
        """Read wide format, univariate.

        ``orient="columns"``: one column per series, rows are time steps (optionally a ``time_col``).
        ``orient="rows"``: one row per series (optionally an ``id_col``), the other columns are steps
        (when every column header is a time stamp, they give the start and frequency).
        Trailing empty cells make a series shorter (ragged); a gap inside a series is an error.
        """
        if len(df) == 0 or len(df.columns) == 0:
            raise DataError(f"{source}: the file holds no data")
        start = None
        if orient == "columns":
            if time_col:
                _require_columns(df, [time_col], source)
                times = _parse_times(df[time_col], source, time_col)
                t = _in_order(pd.DataFrame({"__t": times}), False, source, f"time column '{time_col}'")
                freq = _regularise(t, [], freq, None, source, f"time column '{time_col}'")[1]
                df = df.drop(columns=[time_col])
                start = [times.iloc[0]] * len(df.columns)
                if len(df.columns) == 0:
                    raise DataError(f"{source}: no series columns beside the time column '{time_col}'")
            ids = [str(c) for c in df.columns]
            hint = ("; the wide layout reads every column as a series: name a time column with time_col/--time-col, "
                    "or the id and time columns of a long file with --id-col/--time-col")
            mat = np.stack([_numeric_column(df[c], c, source, hint).to_numpy(dtype=np.float64) for c in df.columns])
        elif orient == "rows":
            if id_col:
                _require_columns(df, [id_col], source)
                ids = df[id_col].astype(str).tolist()
                df = df.drop(columns=[id_col])
            else:
                ids = [f"series_{i}" for i in range(len(df))]
            if len(df.columns) == 0:
                raise DataError(f"{source}: no columns of values (a row per series holds its steps in columns)")
            times = _header_times(df.columns)
            if times is not None:
                freq = _regularise(pd.DataFrame({"__t": times}), [], freq, None, source, "the column headers")[1]
                start = [times.iloc[0]] * len(df)
            mat = np.stack([_numeric_column(df[c], c, source).to_numpy(dtype=np.float64) for c in df.columns], axis=1)
        else:
            raise DataError(f"orient must be 'columns' or 'rows', got {orient!r}")
        arrays = []
        for i, row in enumerate(mat):
            ok = ~np.isnan(row)
            n = int(np.flatnonzero(ok)[-1]) + 1 if ok.any() else 0
            if n == 0:
                raise DataError(f"{source}: series '{ids[i]}' is empty")
            if not ok[:n].all():
                raise DataError(f"{source}: series '{ids[i]}': missing value at step {int(np.flatnonzero(~ok[:n])[0])}")
            arrays.append(row[:n])
        return cls.from_arrays(arrays, ids, ["value"], start=start, freq=freq, source=source)

    def to_wide(self, orient: str = "columns") -> pd.DataFrame:
        """Wide format of a univariate set: a column per series (index = time) or a row per series."""
        if self.n_channels != 1:
            raise DataError(f"wide format holds one channel; this set has {self.channels}")
        ids = _unique_labels(self.item_id)
        mat = pd.DataFrame(self.values[:, :, 0].T, columns=ids)
        if self.start is not None and self.freq is not None and len(set(self.start.tolist())) == 1:
            mat.index = pd.date_range(self.start[0], periods=self.length, freq=self.freq, name="timestamp")
        if orient == "rows":
            out = mat.T.reset_index(names="item_id")
            out.columns = [str(c) for c in out.columns]
            return out
        return mat.reset_index() if isinstance(mat.index, pd.DatetimeIndex) else mat

    # ------------------------------------------------------------------ records (GluonTS / HF)
    @classmethod
    def from_records(cls, records: pd.DataFrame | Sequence[dict], freq: str | None = None,
                     target_col: str = "target", id_col: str = "item_id", start_col: str = "start",
                     channels: Sequence[str] | None = None, source: str = "records") -> "SeriesSet":
        """Read GluonTS/HF records: ``item_id``, ``start``, ``target`` (a list, or a list of lists for
        multivariate data as channels x time) plus scalar attribute fields; a ``freq`` field (as the
        .jsonl writer adds) gives the frequency when ``freq`` is None."""
        df = pd.DataFrame(list(records)) if not isinstance(records, pd.DataFrame) else records
        if len(df) == 0:
            raise DataError(f"{source}: no records")
        _require_columns(df, [target_col], source)
        ids = df[id_col].astype(str).tolist() if id_col in df.columns else [f"series_{i}" for i in range(len(df))]
        arrays = []
        for i, tgt in enumerate(df[target_col]):
            try:
                a = np.asarray(_to_nested_list(tgt), dtype=np.float64)
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"{source}: record {i} (item '{ids[i]}'): '{target_col}' is not a list of numbers "
                                "(or, for several channels, of equally long lists of numbers)") from None
            arrays.append(a.T if a.ndim == 2 else a)
        start = None
        if start_col in df.columns:
            start = _datetimes(df[start_col])
            if start.isna().any():
                i = int(np.flatnonzero(start.isna().to_numpy())[0])
                raise DataError(f"{source}: record {i} (item '{ids[i]}'): '{start_col}' is not a time stamp: "
                                f"{df[start_col].iloc[i]!r}")
        freq = freq or _record_freq(df, source)
        _check_freq(freq, f"{source}: field 'freq'")
        skip = {target_col, id_col, start_col, "freq", "feat_static_cat", "feat_dynamic_real"}
        attr_cols = [c for c in df.columns if c not in skip]
        attrs = df[attr_cols].reset_index(drop=True) if attr_cols else None
        return cls.from_arrays(arrays, ids, channels, start=None if start is None else start.to_numpy(),
                               freq=freq if start is not None else None, attributes=attrs, source=source)

    def to_records(self) -> list[dict]:
        """GluonTS/HF records: item_id, start (if any), target (list, or channels x time), attributes."""
        out = []
        for i in range(len(self)):
            s = self.series(i)
            rec: dict[str, Any] = {"item_id": self.item_id[i]}
            if self.start is not None:
                rec["start"] = pd.Timestamp(self.start[i])
            rec["target"] = s[:, 0].tolist() if self.n_channels == 1 else s.T.tolist()
            for col in self.attributes.columns:
                rec[col] = _py(self.attributes[col].iloc[i])
            out.append(rec)
        return out

    # ------------------------------------------------------------------ preparation
    def window(self, offset: int = 0, length: int | None = None, drop_short: bool = False) -> "SeriesSet":
        """Cut the same window (``offset``, ``length``) out of every series, e.g. the first 100 values.

        A series too short for the window is an error, or with ``drop_short=True`` dropped and counted.
        """
        length = int(length if length is not None else self.lengths.min() - offset)
        if offset < 0 or length < 1:
            raise DataError(f"window offset {offset} and length {length} are not valid")
        short = self.lengths < offset + length
        if short.any():
            if not drop_short:
                i = int(np.flatnonzero(short)[0])
                raise DataError(f"series '{self.item_id[i]}' has {self.lengths[i]} steps, shorter than the window "
                                f"(offset {offset} + length {length}); {int(short.sum())} series are too short "
                                f"(drop them with drop_short=True / --drop-short)")
            log.warning("dropped %d of %d series shorter than offset %d + length %d",
                        int(short.sum()), len(self), offset, length)
            if short.all():
                raise DataError(f"every series is shorter than the window (offset {offset} + length {length})")
        keep = np.flatnonzero(~short)
        sub = self.subset(keep)
        return SeriesSet(sub.values[:, offset: offset + length], np.full(len(keep), length), sub.item_id,
                         sub.channels, _shift(sub.start, offset, sub.freq), sub.freq, sub.attributes)

    def sliding_windows(self, length: int, stride: int = 1, drop_short: bool = False) -> "SeriesSet":
        """All windows of ``length`` steps every ``stride`` steps; each keeps its item id, attributes and
        its own start time (and a ``window_offset`` attribute)."""
        if length < 1 or stride < 1:
            raise DataError(f"window length {length} and stride {stride} must be positive")
        rows, offsets = [], []
        for i in range(len(self)):
            n_win = (int(self.lengths[i]) - length) // stride + 1
            if n_win < 1:
                if not drop_short:
                    raise DataError(f"series '{self.item_id[i]}' has {self.lengths[i]} steps, shorter than the window "
                                    f"length {length} (drop such series with drop_short=True / --drop-short)")
                continue
            rows.extend([i] * n_win)
            offsets.extend(range(0, n_win * stride, stride))
        if not rows:
            raise DataError(f"no series is at least {length} steps long")
        dropped = len(self) - len(set(rows))
        if dropped:
            log.warning("dropped %d of %d series shorter than the window length %d", dropped, len(self), length)
        rows_a, off_a = np.asarray(rows), np.asarray(offsets)
        vals = np.stack([self.values[r, o: o + length] for r, o in zip(rows_a, off_a)])
        start = _shift(None if self.start is None else self.start[rows_a], off_a, self.freq)
        attrs = self.attributes.iloc[rows_a].reset_index(drop=True).assign(window_offset=off_a)
        return SeriesSet(vals, np.full(len(rows_a), length), self.item_id[rows_a], self.channels, start, self.freq, attrs)

    def zscore(self) -> "SeriesSet":
        """Standardise each series and channel over its own steps (ddof 0); a constant one becomes 0."""
        vals = self.values.astype(np.float64)
        mask = (np.arange(self.length)[None, :, None] < self.lengths[:, None, None]) & ~np.isnan(vals)
        cnt = np.maximum(mask.sum(axis=1, keepdims=True), 1)  # missing readings are left out (and stay NaN)
        mean = np.where(mask, vals, 0).sum(axis=1, keepdims=True) / cnt
        std = np.sqrt(np.where(mask, (vals - mean) ** 2, 0).sum(axis=1, keepdims=True) / cnt)
        const = np.nanmax(vals, axis=1, keepdims=True) == np.nanmin(vals, axis=1, keepdims=True)
        if const.any():
            log.warning("%d constant series/channels were set to 0 by z-scoring", int(const.sum()))
        z = np.where(const, 0.0, (vals - mean) / np.where(const, 1.0, std))
        z = np.where(mask, z, np.nan)
        return SeriesSet(z.astype(np.float32), self.lengths, self.item_id, self.channels, self.start, self.freq,
                         self.attributes)

    def split(self, holdout: float = 0.2, seed: int = 0) -> tuple["SeriesSet", "SeriesSet"]:
        """Split by item: no item lands on both sides. Items are taken in order of first appearance,
        permuted with ``numpy.random.RandomState(seed)``; the last ``round(holdout * n_items)`` go to
        the holdout (for 370 items and 0.2: 296 train, 74 holdout)."""
        codes, items = pd.factorize(self.item_id)
        n_items = len(items)
        if n_items < 2:
            raise DataError(f"a split needs at least 2 items, found {n_items}")
        n_hold = int(round(holdout * n_items))
        if not 0 < n_hold < n_items:
            raise DataError(f"holdout fraction {holdout} leaves no item on one side ({n_items} items)")
        rank = np.empty(n_items, dtype=np.int64)
        rank[np.random.RandomState(seed).permutation(n_items)] = np.arange(n_items)
        order = np.argsort(rank[codes], kind="stable")  # series grouped by item, items in permuted order
        n_train = int((rank[codes] < n_items - n_hold).sum())
        return self.subset(order[:n_train]), self.subset(order[n_train:])

    @staticmethod
    def concat(sets: Sequence["SeriesSet"]) -> "SeriesSet":
        """Stack sets with the same channels (and frequency) into one."""
        if not sets:
            raise DataError("nothing to concatenate")
        if len({tuple(s.channels) for s in sets}) != 1:
            raise DataError(f"cannot concatenate sets with different channels {[s.channels for s in sets]}")
        arrays = [s.series(i) for s in sets for i in range(len(s))]
        ids = [x for s in sets for x in s.item_id]
        has_start = all(s.start is not None for s in sets)
        if has_start and len({s.freq for s in sets}) != 1:
            raise DataError(f"cannot concatenate sets with different frequencies {[s.freq for s in sets]}")
        start = np.concatenate([s.start for s in sets]) if has_start else None
        attrs = pd.concat([s.attributes for s in sets], ignore_index=True)
        return SeriesSet.from_arrays(arrays, ids, sets[0].channels, start=start,
                                     freq=sets[0].freq if has_start else None,
                                     attributes=attrs if len(attrs.columns) else None)

    # ------------------------------------------------------------------ files
    @classmethod
    def read(cls, path: str | os.PathLike, layout: str = "auto", **options: Any) -> "SeriesSet":
        """Read a data file; see :func:`read_series`."""
        return read_series(path, layout=layout, **options)

    def write(self, path: str | os.PathLike) -> Path:
        """Write atomically, format by extension: .parquet (records), .csv (long), .jsonl (records)."""
        return write_series(self, path)


def duplicate_channels(data: SeriesSet) -> dict[int, int]:
    """Channels that repeat an earlier channel exactly in every series (NaN where it is NaN), as
    ``{copy: original}`` by channel index; the original is the first channel with those values."""
    copies: dict[int, int] = {}
    for j in range(1, data.n_channels):
        for i in range(j):
            if i not in copies and np.array_equal(data.values[..., j], data.values[..., i], equal_nan=True):
                copies[j] = i
                break
    return copies


def _take_channels(data: SeriesSet, sources: Sequence[str], names: Sequence[str]) -> SeriesSet:
    """``data`` with channels ``names``, each holding the values of ``data``'s channel in ``sources``."""
    idx = [data.channels.index(c) for c in sources]
    return SeriesSet(data.values[..., idx], data.lengths, data.item_id, list(names), start=data.start,
                     freq=data.freq, attributes=data.attributes)


def keep_channels(data: SeriesSet, names: Sequence[str]) -> SeriesSet:
    """``data`` with only the channels ``names``, in that order."""
    return _take_channels(data, names, names)


def restore_copies(data: SeriesSet, channels: Sequence[str], copies: dict[str, str]) -> SeriesSet:
    """``data`` with the channels ``channels`` in that order, each channel named in ``copies`` (copy -> original)
    holding its original's values."""
    return _take_channels(data, [copies.get(c, c) for c in channels], channels)


STANDARDISED_TOLERANCE = 1e-3  # |mean| and |standard deviation - 1| of a series that counts as standardised


def standardised_ddof(data: SeriesSet) -> int | None:
    """1 or 0 where every series of ``data`` is standardised on its own, channel by channel (mean 0 and standard
    deviation 1 with that many degrees of freedom subtracted, as z-normalised archives such as UCR's store their
    series), else None. A series' channel with fewer than 3 readings, or whose readings are all 0 (what standardising
    makes of a constant series, such as a meter that read the same all window), says nothing and is skipped; at
    least two must say yes."""
    told = telling_channels(data)
    if told.sum() < 2:
        return None
    for ddof in (1, 0):
        if standardised_channels(data, ddof)[told].all():
            return ddof
    return None


def standardised_kind(data: SeriesSet) -> np.ndarray:
    """Per series of ``data``: 1 or 0 where each of its channels that says anything (see :func:`standardised_ddof`;
    one at least) is standardised with that ddof, else -1."""
    told = telling_channels(data)
    kind = np.full(len(data), -1)
    for ddof in (0, 1):  # no series is standardised both ways: the standard deviations differ by sqrt(n / (n - 1))
        kind[told.any(axis=1) & np.all(standardised_channels(data, ddof) | ~told, axis=1)] = ddof
    return kind


def telling_channels(data: SeriesSet) -> np.ndarray:
    """(n, channels): the series' channels that can tell whether they are standardised: at least 3 readings, not
    all 0 (within ``STANDARDISED_TOLERANCE``)."""
    zero = np.max(np.abs(np.nan_to_num(data.values)), axis=1) <= STANDARDISED_TOLERANCE  # gaps read as 0
    return (np.sum(~np.isnan(data.values), axis=1) >= 3) & ~zero


def standardised_channels(data: SeriesSet, ddof: int) -> np.ndarray:
    """(n, channels): whether each series' channel has mean 0 and standard deviation 1 (with ``ddof``) within
    ``STANDARDISED_TOLERANCE``; False where it has too few readings."""
    mean, sd = series_moments(data.values, ddof)
    with np.errstate(invalid="ignore"):
        return (np.abs(mean[:, 0]) <= STANDARDISED_TOLERANCE) & (np.abs(sd[:, 0] - 1.0) <= STANDARDISED_TOLERANCE)


def series_moments(values: np.ndarray, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation (with ``ddof``) of every series and channel of ``values`` (n, steps,
    channels) over its readings (NaN: gaps), each (n, 1, channels), in float64; NaN where there are too few."""
    x = values.astype(np.float64)
    counts = np.sum(~np.isnan(x), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(x, axis=1, keepdims=True) / counts  # 0 / 0: NaN, without nanmean's empty-slice warning
        sd = np.sqrt(np.nansum((x - mean) ** 2, axis=1, keepdims=True) / (counts - ddof))
    return mean, np.where(counts > ddof, sd, np.nan)


def series_roughness(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How rough every series and channel of ``values`` (n, steps, channels; NaN: gaps) is, each (n, channels): the
    mean absolute first and second differences relative to the series' standard deviation (NaN where it is
    constant), and the share of steps that hold the previous reading exactly. The evaluation's ``roughness``
    family and the codec's choice of how far decoded values settle both read it."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        sd = np.nanstd(values, axis=1)
        scale = np.where(sd > 0, sd, np.nan)
        d1, d2 = np.diff(values, axis=1), np.diff(values, 2, axis=1)
        held = np.nanmean(np.where(np.isnan(d1), np.nan, (d1 == 0).astype(float)), axis=1)
        return np.nanmean(np.abs(d1), axis=1) / scale, np.nanmean(np.abs(d2), axis=1) / scale, held


def standardise(values: np.ndarray, ddof: int) -> np.ndarray:
    """``values`` (n, steps, channels) with every series standardised channel by channel over its readings (NaN
    is kept): mean 0, standard deviation 1 with ``ddof``. A series that is constant in a channel (or holds one
    reading) is only centred there."""
    mean, sd = series_moments(values, ddof)
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
    return ((values.astype(np.float64) - np.nan_to_num(mean)) / sd).astype(values.dtype)


# ---------------------------------------------------------------------- reading files
def read_series(path: str | os.PathLike, layout: str = "auto", id_col: str | None = None,
                time_col: str | None = None, value_cols: Sequence[str] | None = None,
                attribute_cols: Sequence[str] | None = None, freq: str | None = None,
                sort: bool = False, fill: str | None = None, orient: str = "columns") -> SeriesSet:
    """Read a SeriesSet from a .parquet, .csv, .jsonl or .json file.

    ``layout`` is "long", "wide", "records", "arrays" or "auto": records when a ``target`` column
    exists, long when an id or time column is named (or ``item_id`` + ``timestamp`` exist), arrays for
    JSON lines of lists, else wide (``orient`` "columns": a column per series, with a ``timestamp``
    column if there is one; "rows": a row per series, with an ``item_id`` column if there is one).
    """
    p = Path(path)
    src = str(p)
    if layout not in LAYOUTS:
        raise DataError(f"{src}: unknown layout {layout!r} ({', '.join(LAYOUTS)})")
    if not p.exists():
        raise DataError(f"{src}: no such file")
    _check_freq(freq, "freq/--freq")
    if p.is_dir():
        raise DataError(f"{src}: is a directory, not a data file (give one {', '.join(SUPPORTED_EXTENSIONS)} file)")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(f"{src}: unknown extension '{ext}' (supported: {', '.join(SUPPORTED_EXTENSIONS)})")
    if p.stat().st_size == 0:
        raise DataError(f"{src}: the file is empty")
    if ext in (".jsonl", ".json"):
        return _read_json_lines(p, layout, freq)
    df, meta = _read_table(p, id_col or "item_id")
    freq = freq or meta.get("freq")
    cols = set(df.columns)
    if layout == "auto":
        records, long = "target" in cols, id_col or time_col or {"item_id", "timestamp"} <= cols
        if not records and not long and "item_id" in cols and orient == "columns":
            raise DataError(f"{src}: an 'item_id' column but no time column 'timestamp': name the time column with "
                            "time_col/--time-col (or pass id_col/--id-col item_id to take the rows of each item in "
                            "file order as its steps, or orient='rows'/--orient rows for a row per series)")
        layout = "records" if records else "long" if long else "wide"
    if layout == "records":
        return SeriesSet.from_records(df, freq=freq, channels=meta.get("channels"), source=src)
    if layout == "long":
        return SeriesSet.from_long(df, id_col=id_col or "item_id", time_col=time_col or ("timestamp" if "timestamp" in cols else None),
                                   value_cols=value_cols, attribute_cols=attribute_cols, freq=freq, sort=sort,
                                   fill=fill, source=src)
    if layout == "wide":
        time_col = time_col or ("timestamp" if orient == "columns" and "timestamp" in cols else None)
        id_col = id_col or ("item_id" if orient == "rows" and "item_id" in cols else None)
        return SeriesSet.from_wide(df, orient=orient, time_col=time_col, id_col=id_col, freq=freq, source=src)
    raise DataError(f"{src}: layout 'arrays' needs a .jsonl file")


def _read_table(p: Path, id_col: str) -> tuple[pd.DataFrame, dict]:
    """A .parquet or .csv file as a data frame (ids kept as text), with tsynth's Parquet metadata."""
    if p.suffix.lower() == ".csv":
        try:
            df = pd.read_csv(p, dtype={id_col: str})
            if not isinstance(df.index, pd.RangeIndex):  # pandas makes the first column(s) an index then
                raise DataError(f"{p}: rows hold more fields than the header names ({len(df.columns)}); every "
                                "column needs a header")
            return df, {}
        except pd.errors.EmptyDataError:
            raise DataError(f"{p}: the file is empty") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: not a readable CSV file ({e})") from None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
        table.validate(full=True)  # a damaged file can hold text that is not UTF-8
        df = table.to_pandas()
    except Exception as e:  # pyarrow raises many types for corrupt files (and pandas for odd values)
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    try:
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or not isinstance(meta.get("freq"), (str, type(None))) or \
            not isinstance(meta.get("channels"), (list, type(None))):
        raise DataError(f"{p}: its tsynth metadata (freq, channels) is damaged; write the file again")
    plain = (table.schema.metadata or {}).get(b"freq")  # a plain `freq` key, as Hugging Face style exports have
    if meta.get("freq") is None and plain:
        meta = {**meta, "freq": plain.decode("utf-8", "replace")}
    return df, meta


def _read_json_lines(p: Path, layout: str, freq: str | None) -> SeriesSet:
    src = str(p)
    if layout in ("long", "wide"):
        raise DataError(f"{src}: JSON lines hold records or arrays, not the {layout} layout")
    rows, linenos = [], []
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{src}: line {line}: not UTF-8 text") from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{src}: line {lineno}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{src}: line {lineno}: JSON nested too deeply") from None
        linenos.append(lineno)
    if p.suffix.lower() == ".json" and len(rows) == 1 and isinstance(rows[0], list) and rows[0] and isinstance(rows[0][0], (dict, list)):
        rows, linenos = rows[0], list(range(1, len(rows[0]) + 1))
    if not rows:
        raise DataError(f"{src}: the file holds no series")
    if all(isinstance(r, dict) and "target" in r for r in rows) and layout in ("auto", "records"):
        return SeriesSet.from_records(rows, freq=freq, source=src)
    if all(isinstance(r, list) for r in rows):
        return SeriesSet.from_arrays([_json_array(r, src, n, None) for r, n in zip(rows, linenos)], source=src)
    if all(isinstance(r, dict) for r in rows):
        keys = [k for k, v in rows[0].items() if isinstance(v, list)]
        if not keys:
            raise DataError(f"{src}: line {linenos[0]}: no list of values found (expected 'target' or a key per channel)")
        arrays = []
        for r, n in zip(rows, linenos):
            missing = [k for k in keys if not isinstance(r.get(k), list)]
            if missing:
                raise DataError(f"{src}: line {n}: missing channel {missing[0]!r}")
            lens = {len(r[k]) for k in keys}
            if len(lens) != 1:
                raise DataError(f"{src}: line {n}: channels have different lengths {sorted(lens)}")
            arrays.append(np.hstack([_json_array(r[k], src, n, [k]) for k in keys]))
        ids = [str(r.get("item_id", f"series_{i}")) for i, r in enumerate(rows)]
        return SeriesSet.from_arrays(arrays, ids, keys, source=src)
    raise DataError(f"{src}: lines must all be JSON arrays or all objects")


def _json_array(x: Any, src: str, lineno: int, channels: list[str] | None) -> np.ndarray:
    """One JSON list of numbers as a (length, channels) array, or an error naming the line."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{src}: line {lineno}: the array holds non-numeric values (or lists of different "
                        "lengths, or numbers too large)") from None
    a = a[:, None] if a.ndim == 1 else a
    if a.ndim != 2 or len(a) == 0:
        raise DataError(f"{src}: line {lineno}: expected a non-empty list of numbers (or of equally long lists)")
    if channels is not None and a.shape[1] != len(channels):
        raise DataError(f"{src}: line {lineno}: channel {channels[0]!r} holds lists, not numbers")
    _check_finite(a, src, f"line {lineno}", channels or _default_channels(a.shape[1]))
    _check_magnitude(a, src, f"line {lineno}", channels or _default_channels(a.shape[1]))
    return a


def load_hf_dataset(name_or_path: str, split: str = "train", freq: str | None = None, **kwargs: Any) -> SeriesSet:
    """Load GluonTS-style records through ``datasets.load_dataset`` (a hub id, or a local file/folder:
    .parquet/.jsonl/.csv files are loaded with the matching builder)."""
    import datasets

    p = Path(name_or_path)
    if p.exists():
        files = sorted(f for f in (p.iterdir() if p.is_dir() else [p]) if f.suffix.lower() in _HF_BUILDERS)
        builders = {_HF_BUILDERS[f.suffix.lower()] for f in files}
        if len(builders) != 1:
            raise DataError(f"{name_or_path}: expected .parquet, .jsonl or .csv files of one kind, found "
                            f"{sorted({f.suffix for f in files}) or 'none'}")
        ds = datasets.load_dataset(builders.pop(), data_files={split: [str(f) for f in files]}, split=split, **kwargs)
    else:
        ds = datasets.load_dataset(name_or_path, split=split, **kwargs)
    return SeriesSet.from_records(ds.to_pandas(), freq=freq, source=name_or_path)


def load_demo() -> SeriesSet:
    """ItalyPowerDemand (UCR archive, shipped inside the ``aeon`` package): 1,096 days x 24 hourly
    readings of Italian electricity demand, with the ``season`` label (winter: Oct-Mar, summer: Apr-Sep)."""
    from aeon.datasets import load_italy_power_demand

    parts = []
    for split in ("train", "test"):
        X, y = load_italy_power_demand(split=split)
        parts.append((np.asarray(X, dtype=np.float64)[:, 0, :], np.asarray(y).astype(str)))
    X = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    season = np.where(y == "1", "winter", "summer")
    ids = [f"day_{i:04d}" for i in range(len(X))]
    return SeriesSet.from_arrays(list(X), ids, ["demand"], attributes=pd.DataFrame({"season": season}),
                                 source="ItalyPowerDemand")


# ---------------------------------------------------------------------- writing files
def write_series(data: SeriesSet, path: str | os.PathLike) -> Path:
    """Write ``data`` atomically (temp file + rename); the format follows the extension:
    .parquet = records (item_id, start, target, attributes; frequency and channel names in the file's
    metadata), .csv = long, .jsonl = records (with a ``freq`` field)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".parquet", ".csv", ".jsonl"):
        raise DataError(f"{p}: unknown output extension '{ext}' (use .parquet, .csv or .jsonl)")
    if ext == ".csv":
        return atomic_write(p, lambda f: data.to_long().to_csv(f, index=False))
    if ext == ".jsonl":
        def dump(f):
            with open(f, "w", encoding="utf-8") as fh:
                for rec in data.to_records():
                    if "start" in rec:
                        rec["start"] = rec["start"].isoformat()
                        if data.freq:
                            rec["freq"] = data.freq
                    fh.write(json.dumps(rec) + "\n")
        return atomic_write(p, dump)
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = pd.DataFrame(data.to_records())
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"freq": data.freq, "channels": data.channels}).encode()
    table = table.replace_schema_metadata(meta)
    return atomic_write(p, lambda f: pq.write_table(table, f, compression="zstd"))


def atomic_write(path: str | os.PathLike, writer) -> Path:
    """Call ``writer(tmp_path)`` then rename the temp file onto ``path``; nothing half-written remains."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


# ---------------------------------------------------------------------- helpers
def _require_columns(df: pd.DataFrame, cols: Iterable[str], source: str) -> None:
    have = [str(c) for c in df.columns]
    for c in cols:
        if c not in df.columns:
            close = difflib.get_close_matches(str(c), have, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (columns: {', '.join(have[:12])})"
            raise DataError(f"{source}: missing column '{c}'{hint}")


def _numeric_column(col: pd.Series, name: Any, source: str, hint: str = "") -> pd.Series:
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"{source}: row {r + 2}: column '{name}' holds a non-numeric value {col.iloc[r]!r}{hint}")
    return num.astype(np.float64)


def _check_finite(vals: np.ndarray, source: str, who: str, channels: Sequence[str], rows: np.ndarray | None = None,
                  allow_nan: bool = True) -> None:
    """Refuse infinite values (and NaN unless ``allow_nan``: by default NaN is a missing reading, a gap)."""
    bad = np.isinf(vals) if allow_nan else ~np.isfinite(vals)
    if bad.any():
        t, c = np.argwhere(bad)[0]
        where = f"row {rows[t]}" if rows is not None else f"step {t}"
        raise DataError(f"{source}: {who}, {where}, channel '{channels[c]}': value {vals[t, c]} is not finite "
                        "(infinite values are not allowed; NaN or an empty cell marks a missing reading)")


MAX_ABS_VALUE = 1e15  # values are stored as 32-bit floats and squared and summed in them (scales, distances)


def _check_magnitude(vals: np.ndarray, source: str, who: str, channels: Sequence[str],
                     rows: np.ndarray | None = None) -> None:
    """Refuse a value beyond +-MAX_ABS_VALUE: it would overflow (to inf) in float32 arithmetic and wreck the
    scales of every series; rescaling the data (other units) keeps its information."""
    with np.errstate(invalid="ignore"):
        big = np.abs(vals) > MAX_ABS_VALUE
    if big.any():
        t, c = np.argwhere(big)[0]
        where = f"row {rows[t]}" if rows is not None else f"step {t}"
        raise DataError(f"{source}: {who}, {where}, channel '{channels[c]}': value {vals[t, c]:.6g} is too large "
                        f"(at most {MAX_ABS_VALUE:.0e} in magnitude; rescale the data, e.g. to other units)")


def _default_channels(c: int) -> list[str]:
    return ["value"] if c == 1 else [f"value_{j}" for j in range(c)]


def _datetimes(x: Any) -> pd.Series:
    """Time stamps as naive nanosecond datetimes (time zones converted to UTC); NaT where unparseable."""
    x = x if isinstance(x, pd.Series) else pd.Series(x)
    if pd.api.types.is_bool_dtype(x):  # True/False are not time stamps (pandas reads them as nanoseconds)
        x = pd.Series([None] * len(x), index=x.index, dtype=object)
    t = pd.to_datetime(x, errors="coerce", utc=True)
    t = t.dt.tz_convert(None) if t.dt.tz is not None else t
    t = t.where((t >= pd.Timestamp.min) & (t <= pd.Timestamp.max))  # NaT beyond nanoseconds' 1677..2262
    return t.dt.as_unit("ns")


def _parse_times(col: pd.Series, source: str, name: str) -> pd.Series:
    times = _datetimes(col)
    bad = np.flatnonzero(times.isna().to_numpy())
    if len(bad):
        raise DataError(f"{source}: row {bad[0] + 2}: column '{name}' is not a timestamp: {col.iloc[bad[0]]!r} "
                        "(time stamps lie in the years 1677-2262)")
    return times


def _header_times(cols: pd.Index) -> pd.Series | None:
    """The column headers as time stamps when every one is an ISO date/time (wide rows layout), else None."""
    if pd.api.types.is_numeric_dtype(cols):
        return None
    times = pd.Series(pd.to_datetime(cols.astype(str), errors="coerce", format="ISO8601"))
    return None if times.isna().any() else _datetimes(times)


def _check_freq(freq: Any, where: str) -> None:
    """Refuse a frequency pandas does not know (None passes)."""
    if freq is None:
        return
    try:
        pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise DataError(f"{where}: unknown frequency {freq!r} (use a pandas alias such as h, D, 15min, MS)") from None


def _record_freq(df: pd.DataFrame, source: str) -> str | None:
    """The frequency from a records table's ``freq`` field (one value for all), or None."""
    if "freq" not in df.columns:
        return None
    freqs = sorted({str(f) for f in df["freq"].dropna()})
    if len(freqs) > 1:
        raise DataError(f"{source}: records have different frequencies {freqs}")
    return freqs[0] if freqs else None


def _in_order(g: pd.DataFrame, sort: bool, source: str, who: str, steps: bool = False) -> pd.DataFrame:
    """``g`` ordered by its time column ``__t`` (sorted when ``sort``), or an error naming the first bad row."""
    t = g["__t"].to_numpy()
    back = np.flatnonzero(t[1:] < t[:-1]) + 1
    if len(back) and not sort:
        j = back[0]
        raise DataError(f"{source}: {who}: timestamps are not sorted (row {g.index[j] + 2}: {g['__t'].iloc[j]} after "
                        f"{g['__t'].iloc[j - 1]}); pass sort=True / --sort to sort them")
    g = g.sort_values("__t", kind="stable") if len(back) else g
    t = g["__t"].to_numpy()
    dup = np.flatnonzero(t[1:] == t[:-1]) + 1
    if len(dup):
        raise DataError(f"{source}: {who}: duplicate timestamp {g['__t'].iloc[dup[0]]} (row {g.index[dup[0]] + 2})")
    gap = np.flatnonzero(np.diff(t) != 1) + 1 if steps else []
    if len(gap):
        raise DataError(f"{source}: {who}: step numbers jump from {t[gap[0] - 1]} to {t[gap[0]]} "
                        f"(row {g.index[gap[0]] + 2})")
    return g


def _constant_attributes(g: pd.DataFrame, cols: list[str], source: str, item: str) -> list:
    row = []
    for c in cols:
        vals = g[c].dropna().unique()
        if len(vals) > 1:
            raise DataError(f"{source}: series '{item}': attribute '{c}' is not constant ({vals[:3].tolist()})")
        row.append(vals[0] if len(vals) else None)
    return row


def _smallest_step(t: pd.DatetimeIndex) -> str:
    """The smallest step between sorted time stamps as a frequency: the grid that gaps are missing from."""
    return pd.tseries.frequencies.to_offset(pd.Timedelta(int(np.diff(t.as_unit("ns").asi8).min()), unit="ns")).freqstr


def _infer_freq(t: pd.DatetimeIndex, source: str, who: str) -> str | None:
    if len(t) < 3:
        return _smallest_step(t) if len(t) == 2 else None
    f = pd.infer_freq(t)
    if f is None:
        d = np.diff(t.as_unit("ns").asi8)
        steps, counts = np.unique(d, return_counts=True)
        step = steps[counts.argmax()]  # the most common step
        i = int(np.flatnonzero(d != step)[0])
        raise DataError(f"{source}: {who}: irregular time steps ({t[i]} -> {t[i + 1]} where the usual step is "
                        f"{pd.Timedelta(step, unit='ns')}); pass freq=... and fill=... (--freq, --fill) to fill gaps")
    return f


def _regularise(g: pd.DataFrame, value_cols: list[str], freq: str | None, fill: str | None, source: str,
                who: str) -> tuple[pd.DataFrame, str | None, int]:
    """Check that ``g`` lies on a regular time grid, filling missing steps and empty cells with ``fill``.
    Returns the frame, its frequency and how many values were filled."""
    t = pd.DatetimeIndex(g["__t"])
    if freq is None and fill is None:
        return g, _infer_freq(t, source, who), 0
    f = freq or (_smallest_step(t) if len(t) > 1 else None)
    full = pd.date_range(t[0], t[-1], freq=f) if f else t
    if not t.isin(full).all():
        raise DataError(f"{source}: {who}: timestamps do not fall on the {f} grid")
    if fill is None:
        if len(full) > len(t):
            missing = full.difference(t)
            raise DataError(f"{source}: {who}: {len(missing)} missing time steps (first {missing[0]}); "
                            f"pass fill={'|'.join(FILL_POLICIES)} (--fill) to fill them")
        return g, f, 0
    g2 = g.set_index("__t").reindex(full)
    vals = g2[value_cols]
    n_filled = int(vals.isna().to_numpy().sum())
    if fill != "gap":
        vals = vals.interpolate() if fill == "interpolate" else vals.ffill() if fill == "ffill" else vals.fillna(0.0)
    g2 = g2.ffill()  # ids and attributes of the added steps
    g2[value_cols] = vals
    return g2.rename_axis("__t").reset_index(), f, n_filled


def _shift(start: np.ndarray | None, offset, freq: str | None) -> np.ndarray | None:
    """``start`` moved on by ``offset`` steps of ``freq``; None (logged) when it cannot be moved without a frequency."""
    if start is None or not np.any(offset):
        return start
    if freq is None:
        log.warning("window start times dropped: the data has no frequency (pass freq/--freq when reading)")
        return None
    step = pd.tseries.frequencies.to_offset(freq)
    try:
        delta = pd.to_timedelta(step)
        return (pd.to_datetime(start) + np.asarray(offset) * delta).to_numpy()
    except ValueError:  # calendar offsets such as month ends
        return np.asarray([pd.Timestamp(s) + int(o) * step for s, o in np.broadcast(start, offset)], dtype="datetime64[ns]")


def _to_nested_list(x: Any) -> Any:
    if isinstance(x, np.ndarray) and x.dtype == object:
        return [_to_nested_list(v) for v in x]
    return x


def _unique_labels(ids: np.ndarray) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for x in ids:
        k = seen.get(x, 0)
        out.append(x if k == 0 else f"{x}#{k}")
        seen[x] = k + 1
    return out


def _py(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x
