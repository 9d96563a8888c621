"""A partitioned Parquet data set read as a stream: training data that never has to fit in memory.

:class:`PartitionedSeries` stands for a folder (searched recursively) or glob of Parquet files, each file a
partition of whole series in any layout one file may have (records, long, wide; read with
:func:`tsynth.data.read_series` and the same options). It never holds more than a few partitions:

- **Schema check** (when it is made, before any data is read): every partition must have the first one's
  columns and types; the first that differs is named, with the difference.
- **Scan** (:meth:`PartitionedSeries.scan`, one pass, a partition at a time): each series' length, a hash of
  its id (a series split over two partitions is refused, naming both), and a **uniform sample** of the
  series: every series gets a random key from a generator seeded by the seed and its partition's position,
  and the ``sample_size`` series with the smallest keys are kept (bottom-k sampling: uniform without
  replacement, whatever the order and sizes of the partitions). The scaler, bins, point masses, calendar
  features and series-level edges are fitted on that sample, and the validation series are drawn from it.
- **Training rows** (:class:`RowStream`): each epoch visits the partitions in a seeded random order, reads
  them into a buffer of at least ``buffer_series`` series, encodes the buffer, and yields its training
  windows (``window_rows``: as many windows of each series as its length holds contexts, at random offsets)
  in a seeded random order, ``batch`` at a time; windows left over at the end of a buffer go into the next
  one, so every window of the epoch is trained on once. The arrays the loss reads
  (:meth:`RowStream.arrays`) hold the validation series first, then the buffer's, so validation rows stay
  valid while the buffer changes. Memory is bounded by the buffer, the sample and the model.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from .data import SeriesSet, read_series
from .errors import DataError

SAMPLE_SERIES = 4096  # series in the uniform sample the codec is fitted on (and validation drawn from)
BUFFER_SERIES = 8192  # series read (whole partitions) before their windows are shuffled and trained on


def resolve_partitions(source: str | os.PathLike) -> list[Path]:
    """The Parquet files of a folder (recursively; names starting with ``_`` or ``.`` are not data) or a glob."""
    text = str(source)
    if any(ch in text for ch in "*?["):
        files = [Path(p) for p in sorted(globlib.glob(text, recursive=True)) if Path(p).is_file()]
    elif Path(text).is_dir():
        files = sorted(p for p in Path(text).rglob("*.parquet")
                       if not any(part.startswith(("_", ".")) for part in p.relative_to(text).parts))
    else:
        raise DataError(f"{text}: not a folder of Parquet files nor a glob")
    if not files:
        what = "is a directory with no Parquet files in it" if Path(text).is_dir() else "matches no Parquet files"
        raise DataError(f"{text}: {what} (give a data file, or a folder or glob of Parquet partitions)")
    other = [p for p in files if p.suffix.lower() != ".parquet"]
    if other:
        raise DataError(f"{other[0]}: a partitioned data set holds .parquet files only")
    return files


def is_partitioned(path: str) -> bool:
    """Whether a data argument names a partitioned data set (a folder or a glob) rather than one file."""
    return not path.startswith("hf:") and (any(ch in path for ch in "*?[") or Path(path).is_dir())


def check_schemas(files: list[Path]) -> None:
    """Refuse a partition whose columns or types differ from the first partition's, naming it and the difference."""
    import pyarrow.parquet as pq

    def schema(p: Path):
        try:
            return pq.read_schema(p).remove_metadata()
        except Exception as e:  # noqa: BLE001 -- any unreadable file is named the same way
            raise DataError(f"{p}: not a readable Parquet file ({e})") from None

    first = schema(files[0])
    for p in files[1:]:
        s = schema(p)
        if s.equals(first):
            continue
        a, b = dict(zip(first.names, first.types)), dict(zip(s.names, s.types))
        missing, extra = [n for n in a if n not in b], [n for n in b if n not in a]
        typed = [f"{n}: {b[n]} instead of {a[n]}" for n in a if n in b and a[n] != b[n]]
        what = (f"no column {missing[0]!r}" if missing else f"an extra column {extra[0]!r}" if extra
                else typed[0] if typed else "its columns in another order")
        raise DataError(f"{p}: this partition has another schema than {files[0].name} ({what}); every partition "
                        "of a data set must have the same columns and types")


def _id_hashes(ids) -> np.ndarray:
    return pd.util.hash_array(np.asarray(ids, dtype=object)).astype(np.uint64)


