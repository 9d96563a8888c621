"""``Synthesizer``: the fit / sample / save / load surface over every backend."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Sequence

from .artifact import read_manifest, write_artifact
from .data import SeriesSet
from .errors import ArtifactError, ConfigError, TsynthError

BACKENDS = {
    "local": "tsynth.backends.local:LocalBackend",
    "openai": "tsynth.backends.openai:OpenAIBackend",
    "fewshot": "tsynth.backends.fewshot:FewShotBackend",
    "pretrained": "tsynth.backends.pretrained:PretrainedLoRABackend",
}


def backend_class(name: str):
    """The backend class registered under ``name``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


class Synthesizer:
    """Fit a generator on a SeriesSet, sample new series, save and load it.

    >>> syn = Synthesizer(backend="local", preset="tiny").fit(train)   # doctest: +SKIP
    >>> synthetic = syn.sample(100, temperature=1.0, seed=0)           # doctest: +SKIP
    >>> syn.save("model_dir"); Synthesizer.load("model_dir")           # doctest: +SKIP
    """

    def __init__(self, backend: str = "local", **options: Any) -> None:
        self.backend_name = backend
        self.backend = backend_class(backend)(**options)
        self.fitted = False
        self.path: Path | None = None  # the model directory it was loaded from or saved to

    def fit(self, data: Any, **kwargs: Any) -> "Synthesizer":
        """Train on ``data``, a SeriesSet or (local backend) a :class:`tsynth.streaming.PartitionedSeries` read as a
        stream (backend-specific keywords: callback, checkpoint_dir, resume, progress)."""
        from .streaming import PartitionedSeries

        if isinstance(data, PartitionedSeries):  # a partitioned Parquet data set, read as a stream
            if self.backend_name != "local":
                raise ConfigError(f"the {self.backend_name} backend needs the data in memory: read one file")
            from .backends.streamfit import fit_streaming

            fit_streaming(self.backend, data, **kwargs)
            self.fitted = True
            return self
        if not isinstance(data, SeriesSet):
            raise ConfigError(f"fit expects a SeriesSet or a PartitionedSeries, got {type(data).__name__}")
        self.backend.fit(data, **kwargs)
        self.fitted = True
        return self

    def sample(self, n: int, conditions: dict | Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, output: str | os.PathLike | None = None,
               engine: str = "local", **kwargs: Any) -> Any:
        """Draw ``n`` series. ``conditions``: one dict for all, or one per series.

        With ``output`` (a folder) the series are not returned but written batch by batch as a partitioned
        Parquet data set, in this process (``engine="local"``) or on a Ray cluster (``engine="ray"``; the model
        must have been loaded or saved); keywords ``batch_size``, ``resume``, ``overwrite``, ``address``,
        ``workers``, ``on_event`` go to :func:`tsynth.partitions.sample_to_directory`, whose figures are returned.
        """
        if not self.fitted:
            raise ConfigError("call fit() or Synthesizer.load() before sample()")
        if output is not None:
            from .partitions import sample_to_directory

            if conditions is not None and not isinstance(conditions, dict):
                raise ConfigError("sampling to a folder takes one dict of conditions for all series")
            kwargs.pop("progress", None)
            return sample_to_directory(self, n, output, model_dir=self.path, engine=engine, seed=seed or 0,
                                       conditions=conditions, temperature=temperature, top_p=top_p, **kwargs)
        if isinstance(conditions, dict):
            conditions = [dict(conditions) for _ in range(n)] if n > 0 else []
        return self.backend.sample(n, conditions=conditions, temperature=temperature, top_p=top_p, seed=seed, **kwargs)

    @property
    def info(self) -> dict[str, Any]:
        """The backend's recorded state (codec, training figures, schema...)."""
        return self.backend.state()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model directory atomically."""
        if not self.fitted:
            raise ConfigError("nothing to save: the synthesizer is not fitted")
        self.path = write_artifact(path, {"backend": self.backend_name, **self.backend.state()}, self.backend.save)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Synthesizer":
        """Load a model directory written by :meth:`save`."""
        doc = read_manifest(path)
        self = cls.__new__(cls)
        self.backend_name = doc["backend"]
        try:
            self.backend = backend_class(doc["backend"]).load(Path(path), doc)
        except TsynthError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError) as e:  # a damaged or hand-edited tsynth.json
            raise ArtifactError(f"{Path(path) / 'tsynth.json'}: incomplete or damaged, cannot load the model "
                                f"({type(e).__name__}: {e})") from None
        self.fitted = True
        self.path = Path(path)
        return self
