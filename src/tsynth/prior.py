"""The public prior: the compact local model, pretrained on public time series only.

A prior is a normal local-backend model artifact (``tsynth.json`` + ``model/``) whose ``tsynth.json`` also
holds ``corpus``: every source it saw, with its package, origin, licence and counts (``corpus.json`` in
the directory repeats it). Fine-tuning from a prior (``Synthesizer("local", prior=...)``, ``tsynth fit
--prior``) keeps the prior's value bins, so the private data's tokens mean what the prior learnt:

* the bins are equal-mass bins of the *public* windows, fixed in units of standard deviations over
  ``PRIOR_RANGE``; without DP the private data is standardised with its own mean and scale (``global``
  scaling) before binning, or, where the series' levels differ by orders of magnitude (``series`` scaling), each
  series over its level is standardised on its own, its level and spread new tokens; under DP nothing is fitted to
  it: the user's public ``value_range`` is mapped linearly onto ``PRIOR_RANGE`` (the default [-5, 5] maps to itself);
* without DP, the prior's two edge bins, which hold everything beyond its outermost inner edges (public
  standardised windows rarely reach beyond two standard deviations), are cut into pieces at quantiles of the private
  values they hold, where they hold enough, as the step codec cuts its wide bins
  (:func:`~tsynth.codecs.values.split_wide_bins`); each piece is a token that starts from its bin's embedding. Under
  DP the bins stay the prior's (which bins hold enough values is a fact about the data);
* the vocabulary grows by those pieces and the private condition and level tokens (new embedding rows), the model
  keeps the prior's architecture and context, so a series longer than the prior's longest window is refused.

Corpus windows are cut at several lengths (``PRIOR_LENGTHS``) and each is standardised by the mean and
standard deviation of its surrounding context (up to ``CONTEXT_FACTOR`` times the window), so windows keep
realistic offsets and spreads rather than all being exactly zero-mean, unit-variance.

Two priors ship inside the package (``SHIPPED_PRIORS``): ``default`` (general public series:
:data:`tsynth.corpus.DEFAULT_CORPUS`) and ``load`` (electric load profiles: :data:`tsynth.corpus.LOAD_CORPUS`),
for electricity / energy-consumption data. Each is rebuilt by ``tsynth pretrain`` (:func:`tsynth.pretrain.pretrain`)
with the command in its ``tsynth.json`` (``corpus.command``). No data set of the benchmarks and not the demo set (see
:data:`tsynth.corpus.EXCLUDED`) is in either.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .artifact import FORMAT_VERSION, read_manifest
from .codecs.values import ValueCodec, split_wide_bins
from .data import SeriesSet
from .errors import ArtifactError, ConfigError, DataError

log = logging.getLogger("tsynth")

DEFAULT_PRIOR = Path(__file__).resolve().parent / "priors" / "default"
SHIPPED_PRIORS = {"default": DEFAULT_PRIOR, "load": DEFAULT_PRIOR.parent / "load"}
PRIOR_LENGTHS = (24, 48, 96, 168)
PRIOR_RANGE = (-5.0, 5.0)
PRIOR_BINS = 256
CONTEXT_FACTOR = 8
CORPUS_FILE = "corpus.json"
WINDOW_STRIDE_DIVISOR = 2  # candidate windows start every half window (denser starts did not help: docs/priors.md)


def corpus_windows(series: Sequence[np.ndarray], groups: Sequence[str], lengths: Sequence[int] = PRIOR_LENGTHS,
                   max_windows: int = 20000, seed: int = 0) -> tuple[SeriesSet, dict]:
    """Cut public series into context-standardised windows; returns them and per-group counts.

    ``groups`` names the source of each series; each source gets an equal share of ``max_windows``
    (windows are drawn at random among all its candidate windows, which start every length /
    ``WINDOW_STRIDE_DIVISOR`` steps). Windows whose
    context is constant are skipped; values beyond ``PRIOR_RANGE`` are clipped and counted.
    """
    if len(series) != len(groups):
        raise ConfigError("one group name per series is needed")
    rng = np.random.default_rng(seed)
    names = list(dict.fromkeys(groups))
    share = max(1, max_windows // max(1, len(names)))
    arrays, ids, stats = [], [], {}
    for name in names:
        members = [i for i, g in enumerate(groups) if g == name]
        cands = [(i, L, s) for i in members for L in lengths
                 for s in range(0, len(series[i]) - L + 1, max(1, L // WINDOW_STRIDE_DIVISOR))]
        if not cands:
            raise DataError(f"corpus source {name!r}: no series is as long as the shortest window ({min(lengths)} steps)")
        pick = rng.choice(len(cands), size=min(share, len(cands)), replace=False)
        kept = clipped = skipped = 0
        for k in sorted(pick):
            i, L, s = cands[k]
            x = np.asarray(series[i], dtype=np.float64)
            c = min(len(x), CONTEXT_FACTOR * L)
            c0 = int(np.clip(s + L // 2 - c // 2, 0, len(x) - c))
            ctx = x[c0: c0 + c]
            sd = float(ctx.std())
            if not np.isfinite(sd) or sd < 1e-8 * max(1.0, float(np.abs(ctx).max())):
                skipped += 1
                continue
            z = (x[s: s + L] - float(ctx.mean())) / sd
            out = (z < PRIOR_RANGE[0]) | (z > PRIOR_RANGE[1])
            clipped += int(out.sum())
            arrays.append(np.clip(z, *PRIOR_RANGE))
            ids.append(f"{name}:{i}")
            kept += 1
        stats[name] = {"windows": kept, "candidate_windows": len(cands), "skipped_constant": skipped,
                       "clipped_values": clipped}
    if not arrays:
        raise DataError("the corpus gave no usable window")
    return SeriesSet.from_arrays(arrays, ids, ["value"], source="corpus"), stats


@dataclass
class Prior:
    """A loaded prior: its codec, its manifest and where it lives."""

    path: Path
    codec: ValueCodec
    doc: dict

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Prior":
        """Read and check a prior directory (format version, backend, codec kind)."""
        p = Path(path)
        try:
            doc = read_manifest(p)
        except ArtifactError as e:
            raise ArtifactError(f"prior {p}: {e}") from None
        if doc.get("backend") != "local" or "corpus" not in doc:
            raise ArtifactError(f"{p}: not a prior (a local-backend model directory written by `tsynth pretrain`)")
        codec = ValueCodec.from_dict(doc["codec"])
        if codec.scaling != "none" or codec.fields or codec.channels != ["value"]:
            raise ArtifactError(f"{p}: the prior was built with another codec (scaling {codec.scaling!r}, "
                                f"{len(codec.fields)} condition fields); rebuild it with `tsynth pretrain`")
        return cls(p, codec, doc)

    @property
    def n_positions(self) -> int:
        return int(json.loads((self.path / "model" / "config.json").read_text())["n_positions"])

    @property
    def lengths(self) -> list[int]:
        return list(self.doc["corpus"]["lengths"])

    @property
    def preset(self) -> str:
        return self.doc["options"]["train"]["preset"]

    def summary(self) -> dict:
        """What a fine-tuned model records about its prior."""
        weights = self.path / "model" / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16] if weights.exists() else None
        return {"path": str(self.path.resolve()), "weights_sha256": digest, "lengths": self.lengths,
                "sources": [s["name"] for s in self.doc["corpus"]["sources"]], "format_version": FORMAT_VERSION}

    def codec_for(self, data: SeriesSet, conditions: Sequence[str] | str, dp: bool,
                  value_range: tuple[float, float] | None, point_mass_series: int,
                  profiles: bool = False, scaling: str = "global") -> ValueCodec:
        """A codec for ``data`` that keeps the prior's bins (see the module docstring); ``profiles``: with a profile
        class field where the data has classes and the prior's context holds the extra token (never under DP);
        ``scaling`` (without DP): 'global', or 'series' for series whose levels differ by orders of magnitude (each
        series standardised on its own, its level and spread new tokens before the values: see
        :class:`~tsynth.codecs.values.Scaler`)."""
        steps = int(data.lengths.max()) * data.n_channels
        if steps > self.lengths[-1] or int(data.lengths.min()) * data.n_channels < self.lengths[0]:
            raise ConfigError(f"the prior at {self.path} was pretrained on series of {self.lengths[0]}-{self.lengths[-1]} "
                              f"steps; this data has {int(data.lengths.min())}-{int(data.lengths.max())} steps x "
                              f"{data.n_channels} channels: pass --prior none (or pretrain a prior for this length)")
        codec = ValueCodec(n_bins=self.codec.n_bins, binning="quantile", scaling="none" if dp else scaling,
                           conditions=conditions, value_range=value_range if dp else None,
                           point_mass_series=point_mass_series)
        codec.fit(data, edges=self.codec.edges, profiles=profiles and not dp)
        if not dp:  # the edge bins: a client's 0 kW at a clock change and an ordinary low are one token there
            units = codec.to_units(data.values.astype(np.float64))
            flat = units[~np.isnan(units)]
            edges = np.asarray(self.codec.edges)
            cut = split_wide_bins(edges, flat, len(flat) / (len(edges) - 1))
            cut = np.unique(np.concatenate([edges, cut[(cut < edges[1]) | (cut > edges[-2])]]))
            if len(cut) > len(edges):
                codec.fit(data, edges=cut.tolist(), profiles=profiles)
                pieces = np.bincount(bin_of_piece(edges, cut))
                log.info("%d of the prior's edge bins cut into %d pieces for the values they hold here",
                         int((pieces > 1).sum()), int(pieces[pieces > 1].sum()))
        if codec.sequence_length(int(data.lengths.max())) > self.n_positions and codec.fields \
                and codec.fields[-1].hidden:
            log.info("no profile class field: the prior's context (%d tokens) holds no token more", self.n_positions)
            codec.fields.pop()
        if codec.sequence_length(int(data.lengths.max())) > self.n_positions:
            series_tokens = codec.prefix_length - 1 - len(codec.fields)
            levels = f" plus {series_tokens} level and spread tokens" if series_tokens else ""
            raise ConfigError(f"the prior's context holds {self.n_positions} tokens; {len(codec.fields)} condition "
                              f"fields{levels} plus {steps} values do not fit: pass fewer --conditions or --prior none")
        return codec

    def initial_weights(self, vocab_size: int, codec: ValueCodec | None = None) -> dict:
        """The prior's weights with the embedding grown to ``vocab_size`` (new rows drawn around the mean
        embedding, with the old rows' covariance). ``codec``: the fine-tune's (:meth:`codec_for`); where it cut some
        of the prior's value bins into pieces, each piece's row (embedding and output, which GPT-2 ties) is its bin's,
        and the rows after the value tokens move up by the pieces added."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar for a model of a few hundred kB
        model = AutoModelForCausalLM.from_pretrained(self.path / "model")
        hf_logging.set_verbosity_error()  # its note on how new rows are initialised
        if vocab_size < model.config.vocab_size:
            raise ConfigError(f"prior {self.path}: the vocabulary shrank ({vocab_size} < {model.config.vocab_size})")
        model.resize_token_embeddings(vocab_size, mean_resizing=True)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        edges = np.asarray(self.codec.edges)
        if codec is None or len(codec.edges) == len(edges):
            return state
        cut = np.asarray(codec.edges)
        bin_of = bin_of_piece(edges, cut)
        first = codec.value_offset
        rows = np.arange(vocab_size)
        rows[first:first + len(bin_of)] = first + bin_of
        rows[first + len(bin_of):] -= len(cut) - len(edges)
        for key in ("transformer.wte.weight", "lm_head.weight"):
            if key in state:
                state[key] = state[key][torch.as_tensor(rows)].clone()
        return state


