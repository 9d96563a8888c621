"""Pretrain a prior: cut public corpora into windows and fit the compact local model on them.

This sits at the level of :class:`~tsynth.synthesizer.Synthesizer` (it fits one), above the engine's
:mod:`tsynth.prior`, which loads priors and fine-tunes from them. How the windows are cut and scaled is
:func:`tsynth.prior.corpus_windows`; the sources are :mod:`tsynth.corpus`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from .corpus import load_corpus
from .errors import ConfigError
from .prior import CONTEXT_FACTOR, PRIOR_BINS, PRIOR_LENGTHS, PRIOR_RANGE, corpus_windows
from .synthesizer import Synthesizer
from .train import MAX_SMOOTHING

log = logging.getLogger("tsynth")


def pretrain(specs: Sequence[str], output: str | os.PathLike, lengths: Sequence[int] = PRIOR_LENGTHS,
             max_windows: int = 20000, seed: int = 0, progress: bool = True, command: str | None = None,
             **train_options: Any) -> Path:
    """Pretrain a prior on public corpora (names from :data:`tsynth.corpus.SOURCES` or data files) and
    write it as a model artifact with its corpus manifest. ``train_options``: local-backend training
    options (preset, epochs, batch_size, learning_rate, ensemble...). ``command``: the command line that
    rebuilds it, recorded in the manifest (``tsynth pretrain`` passes its own)."""
    if not specs:
        raise ConfigError("pretrain needs at least one corpus (a source name or a data file)")
    lengths = sorted({int(L) for L in lengths})
    if lengths[0] < 8:
        raise ConfigError(f"prior window lengths must be at least 8 steps, got {lengths}")
    series, sources = load_corpus(specs, seed=seed)
    groups = [src["name"] for src in sources for _ in range(src["series"])]
    windows, stats = corpus_windows(series, groups, lengths, max_windows, seed)
    for src in sources:
        src.update(stats[src["name"]])
    log.info("corpus: %d windows of %s steps from %d sources", len(windows), lengths, len(sources))
    # smoothing: a fixed width (the shipped priors' 2 bins), not one measured on the corpus; no point masses (the
    # windows are standardised one by one, and a fine-tune fits its own codec on its data)
    options = {"ensemble": 1, "epochs": 30, "batch_size": 64, "patience": 5, "validation_fraction": 0.05,
               "smoothing": MAX_SMOOTHING, "point_mass_series": 0, **train_options, "prior": "none", "codec": "token",
               "n_bins": PRIOR_BINS, "binning": "quantile",
               "scaling": "none", "conditions": [], "profiles": False, "value_range": PRIOR_RANGE, "seed": seed}
    syn = Synthesizer("local", **options)
    syn.backend.corpus = {
        "sources": sources, "lengths": lengths, "windows": len(windows), "seed": seed,
        "scaling": f"each window standardised by the mean and std of its context (up to {CONTEXT_FACTOR}x the "
                   f"window), clipped to {list(PRIOR_RANGE)}",
        "command": command,
    }
    syn.fit(windows, progress=progress)
    return syn.save(output)