class PartitionedSeries:
    """See the module docstring. ``read_options``: keywords of :func:`tsynth.data.read_series`."""

    def __init__(self, source: str | os.PathLike, sample_size: int = SAMPLE_SERIES, seed: int = 0,
                 **read_options: Any) -> None:
        self.source = str(source)
        self.files = resolve_partitions(source)
        check_schemas(self.files)
        self.read_options = read_options
        self.sample_size, self.seed = int(sample_size), int(seed)
        self.lengths: list[np.ndarray] | None = None  # per partition, after scan()
        self.hashes: list[np.ndarray] | None = None
        self.sample: SeriesSet | None = None

    def __repr__(self) -> str:
        n = f", {sum(len(x) for x in self.lengths):,} series" if self.lengths is not None else ""
        return f"PartitionedSeries({len(self.files)} partitions in {self.source}{n})"

    def read(self, k: int) -> SeriesSet:
        """Partition ``k`` as a SeriesSet (read and checked as one data file)."""
        return read_series(self.files[k], **self.read_options)

    def digest(self) -> np.ndarray:
        """What identifies the data set for a checkpoint: its files' names, sizes and modification times."""
        h = hashlib.sha256()
        for p in self.files:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return np.frombuffer(h.digest(), dtype=np.uint8)

    def scan(self) -> SeriesSet:
        """One pass over the partitions (see the module docstring); returns the uniform sample."""
        if self.sample is not None:
            return self.sample
        lengths, hashes, kept, keys = [], [], None, np.zeros(0)
        channels = None
        for k in range(len(self.files)):
            part = self.read(k)
            if channels is None:
                channels = part.channels
            elif part.channels != channels:
                raise DataError(f"{self.files[k]}: channels {part.channels}, not {channels} as in {self.files[0].name}")
            lengths.append(part.lengths.astype(np.int64))
            hashes.append(_id_hashes(part.item_id))
            key = np.random.default_rng([self.seed, k]).random(len(part))
            cut = np.sort(keys)[self.sample_size - 1] if len(keys) >= self.sample_size else np.inf
            take = np.flatnonzero(key < cut)
            if len(take):
                both = part.subset(take) if kept is None else SeriesSet.concat([kept, part.subset(take)])
                keys = np.concatenate([keys, key[take]])
                order = np.argsort(keys, kind="stable")[: self.sample_size]
                kept, keys = both.subset(np.sort(order)), keys[np.sort(order)]
        every = np.concatenate(hashes)
        values, counts = np.unique(every, return_counts=True)
        if (counts > 1).any():
            dup = values[counts > 1][0]
            where = [self.files[k].name for k, h in enumerate(hashes) if (h == dup).any()]
            raise DataError(f"{self.source}: a series id appears {int(counts[counts > 1][0])} times (in {', '.join(where)}): "
                            "each series must lie whole in one partition, under one id")
        if kept is None:
            raise DataError(f"{self.source}: its partitions hold no series")
        self.lengths, self.hashes, self.sample = lengths, hashes, kept
        return kept

    @property
    def n_series(self) -> int:
        """Series in all partitions (after :meth:`scan`)."""
        self.scan()
        return int(sum(len(x) for x in self.lengths or []))


class RowStream:
    """One member's training windows, epoch by epoch (see the module docstring). ``valid``: the validation
    series (excluded from training wherever they are read), first in every arrays dict; ``windows(lengths)``:
    a buffer's rows (series, -1), as :func:`tsynth.backends.local.window_rows` makes them."""

    def __init__(self, data: PartitionedSeries, codec, valid: SeriesSet | None, windows,
                 buffer_series: int = BUFFER_SERIES) -> None:
        data.scan()
        self.data, self.codec, self.valid, self.windows = data, codec, valid, windows
        self.buffer_series = buffer_series
        self.valid_hashes = _id_hashes(valid.item_id) if valid is not None else np.zeros(0, np.uint64)
        self.arrays: dict[str, np.ndarray] = {}
        ctx = codec.context
        total = 0
        for lengths, hashes in zip(data.lengths or [], data.hashes or []):
            train = ~np.isin(hashes, self.valid_hashes)
            total += int(np.maximum(1, -(-lengths[train] // ctx)).sum())
        self.rows_per_epoch = total
        self._load(None)

    def __len__(self) -> int:
        return self.rows_per_epoch

    def _load(self, part: SeriesSet | None) -> int:
        """Encode the validation series then ``part`` into :attr:`arrays` (in place: the loss holds the dict);
        returns where ``part``'s series start."""
        sets = [s for s in (self.valid, part) if s is not None]
        if not sets:
            return 0
        merged = sets[0] if len(sets) == 1 else SeriesSet.concat(sets)
        self.arrays.clear()
        self.arrays.update(self.codec.encode(merged))
        return 0 if self.valid is None else len(self.valid)

    def epoch(self, gen: torch.Generator, batch: int) -> Iterator[torch.Tensor]:
        """This epoch's training rows, ``batch`` at a time (the last batch of the epoch may be smaller)."""
        order = torch.randperm(len(self.data.files), generator=gen).tolist()
        carry: SeriesSet | None = None  # series of windows not yet trained on, and those windows' series indexes
        carry_rows = np.zeros(0, dtype=np.int64)
        while order or len(carry_rows):
            parts = [] if carry is None else [carry]
            held = 0 if carry is None else len(carry)
            while order and held < self.buffer_series:
                part = self.data.read(order.pop(0))
                keep = np.flatnonzero(~np.isin(_id_hashes(part.item_id), self.valid_hashes))
                if len(keep) < len(part):
                    part = part.subset(keep)
                if len(part):
                    parts.append(part)
                    held += len(part)
            if not parts:
                return
            buffer = parts[0] if len(parts) == 1 else SeriesSet.concat(parts)
            fresh = self.windows(buffer.lengths[0 if carry is None else len(carry):])[:, 0]
            series = np.concatenate([carry_rows, fresh + (0 if carry is None else len(carry))])
            series = series[torch.randperm(len(series), generator=gen).numpy()]
            whole = len(series) if not order else len(series) // batch * batch
            first = self._load(buffer)
            for i in range(0, whole, batch):
                rows = series[i: i + batch]
                yield torch.as_tensor(np.stack([rows + first, np.full(len(rows), -1)], axis=1))
            rest = series[whole:]
            if len(rest):
                keep_series = np.unique(rest)
                carry = buffer.subset(keep_series)
                carry_rows = np.searchsorted(keep_series, rest)
            else:
                carry, carry_rows = None, np.zeros(0, dtype=np.int64)
            if not order and not len(carry_rows):
                return