def bin_of_piece(edges: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """For the bins of ``cut`` (edges that hold every one of ``edges`` and more), the bin of ``edges`` each lies in."""
    return np.searchsorted(edges, (cut[:-1] + cut[1:]) / 2, side="right") - 1


# what ``--domain`` may name, and the shipped prior that serves it: the load prior's corpus is metered electric load
LOAD_DOMAINS = ("electricity", "energy", "load", "power", "smart-meter", "utility", "heat", "gas")
DOMAIN_PRIORS = {d: "load" for d in LOAD_DOMAINS}


def is_hourly(freq: str | None) -> bool:
    """Whether a pandas frequency alias is one hour ("h", "1h", "60min")."""
    if freq is None:
        return False
    try:
        return pd.Timedelta(pd.tseries.frequencies.to_offset(freq)) == pd.Timedelta(hours=1)
    except (ValueError, TypeError):
        return False


def auto_prior(domain: str | None, dp: bool, freq: str | None, n_channels: int) -> tuple[str | None, str]:
    """The prior ``prior="auto"`` takes, from public facts only (what the user says the data is, whether DP is
    asked for, the data's frequency and channel count; never its values), and the reason, for the log.

    A ``domain`` that a shipped prior serves (``DOMAIN_PRIORS``) takes that prior, with or without DP. Without a
    domain, hourly data of one channel takes the load prior, with or without DP: metered load is what such data most
    often is, and the load prior carries the daily and weekly rhythm that a few hundred series teach a model from
    scratch poorly (the evidence: docs/priors.md). The rest, and data of a domain no shipped prior serves (the user
    said it is not load), takes no prior without DP (the step model from scratch learns the data alone) and the
    general default prior under DP."""
    if domain is not None:
        key = domain.strip().lower()
        if key in DOMAIN_PRIORS:
            return DOMAIN_PRIORS[key], f"domain {domain!r}: the {DOMAIN_PRIORS[key]} prior"
        why = f"no shipped prior serves domain {domain!r} (the load prior serves {', '.join(LOAD_DOMAINS)}); "
    else:
        why = ""
    if domain is None and n_channels == 1 and is_hourly(freq):
        return "load", why + f"{'DP with h' if dp else 'h'}ourly data of one channel: the load prior"
    if not dp:
        return None, why + "no prior: the model learns from the data alone"
    return "default", why + "DP: the general default prior"


def resolve_prior(choice: str | os.PathLike | None, dp: bool, domain: str | None = None, freq: str | None = None,
                  n_channels: int = 1) -> Prior | None:
    """``"none"``/None: no prior; a name of ``SHIPPED_PRIORS`` (``"default"``, ``"load"``): that shipped prior;
    ``"auto"``: what :func:`auto_prior` takes for these public facts; else a prior directory."""
    if str(choice) == "auto":
        choice = auto_prior(domain, dp, freq, n_channels)[0]
    if choice is None or str(choice) == "none":
        return None
    path = SHIPPED_PRIORS.get(str(choice), Path(choice))
    if not path.exists():
        raise ConfigError(f"prior {path}: no such directory (use {', '.join(map(repr, SHIPPED_PRIORS))}, 'auto', "
                          "'none' or a directory written by `tsynth pretrain`)")
    return Prior.load(path)
