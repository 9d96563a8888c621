"""Output paths of the command line: checked before any work, and series streamed to disk in chunks.

A command checks every path it will write (format by extension, a writable folder, what is already there)
before it reads data or trains, so a bad ``-o`` costs nothing. An existing model or output is replaced
only with ``overwrite``; a folder that holds something other than what the command writes is never
replaced. :class:`SeriesStream` writes a large sample chunk by chunk to a temporary file beside the
output, renamed onto it once complete (nothing half-written remains).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from .artifact import MANIFEST
from .data import SeriesSet, write_series
from .errors import ConfigError

SERIES_EXTENSIONS = (".parquet", ".csv", ".jsonl")


def _check_folder(folder: Path, flag: str, target: Path) -> None:
    """The folder ``target`` goes into can be created or written: its nearest existing ancestor is a
    writable directory."""
    anc = folder
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{flag} {target}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {target}: cannot write in {anc} (permission denied or read-only)")


def check_output_file(path: str | os.PathLike, flag: str = "-o", overwrite: bool = False,
                      extensions: Iterable[str] = SERIES_EXTENSIONS) -> Path:
    """A file output: a known extension, a writable folder, and no existing file unless ``overwrite``."""
    p = Path(path)
    exts = tuple(extensions)
    if p.suffix.lower() not in exts:
        raise ConfigError(f"{flag} {p}: unknown output extension '{p.suffix}' (use {', '.join(exts)})")
    if p.is_dir():
        raise ConfigError(f"{flag} {p}: is a folder; give a file name")
    if p.exists() and not overwrite:
        raise ConfigError(f"{flag} {p}: exists; pass --overwrite to replace it")
    _check_folder(p.parent, flag, p)
    return p


def check_model_dir(path: str | os.PathLike, flag: str = "-o", overwrite: bool = False) -> Path:
    """A model directory output: absent, empty, or (with ``overwrite``) a tsynth model directory; a file or
    a folder holding anything else is refused."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p}: is a file, not a model directory")
    if p.is_dir() and any(p.iterdir()):
        if not (p / MANIFEST).exists():
            raise ConfigError(f"{flag} {p}: a folder that is not a tsynth model directory and not empty; "
                              "refusing to write a model over it")
        if not overwrite:
            raise ConfigError(f"{flag} {p}: a model directory exists there; pass --overwrite to replace it")
    _check_folder(p.parent, flag, p)
    return p


def check_output_dir(path: str | os.PathLike, names: Iterable[str], flag: str = "-o",
                     overwrite: bool = False) -> Path:
    """A folder the command writes ``names`` into: not a file, and none of ``names`` there unless ``overwrite``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p}: is a file, not a folder")
    there = [n for n in names if (p / n).exists()]
    if there and not overwrite:
        raise ConfigError(f"{flag} {p}: already holds {', '.join(there)}; pass --overwrite to replace them")
    _check_folder(p, flag, p)
    return p


class SeriesStream:
    """Series written chunk by chunk (format by extension, as :func:`tsynth.data.write_series`) into a
    temporary file beside ``path``; :meth:`close` renames it onto ``path``, :meth:`abort` removes it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.ext = self.path.suffix.lower()
        if self.ext not in SERIES_EXTENSIONS:
            raise ConfigError(f"{self.path}: unknown output extension '{self.ext}' (use {', '.join(SERIES_EXTENSIONS)})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.chunk = self.path.with_name(f".{self.path.name}.chunk-{os.getpid()}{self.ext}")
        self.series = 0
        self._parquet = None

    def write(self, data: SeriesSet) -> None:
        """Append ``data``: each chunk goes through the one-shot writer, then onto the temporary file."""
        write_series(data, self.chunk)
        try:
            if self.ext == ".parquet":
                self._append_parquet()
            else:
                with open(self.chunk, "rb") as src, open(self.tmp, "ab") as out:
                    if self.ext == ".csv" and self.series:
                        src.readline()  # the header once
                    shutil.copyfileobj(src, out)
        finally:
            self.chunk.unlink(missing_ok=True)
        self.series += len(data)

    def _append_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(self.chunk)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        elif not table.schema.equals(self._parquet.schema, check_metadata=False):
            try:
                table = table.cast(self._parquet.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
                raise ConfigError(f"{self.path}: a later chunk of series has other columns or types than the first "
                                  f"({e}); write to .csv or .jsonl instead") from None
        self._parquet.write_table(table)

    def close(self) -> Path:
        if self._parquet is not None:
            self._parquet.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._parquet is not None:
            try:
                self._parquet.close()
            except Exception:  # noqa: BLE001 -- the file is removed anyway
                pass
        self.tmp.unlink(missing_ok=True)
        self.chunk.unlink(missing_ok=True)


CHECKPOINT_ENTRIES = ("member_*", "epoch-*", "inputs", "plan.json", "progress.json", "progress.json.tmp")


def discard_checkpoints(directory: str | os.PathLike) -> None:
    """Remove what a fit wrote into its checkpoint directory (members' states, the time plan, member inputs),
    then the directory itself when nothing else is in it."""
    d = Path(directory)
    if not d.is_dir():
        return
    for pattern in CHECKPOINT_ENTRIES:
        for entry in d.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    try:
        d.rmdir()
    except OSError:  # something else lives there: left alone
        pass
