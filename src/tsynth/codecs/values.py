"""Value-token codec for the local language model.

A series becomes one token sequence::

    <bos> <cond tokens ...> [<level_k> per channel] [<spread_k> per channel] <v_k> ... (one per step and channel) <eos>

* values are scaled (a global per-channel standardisation, or per-series mean-absolute scaling whose
  log-level becomes a level token, so levels that differ by orders of magnitude are reproduced; onto a prior's
  bins each series is then standardised on its own too, its log-spread a spread token), then
  quantised into ``n_bins`` bins (uniform over the range, or equal-mass quantile bins); decoding draws
  uniformly inside the bin so marginals stay continuous, except at point masses: a value that at least
  ``point_mass_series`` training items hold (integer counts, zeros, a sensor's resolution; windows of one item
  count once) is decoded exactly, as often within its bin as the training values are. A value held by fewer
  items is never reproduced, so point masses cannot single an item out; continuous data has none. Where the
  model draws a step's bin again, the previous value is held exactly at the share of such steps that the training
  data holds (readings that do not move). Where the data is smoother than values drawn independently inside
  their bins would be (yearly rates, slow sensors), each decoded value may move part of the way from its draw
  towards its neighbours' mean, never out of its bin (:func:`settle`), as far as the training data's own bins
  decoded that way come closest to the data's roughness;
* conditions are one token per field: item id, categorical attributes, numeric attributes (binned),
  calendar position of the window start (hour, day of week, month). Each field also has an unknown
  token ``<field=?>`` used for unseen values and, during training, for condition dropout, so the model
  learns the unconditional distribution too. Where asked (the local backend, not under DP) and the data has
  them, the last field is the series' profile class (:mod:`tsynth.codecs.profiles`): a field of the codec's own,
  computed from the values, drawn first when sampling and never returned as an attribute.

The vocabulary is saved as a standard Hugging Face tokenizer (``AutoTokenizer`` loads it).

:class:`ValueCodec` lays out the tokens and composes three parts, each fitted on the training set:
:class:`Scaler` (data units to codec units, levels, the DP profile), :class:`Bins` (edges, point masses, edge-bin
tails; values to bins and back) and :class:`ConditionVocabulary` (the condition fields). Its saved form
(``to_dict``) is the flat dictionary it always was.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data import SeriesSet, series_roughness, standardise
from ..errors import ConfigError, DataError
from .profiles import fit_profiles, profile_classes

log = logging.getLogger("tsynth")

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
PAD, BOS, EOS = 0, 1, 2
CALENDAR_FIELDS = {"hour": "hour", "dayofweek": "dayofweek", "month": "month"}
PROFILE_FIELD = "~profile"  # the profile class field: a name no attribute column takes (see ConditionVocabulary.fit)
N_LEVEL_BINS = 64
N_NUMERIC_ATTRIBUTE_BINS = 8
# a value held exactly by at least this many training items decodes exactly: readings on a fixed resolution are
# then reproduced, and no single item's value is (why 10: docs/codec.md, "Point masses")
POINT_MASS_SERIES = 10
HOLD_GROUP_SERIES = 30  # training series per level group of the held-value share, at least
HOLD_GROUPS = 4  # level groups of the held-value share, at most
SETTLE_FREEDOMS = (0.0, 0.25, 0.5, 0.75, 0.9)  # the within-bin freedoms a fit chooses from (see settle)
SETTLE_PASSES = 16  # passes of settle's neighbour averaging
SETTLE_FIT_SERIES = 400  # training series (a seeded subsample) whose roughness chooses the freedom
SETTLE_FIT_VALUES = 1 << 21  # values of them read at most (longer series: their first steps)
SETTLE_MIN_GAIN = 0.1  # a channel settles where that brings its roughness at least this much closer (log ratios)
# split_wide: an equal-mass bin wider than WIDE_BIN median bin widths is cut into equal-mass pieces of at least
# 1/WIDE_PIECES of a bin's share of the values and at least WIDE_MIN_VALUES values (a bin learnt from fewer is
# noise), and at most as many as it has such widths (docs/codec.md, "Wide bins")
WIDE_BIN, WIDE_PIECES, WIDE_MIN_VALUES = 4.0, 8, 32


@dataclass
class ConditionField:
    """One conditioning field and its token values (strings; numeric fields keep bin edges)."""

    name: str
    values: list[str]
    edges: list[float] | None = None  # numeric attribute: bin edges, values are bin labels
    centres: list[list[float]] | None = None  # the profile class field: its classes' centres, values are "0".."k-1"
    counts: list[int] | None = None  # the profile class field: training series per class (the shares samples keep)

    @property
    def hidden(self) -> bool:
        """A field of the codec's own (the profile class): never a user's condition nor a returned attribute."""
        return self.name == PROFILE_FIELD

    def token(self, value: Any) -> str:
        return f"<{self.name}={value}>"

    def tokens(self) -> list[str]:
        return [self.token("?")] + [self.token(v) for v in self.values]

    def label(self, raw: Any) -> str | None:
        """The token value for a raw value, or None when it was never seen in training."""
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            return None
        if self.edges is not None:
            try:
                x = float(raw)
            except (TypeError, ValueError):
                return None
            k = int(np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, len(self.values) - 1))
            return self.values[k]
        s = str(raw)
        return s if s in self.values else None

    def raw(self, label: str, rng: np.random.Generator) -> Any:
        """A raw value for a token value: the label itself, or a draw inside a numeric bin."""
        if self.edges is None:
            return label
        k = self.values.index(label)
        return float(rng.uniform(self.edges[k], self.edges[k + 1]))


@dataclass
class Scaler:
    """Data units <-> codec units: a per-channel standardisation ('global'), the series' mean absolute level as
    well ('series', whose log-level is a level token), or none (a DP fit's public range onto the bins), less an
    optional per-step profile.

    'series' onto a prior's bins (``series_spread_edges`` set) also divides each series, over its level and less the
    channel's mean, by its own spread, whose log is a spread token after the level tokens: the prior's bins were
    fitted on standardised series, and with this each positive series reaches them standardised on its own."""

    scaling: str = "auto"
    loc: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    level_edges: list[float] = field(default_factory=list)
    profile: list[list[float]] | None = None  # per-step offset (steps x channels) removed after scaling (DP release)
    series_spread_edges: list[float] = field(default_factory=list)

    def fit(self, data: SeriesSet, vals: np.ndarray, edges: Sequence[float] | None,
            value_range: tuple[float, float] | None) -> None:
        """Choose the scaling ('auto') and fit it to ``vals`` (``data``'s values as float64). With fixed ``edges``,
        scaling 'none' and a ``value_range``, that range is mapped linearly onto the edges' range."""
        if self.scaling == "auto":
            self.scaling = choose_scaling(data)
        if self.scaling not in ("global", "series", "none"):
            raise ConfigError(f"scaling must be 'auto', 'global', 'series' or 'none', got {self.scaling!r}")
        n_channels = data.n_channels
        if self.scaling == "global":
            self.loc = [float(np.nanmean(vals[..., c])) for c in range(n_channels)]
            self.scale = [float(np.nanstd(vals[..., c])) or 1.0 for c in range(n_channels)]
        else:
            self.loc = [0.0] * n_channels
            self.scale = [1.0] * n_channels
        if edges is not None and self.scaling == "none" and value_range is not None:
            lo, hi = map(float, value_range)
            s = (hi - lo) / (edges[-1] - edges[0])
            self.loc, self.scale = [lo - edges[0] * s] * n_channels, [s] * n_channels
        if self.scaling == "series":
            self.level_edges, self.series_spread_edges = [], []
            levels = self.levels(vals)
            self.level_edges = _log_edges(levels)
            if edges is not None and value_range is None:  # a prior's edges: each series standardised on its own
                rel = vals / (10 ** levels)[:, None, :]
                self.loc = [float(np.nanmean(rel[..., c])) for c in range(n_channels)]
                self.series_spread_edges = _log_edges(self._spreads(rel, None))

    @property
    def n_level_tokens(self) -> int:
        return N_LEVEL_BINS if self.scaling == "series" else 0

    @property
    def n_spread_tokens(self) -> int:
        return N_LEVEL_BINS if self.series_spread_edges else 0

    def levels(self, vals: np.ndarray) -> np.ndarray:
        """log10 of each series' mean absolute value per channel, shape (n, channels); with spreads, then the log10
        of each series' spread over its level, shape (n, 2 * channels)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.nanmean(np.abs(vals), axis=1)
        floor = max(float(np.nanmedian(m)) * 1e-4, 1e-12) if self.level_edges == [] else 10 ** self.level_edges[0]
        levels = np.log10(np.maximum(m, floor))
        if not self.series_spread_edges:
            return levels
        spreads = self._spreads(vals / (10 ** levels)[:, None, :], 10 ** self.series_spread_edges[0])
        return np.concatenate([levels, spreads], axis=1)

    @staticmethod
    def _spreads(rel: np.ndarray, floor: float | None) -> np.ndarray:
        """log10 of each series' standard deviation per channel (``rel``: values over their series' level), at
        least ``floor`` (None: 1e-4 of the median spread), so that a constant series has a finite spread."""
        with np.errstate(invalid="ignore", divide="ignore"):
            sd = np.nanstd(rel, axis=1)
        floor = max(float(np.nanmedian(sd)) * 1e-4, 1e-12) if floor is None else floor
        return np.log10(np.maximum(np.nan_to_num(sd, nan=floor), floor))

    def level_ids(self, levels: np.ndarray) -> np.ndarray:
        """The token of each level (and spread), counted from the first level token: spreads follow the levels."""
        c = levels.shape[1] // (2 if self.series_spread_edges else 1)
        ids = np.clip(np.searchsorted(self.level_edges, levels[:, :c], side="right") - 1, 0, N_LEVEL_BINS - 1)
        if not self.series_spread_edges:
            return ids
        spread = np.searchsorted(self.series_spread_edges, levels[:, c:], side="right") - 1
        return np.concatenate([ids, N_LEVEL_BINS + np.clip(spread, 0, N_LEVEL_BINS - 1)], axis=1)

    def draw_levels(self, level_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A level (and spread) for each token of :meth:`level_ids`: uniform inside its bin."""
        c = level_ids.shape[1] // (2 if self.series_spread_edges else 1)
        le = np.asarray(self.level_edges)
        levels = rng.uniform(le[level_ids[:, :c]], le[level_ids[:, :c] + 1])
        if not self.series_spread_edges:
            return levels
        se, k = np.asarray(self.series_spread_edges), level_ids[:, c:] - N_LEVEL_BINS
        return np.concatenate([levels, rng.uniform(se[k], se[k + 1])], axis=1)

    def to_units(self, vals: np.ndarray, levels: np.ndarray | None, n_channels: int) -> np.ndarray:
        """Values (n, steps, channels) in the codec's units: scaled, less the per-step profile."""
        if self.scaling == "series":
            lv = self.levels(vals) if levels is None else levels
            vals = vals / (10 ** lv[:, :n_channels])[:, None, :]
        out = (vals - np.asarray(self.loc)) / np.asarray(self.scale)
        if self.series_spread_edges:
            out = out / (10 ** lv[:, n_channels:])[:, None, :]
            with np.errstate(invalid="ignore"):
                flat = np.nanstd(vals, axis=1) == 0  # a constant series (all zero, say): at the bins' centre
            out = np.where(flat[:, None, :], 0.0, out)
        return out - self.step_profile(out.shape[1], n_channels)

    def from_units(self, units: np.ndarray, levels: np.ndarray | None) -> np.ndarray:
        """Values in data units from codec units to which the per-step profile is already added back."""
        c = units.shape[2]
        if levels is not None and self.series_spread_edges:
            units = units * (10 ** levels[:, c:])[:, None, :]
        vals = units * np.asarray(self.scale) + np.asarray(self.loc)
        return vals if levels is None else vals * (10 ** levels[:, :c])[:, None, :]

    def set_profile(self, profile: np.ndarray, centred: bool, value_range: tuple[float, float],
                    first: float, last: float) -> None:
        """See :meth:`ValueCodec.set_profile`; ``first`` and ``last`` are the bins' outer edges."""
        lo, hi = map(float, value_range)
        centre = np.clip(np.asarray(self.loc) + np.asarray(profile) * np.asarray(self.scale), lo, hi)  # data units
        low, high = lo - centre.max(axis=0), hi - centre.min(axis=0)  # per channel: values less their step's centre
        if centred:
            mid = (first + last) / 2
            scale = np.maximum(-low / (mid - first), high / (last - mid))
            loc = -mid * scale
        else:
            scale = (high - low) / (last - first)
            loc = low - first * scale
        self.loc, self.scale = loc.tolist(), scale.tolist()
        self.profile = (centre / scale).tolist()

    def step_profile(self, steps: int, n_channels: int) -> np.ndarray:
        """The per-step offset for ``steps`` steps (zeros without a profile)."""
        if self.profile is None:
            return np.zeros((steps, n_channels))
        if steps > len(self.profile):
            raise ConfigError(f"this model's per-step profile covers {len(self.profile)} steps; {steps} were asked")
        return np.asarray(self.profile)[:steps]


def split_wide_bins(edges: np.ndarray, flat: np.ndarray, per_bin: float) -> np.ndarray:
    """Equal-mass ``edges`` with every bin wider than ``WIDE_BIN`` median bin widths cut at quantiles of its own
    values (``flat``) into equal-mass pieces: as many as it is such widths wide, but none holding fewer than
    ``per_bin / WIDE_PIECES`` values (``per_bin``: an equal-mass bin's count) nor fewer than ``WIDE_MIN_VALUES``.
    Equal-mass bins are wide where values are rare, in the tails: one bin of z-scored load holds everything from
    -17 to -2.1 standard deviations, so a reading just below -2.1 and a dip to -4 are the same bin to the model,
    and decoding draws either from the bin's one tail distribution whatever the model knew of the step."""
    widths = np.diff(edges)
    cap = WIDE_BIN * float(np.median(widths))
    least = max(per_bin / WIDE_PIECES, WIDE_MIN_VALUES)
    ordered = np.sort(flat)
    # bin i holds ordered[bounds[i]:bounds[i + 1]]: [edges[i], edges[i + 1]), the last bin its top edge too (as assign)
    bounds = np.r_[np.searchsorted(ordered, edges[:-1], side="left"), len(ordered)]
    out = [edges[:1]]
    for i, w in enumerate(widths):
        if w > cap:
            inside = ordered[bounds[i]:bounds[i + 1]]
            pieces = int(min(np.ceil(w / cap), len(inside) // least))
            if pieces > 1:
                cuts = np.quantile(inside, np.linspace(0, 1, pieces + 1)[1:-1])
                out.append(np.unique(cuts[(cuts > edges[i]) & (cuts < edges[i + 1])]))
        out.append(edges[i + 1:i + 2])
    return np.concatenate(out)


def settle(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, movable: np.ndarray, valid: np.ndarray,
           freedom: Sequence[float]) -> np.ndarray:
    """``values`` (n, steps, channels) with each movable value moved towards the mean of its two neighbours, over
    ``SETTLE_PASSES`` passes, but kept inside ``[v - f (v - lo), v + f (hi - v)]`` around its draw ``v``: a share
    ``f`` (``freedom``, per channel) of the room to its bin's edges ``lo`` and ``hi``. Every value stays in its bin,
    so the model's bins are decoded as before; only where inside them is smoothed. Each value keeps a range of
    its own around its own draw, so two values of one bin never meet at an edge (an exact repeat the data does
    not have). A value whose neighbours are not both ``valid`` (a series' ends, gaps) stays where it was drawn,
    and so do values that are not ``movable`` (point masses, the edge bins' tails)."""
    out = np.array(values, dtype=np.float64)
    for c, f in enumerate(freedom):
        if f <= 0:
            continue
        v = out[..., c]
        low, high = v - f * (v - lo[..., c]), v + f * (hi[..., c] - v)
        ok = valid[..., c]
        move = movable[:, 1:-1, c] & ok[:, :-2] & ok[:, 2:]
        y = v.copy()
        for _ in range(SETTLE_PASSES):
            mean = np.clip((y[:, :-2] + y[:, 2:]) / 2, low[:, 1:-1], high[:, 1:-1])
            y[:, 1:-1] = np.where(move, mean, y[:, 1:-1])
        out[..., c] = y
    return out


def _roughness(x: np.ndarray) -> np.ndarray:
    """(2, channels): the median over series of the relative mean absolute first and second differences of ``x``
    (n, steps, channels, NaN where there is no value; :func:`tsynth.data.series_roughness`), constant series left
    out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a channel with no varying series: NaN
        return np.stack([np.nanmedian(r, axis=0) for r in series_roughness(x)[:2]])


@dataclass
class Bins:
    """The value bins in codec units (uniform, or equal-mass 'quantile'), with the point masses decoded exactly,
    each channel's share of held values and, for quantile bins, the mean excess of the two edge bins that their
    values are drawn from."""

    n_bins: int = 256
    binning: str = "quantile"
    edges: list[float] = field(default_factory=list)
    point_mass_series: int = POINT_MASS_SERIES  # 0: no point masses (under DP: they would be data-dependent)
    point_masses: list[dict] = field(default_factory=list)  # per channel: values, counts, rest (per bin)
    tails: list[list[float]] = field(default_factory=list)  # per channel: mean distance into the two edge bins
    # per channel: the share of steps in the same bin as the step before that decoding holds at exactly its value:
    # the data's share, less what point masses repeat by themselves (fit_settle; fitted where point masses are:
    # under DP neither is)
    repeats: list[float] = field(default_factory=list)
    # per channel where the share differs by the series' level: {"edges": inner edges of the series means (data
    # units), "shares": one share per level group}; empty where one share serves every series
    repeat_groups: list[dict] = field(default_factory=list)
    # per channel: the share of the room to its bin's edges that a decoded value may move towards its neighbours
    # (:func:`settle`; fitted where point masses are: under DP, and in codecs saved before it existed, empty)
    settle: list[float] = field(default_factory=list)

    def check(self) -> None:
        if self.binning not in ("quantile", "uniform"):
            raise ConfigError(f"binning must be 'quantile' or 'uniform', got {self.binning!r}")
        if self.n_bins < 2:
            raise ConfigError("n_bins must be at least 2")

    @property
    def n_tokens(self) -> int:
        return len(self.edges) - 1

    def fit_edges(self, flat: np.ndarray, value_range: tuple[float, float] | None, split_wide: bool = False) -> None:
        """Bins over the observed values ``flat`` (codec units), or over ``value_range`` when given; ``split_wide``:
        equal-mass bins far wider than most are cut into pieces (:func:`split_wide_bins`)."""
        if value_range is not None:
            lo, hi = map(float, value_range)
        else:
            lo, hi = float(flat.min()), float(flat.max())
            pad = max(0.02 * (hi - lo), 1e-6)
            lo, hi = lo - pad, hi + pad
        if self.binning == "uniform":
            edges = np.linspace(lo, hi, self.n_bins + 1)
        else:  # equal-mass bins of the values inside [lo, hi]
            inner = np.quantile(np.clip(flat, lo, hi), np.linspace(0, 1, self.n_bins + 1)[1:-1])
            edges = np.unique(np.concatenate([[lo], inner, [hi]]))
            if len(edges) - 1 < self.n_bins:
                log.info("quantile binning: %d distinct bins instead of %d (repeated values)", len(edges) - 1, self.n_bins)
            if split_wide and value_range is None:
                n = len(edges) - 1
                edges = split_wide_bins(edges, flat, len(flat) / self.n_bins)
                if len(edges) - 1 > n:
                    log.info("quantile binning: %d bins, %d with the wide ones in the tails cut", n, len(edges) - 1)
        self.edges = edges.tolist()

    def fit_tails(self, units: np.ndarray) -> None:
        """Per channel, how far beyond their bin's inner edge the training values of the two edge bins lie on
        average (codec units). Equal-mass edge bins reach out to the most extreme value, so they are wide (one
        holds -17..-2 standard deviations of z-scored load); values decoded uniformly there came out as spikes
        far beyond what the data has. They are drawn from an exponential tail with this mean instead."""
        e = np.asarray(self.edges)
        out = []
        for c in range(units.shape[2]):
            x = units[:, :, c][~np.isnan(units[:, :, c])]
            low, high = x[x < e[1]], x[x >= e[-2]]
            out.append([float(np.mean(e[1] - low)) if len(low) else float(e[1] - e[0]) / 2,
                        float(np.mean(high - e[-2])) if len(high) else float(e[-1] - e[-2]) / 2])
        self.tails = out

    def fit_point_masses(self, units: np.ndarray, bins: np.ndarray, item_id: np.ndarray) -> None:
        """Per channel: the values (codec units) that at least ``point_mass_series`` items hold (series with
        distinct item ids: windows of one item count once, so overlapping windows cannot make one item's value a
        point mass), how often the training data has each, and how many of each bin's training values are not
        point masses. ``bins``: each value's bin (:meth:`assign`)."""
        items = np.broadcast_to(pd.factorize(np.asarray(item_id, dtype=object))[0][:, None], units.shape[:2])
        out, covered = [], 0
        for c in range(units.shape[2]):
            observed = ~np.isnan(units[:, :, c])  # NaN: missing, or beyond a series' length
            vals = units[:, :, c][observed]
            order = np.lexsort((items[observed], vals))
            v, item = vals[order], items[observed][order]
            new_holder = np.r_[True, (v[1:] != v[:-1]) | (item[1:] != item[:-1])]
            held, n_items = np.unique(v[new_holder], return_counts=True)
            masses = held[n_items >= self.point_mass_series]
            is_mass = np.isin(vals, masses)
            values, counts = np.unique(vals[is_mass], return_counts=True)
            rest = np.bincount(bins[:, :, c][observed][~is_mass], minlength=self.n_tokens)
            covered += int(is_mass.sum())
            out.append({"values": values.tolist(), "counts": counts.tolist(), "rest": rest.tolist()})
        if covered:
            log.info("point masses: %d values held by >= %d items each, %.1f%% of the training values, are decoded "
                     "exactly", sum(len(m["values"]) for m in out), self.point_mass_series,
                     100 * covered / max(int((~np.isnan(units)).sum()), 1))
        self.point_masses = out if covered else []

    def fit_repeats(self, vals: np.ndarray, bins: np.ndarray, by_level: bool = False) -> None:
        """Per channel: of the steps whose bin is the previous step's, the share that hold exactly the previous value
        (``vals`` the data's values, ``bins`` their bins). Meters that read in whole units, sensors
        that report an unchanged reading and prices that do not move hold a value for several steps; decoding a bin
        draws a value within it, which alone would never repeat one. ``by_level`` (per-series scaling: levels that
        span orders of magnitude): the share per level group of the series too, where it has enough series."""
        observed = ~np.isnan(vals[:, 1:]) & ~np.isnan(vals[:, :-1])
        same_bin = (bins[:, 1:] == bins[:, :-1]) & observed
        same = same_bin & (vals[:, 1:] == vals[:, :-1])
        pairs = same_bin.sum(axis=(0, 1))
        self.repeats = [float(a / b) if b else 0.0 for a, b in zip(same.sum(axis=(0, 1)), pairs)]
        self.repeat_groups = []
        groups = min(HOLD_GROUPS, len(vals) // HOLD_GROUP_SERIES)
        if not by_level or groups < 2 or not any(self.repeats):
            return
        # the share by the series' level: a meter that reads in coarse units holds its readings far more often
        # where its load is small (raw kW per client: 11 % of the steps of the lowest quarter of clients by mean
        # load, about 1 % of the others'), and one share for every series puts holds where the data has none
        means = _series_means(vals)
        out = []
        for c in range(vals.shape[2]):
            known = ~np.isnan(means[:, c])
            edges = np.unique(np.quantile(means[known, c], np.arange(1, groups) / groups)) if known.any() else []
            group = np.searchsorted(edges, means[:, c], side="right")
            counts = np.bincount(group[known], minlength=len(edges) + 1)
            if len(edges) < groups - 1 or counts.min() < HOLD_GROUP_SERIES:  # levels too alike to group
                out.append({})
                continue
            held = np.bincount(group, weights=same[..., c].sum(axis=1), minlength=len(edges) + 1)
            of = np.bincount(group, weights=same_bin[..., c].sum(axis=1), minlength=len(edges) + 1)
            out.append({"edges": [float(e) for e in edges],
                        "shares": [float(h / o) if o else self.repeats[c] for h, o in zip(held, of)]})
        self.repeat_groups = out if any(out) else []

    def repeat_shares(self, values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Each series' held-value share per channel (n, channels) from its values (n, steps, channels) in data
        units: its level group's share (:meth:`fit_repeats`), else its channel's."""
        shares = np.tile(np.asarray(self.repeats, dtype=np.float64), (len(values), 1))
        inside = np.arange(values.shape[1])[None, :, None] < np.asarray(lengths)[:, None, None]
        means = _series_means(np.where(inside, values, np.nan))
        for ch, g in enumerate(self.repeat_groups):
            if g:
                group = np.searchsorted(np.asarray(g["edges"]), means[:, ch], side="right")
                shares[:, ch] = np.where(np.isnan(means[:, ch]), shares[:, ch], np.asarray(g["shares"])[group])
        return shares

    def hold(self, units: np.ndarray, runs: np.ndarray, rng: np.random.Generator,
             shares: np.ndarray | None = None) -> np.ndarray:
        """``units`` (n, steps, channels) drawn for the ids ``runs`` where a step with its previous step's id holds
        exactly the previous value with its channel's share (:meth:`fit_repeats`), or each series' own ``shares``
        (n, channels: :meth:`repeat_shares`); runs carry the first value on."""
        n, t, c = units.shape
        share = np.asarray(self.repeats) if shares is None else shares[:, None, :]
        held = np.zeros((n, t, c), dtype=bool)
        held[:, 1:] = (runs[:, 1:] == runs[:, :-1]) & (rng.random((n, t - 1, c)) < share)
        source = np.where(held, 0, np.arange(t)[None, :, None])
        source = np.maximum.accumulate(source, axis=1)  # the step each held value comes from: its run's first
        return np.take_along_axis(units, source, axis=1)

    def outside(self, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks of the finite values and of those beyond the edges."""
        finite = ~np.isnan(units)
        return finite, finite & ((units < self.edges[0]) | (units > self.edges[-1]))

    def assign(self, units: np.ndarray) -> np.ndarray:
        """Each value's bin; values outside the range go to the edge bins, NaN to bin 0."""
        edges = np.asarray(self.edges)
        finite = ~np.isnan(units)
        return np.clip(np.searchsorted(edges, np.where(finite, units, 0.0), side="right") - 1, 0, len(edges) - 2)

    def draw(self, k: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None) -> np.ndarray:
        """A value for each bin id in ``k`` (n, steps, channels): uniform inside the bin, or one of the bin's point
        masses of that channel, drawn in the proportions of the training values in the bin. In a channel whose
        training values are all point masses, a bin without any gets the point mass nearest its centre. A channel
        with a ``settle`` freedom then moves its values towards their neighbours (:func:`settle`); ``valid``
        (n, steps, channels; default all): the steps that hold a value (not a gap, not beyond a series' end)."""
        out, fixed, mass = self._draw_each(k, rng)
        if not any(self.settle):
            return out
        valid = np.ones(k.shape, dtype=bool) if valid is None else valid
        return self._settled(out, k, fixed, mass, valid, self.settle)

    def _settled(self, drawn: np.ndarray, k: np.ndarray, fixed: np.ndarray, mass: np.ndarray, valid: np.ndarray,
                 freedom: Sequence[float]) -> np.ndarray:
        """``drawn`` (:meth:`_draw_each`) settled (:func:`settle`), each point mass then moved to the point mass of
        its bin nearest to where it settled: a reading on a fixed resolution that moves slowly passes through the
        readings between, where drawn each on its own it jumps between any of its bin's."""
        edges = np.asarray(self.edges)
        out = settle(drawn, edges[k], edges[k + 1], valid & ~fixed, valid, freedom)
        for c, pm in enumerate(self.point_masses):
            hit = mass[..., c] & (freedom[c] > 0)
            if not hit.any():
                continue
            values = np.asarray(pm["values"], dtype=np.float64)
            value_bin = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
            b, at = k[..., c][hit], out[..., c][hit]
            first = np.searchsorted(value_bin, b, side="left")  # the bin's masses: values[first:last + 1]
            last = np.searchsorted(value_bin, b, side="right") - 1
            j = np.searchsorted(values, at)
            below, above = np.clip(j - 1, first, last), np.clip(j, first, last)
            nearer = np.where(np.abs(values[below] - at) <= np.abs(values[above] - at), below, above)
            out[..., c][hit] = values[nearer]
        return out

    def _draw_each(self, k: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`draw`'s values each drawn on its own; where they are fixed (the edge bins' tails, and in a channel
        of point masses alone the bins without any, which take the nearest), which :func:`settle` leaves where
        they are; and which are point masses."""
        edges = np.asarray(self.edges)
        out = rng.uniform(edges[k], edges[k + 1])
        fixed = (k == 0) | (k == len(edges) - 2)
        mass = np.zeros(k.shape, dtype=bool)
        for c, (low, high) in enumerate(self.tails):  # edge bins: a truncated exponential from the inner edge
            for b, mean, inner, sign in ((0, low, edges[1], -1.0), (len(edges) - 2, high, edges[-2], 1.0)):
                hit = k[..., c] == b
                if hit.any() and mean > 0:
                    width = edges[b + 1] - edges[b]
                    u = rng.uniform(size=int(hit.sum()))
                    out[..., c][hit] = inner + sign * -mean * np.log1p(-u * (1 - np.exp(-width / mean)))
        for c, pm in enumerate(self.point_masses):
            values = np.asarray(pm["values"], dtype=np.float64)
            if not len(values):
                continue
            n_bins = len(edges) - 1
            value_bin = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
            # entries: the point masses, then each bin's rest; laid out bin after bin (masses ascending, then the
            # rest) as one cumulative count
            entry_bin = np.r_[value_bin, np.arange(n_bins)]
            weights = np.r_[pm["counts"], pm["rest"]].astype(np.float64)
            order = np.lexsort((np.r_[np.zeros(len(values)), np.ones(n_bins)], entry_bin))
            cum = np.cumsum(weights[order])
            bin_total = np.bincount(entry_bin, weights=weights, minlength=n_bins)
            bin_start = np.cumsum(bin_total) - bin_total
            kc = k[..., c]
            draw = bin_start[kc] + rng.uniform(size=kc.shape) * bin_total[kc]
            pick = np.minimum(np.searchsorted(cum, draw, side="right"), len(cum) - 1)
            is_mass = (order[pick] < len(values)) & (bin_total[kc] > 0)
            out[..., c] = np.where(is_mass, values[np.minimum(order[pick], len(values) - 1)], out[..., c])
            mass[..., c] = is_mass
            if not any(pm["rest"]):  # every training value is a point mass: a bin it never had gets the nearest
                centre = (edges[kc] + edges[kc + 1]) / 2
                j = np.searchsorted(values, centre)
                below, above = values[np.maximum(j - 1, 0)], values[np.minimum(j, len(values) - 1)]
                nearest = np.where(centre - below <= above - centre, below, above)
                out[..., c] = np.where(bin_total[kc] > 0, out[..., c], nearest)
                fixed[..., c] |= bin_total[kc] == 0
        return out, fixed, mass

    def fit_settle(self, units: np.ndarray, bins: np.ndarray) -> None:
        """Per channel, the freedom of :func:`settle` (one of ``SETTLE_FREEDOMS``) with which the training values'
        own bins, decoded (and held, :meth:`hold`), come closest to the values' roughness: the median over series
        of the mean absolute first and of the mean absolute second difference, each relative to the series'
        standard deviation (the sum of the two log ratios). Values drawn each on its own inside narrow bins are
        rougher than smooth data (World Bank fertility rates: a median second difference 3x the data's); on
        rough data the freedom that fits is 0, and decoding stays as it was. Read on at most
        ``SETTLE_FIT_SERIES`` series (seeded) and ``SETTLE_FIT_VALUES`` values. Call after the point masses,
        the held-value shares and the tails, which decoding uses. The held-value shares (one per channel, not by
        level group) then become what the data holds beyond the repeats that the chosen decoding makes by itself
        (point masses of one bin repeat: a bin of one mass always does): (share - a) / (1 - a)."""
        rng = np.random.default_rng(0)
        n, t, c = units.shape
        if t < 3:
            self.settle = []
            return
        pick = np.sort(rng.choice(n, min(n, SETTLE_FIT_SERIES), replace=False))
        steps = min(t, max(3, SETTLE_FIT_VALUES // (len(pick) * c)))
        x, k = units[pick, :steps], bins[pick, :steps]
        valid = ~np.isnan(x)
        target = _roughness(x)
        drawn, fixed, mass = self._draw_each(k, rng)
        runs = np.where(valid, k, -1)
        same_bin = (k[:, 1:] == k[:, :-1]) & valid[:, 1:] & valid[:, :-1]
        errors, shares = [], []
        for freedom in SETTLE_FREEDOMS:
            y = self._settled(drawn, k, fixed, mass, valid, [freedom] * c)
            share = np.asarray(self.repeats, dtype=np.float64)
            if self.repeats:
                # point masses of one bin repeat by themselves: hold only as much more as the data holds
                with np.errstate(divide="ignore", invalid="ignore"):
                    alone = (same_bin & (y[:, 1:] == y[:, :-1])).sum(axis=(0, 1)) / same_bin.sum(axis=(0, 1))
                alone = np.nan_to_num(alone)
                share = np.where(alone < 1, np.clip((share - alone) / np.maximum(1 - alone, 1e-12), 0, 1), share)
                y = self.hold(y, runs, np.random.default_rng(1), np.tile(share, (len(y), 1)))
            shares.append(share)
            with np.errstate(divide="ignore", invalid="ignore"):
                errors.append(np.nansum(np.abs(np.log(_roughness(np.where(valid, y, np.nan)) / target)), axis=0))
        err = np.asarray(errors)  # (freedoms, channels); SETTLE_FREEDOMS[0] is 0: decoding as drawn
        best = np.argmin(err, axis=0)
        # noise-level gains (hourly load: 0.01-0.03) leave a channel as drawn
        best = np.where(err[0] - err[best, np.arange(c)] >= SETTLE_MIN_GAIN, best, 0)
        self.settle = [float(SETTLE_FREEDOMS[b]) for b in best]
        if self.repeats and not self.repeat_groups:
            self.repeats = [float(shares[b][ch]) for ch, b in enumerate(best)]
        if any(self.settle):
            log.info("decoding: values settle towards their neighbours within their bins (freedom %s per channel: "
                     "the data is smoother than values drawn each on its own)", [round(f, 2) for f in self.settle])
        else:
            self.settle = []

    def save_point_masses(self, path: Path) -> None:
        """Write the point masses (if any) to ``path`` (.npz): too many numbers for ``tsynth.json``."""
        arrays = {f"{key}_{c}": np.asarray(m[key]) for c, m in enumerate(self.point_masses)
                  for key in ("values", "counts", "rest")}
        np.savez_compressed(path, **arrays)  # type: ignore[arg-type]

    def load_point_masses(self, path: Path, n_channels: int) -> None:
        """Read what :meth:`save_point_masses` wrote."""
        with np.load(path) as z:
            self.point_masses = [{key: z[f"{key}_{c}"].tolist() for key in ("values", "counts", "rest")}
                                 for c in range(n_channels)]


@dataclass
class ConditionVocabulary:
    """The condition fields and their tokens: item id, categorical attributes, numeric attributes (binned),
    calendar position of the window start; each field's first token is its unknown value ``<field=?>``."""

    conditions: Sequence[str] | str = "auto"
    fields: list[ConditionField] = field(default_factory=list)

    def fit(self, data: SeriesSet, profiles: bool = False) -> None:
        """Fit the fields on the training set; ``profiles``: the profile class field last, where the data has
        profile classes (:func:`~tsynth.codecs.profiles.fit_profiles`)."""
        requested = self.conditions
        if requested == "auto":
            requested = [c for c in data.attributes.columns if c != "window_offset" and data.attributes[c].nunique() > 1]
            if data.start is not None:
                requested += [c for c in CALENDAR_FIELDS if len(np.unique(_calendar(data.start, c))) > 1]
        fields = []
        for name in requested:
            if name == PROFILE_FIELD:
                raise ConfigError(f"condition {name!r} is tsynth's own profile class field: rename that attribute")
            if name == "item_id":
                raw = pd.Series(data.item_id)
            elif name in data.attributes.columns:
                raw = data.attributes[name]
            elif name in CALENDAR_FIELDS:
                cal = self.calendar(data, name)
                if cal is None:
                    raise ConfigError(f"condition '{name}' needs start timestamps and a frequency; this data has none")
                raw = pd.Series(cal)
            else:
                raise ConfigError(f"unknown condition '{name}': not 'item_id', an attribute "
                                  f"({list(data.attributes.columns)}) or a calendar field ({list(CALENDAR_FIELDS)})")
            if pd.api.types.is_float_dtype(raw) and raw.nunique() > N_NUMERIC_ATTRIBUTE_BINS:
                edges = np.unique(np.quantile(raw.dropna(), np.linspace(0, 1, N_NUMERIC_ATTRIBUTE_BINS + 1)))
                fields.append(ConditionField(name, [f"bin{k}" for k in range(len(edges) - 1)], edges.tolist()))
            else:
                fields.append(ConditionField(name, sorted(raw.dropna().astype(str).unique().tolist())))
        centres, counts = fit_profiles(data) if profiles else ([], [])
        if centres:
            fields.append(ConditionField(PROFILE_FIELD, [str(k) for k in range(len(centres))], centres=centres,
                                         counts=counts))
        self.fields = fields

    @staticmethod
    def calendar(data: SeriesSet, name: str) -> np.ndarray | None:
        """Calendar field ``name`` of each series' start (None without start times)."""
        return None if data.start is None else _calendar(data.start, name)

    def offset(self, k: int, first: int) -> int:
        """Id of field k's unknown token when the fields' tokens start at id ``first``; its values follow."""
        return first + sum(len(f.values) + 1 for f in self.fields[:k])

    def tokens(self) -> list[str]:
        return [t for f in self.fields for t in f.tokens()]

    def ids(self, conditions: dict[str, Any], first: int) -> list[int]:
        """Token ids of the fields for one series; unseen values map to the unknown token."""
        ids = []
        for k, f in enumerate(self.fields):
            label = f.label(conditions.get(f.name)) if f.name in conditions else None
            if f.name in conditions and label is None:
                log.warning("condition %s=%r was never seen in training: sampling it unconditionally",
                            f.name, conditions[f.name])
            ids.append(self.offset(k, first) + (0 if label is None else 1 + f.values.index(label)))
        return ids

    def draw_profiles(self, conds: list[dict], rng: np.random.Generator) -> list[dict]:
        """``conds`` (one dict per series to draw) with a profile class added to every row that gives no field,
        at the training series' shares: systematic sampling over those rows (each class gets the floor or the
        ceiling of rows x its share, its expected count exactly), in random order. A model drawing the class token
        itself learns its frequencies from one token per training series and leans towards the most common class,
        which shifts the samples' mean day towards the common shape. Rows that give a field keep the model's
        draw, which depends on what they give."""
        f = self.fields[-1] if self.fields and self.fields[-1].hidden and self.fields[-1].counts else None
        free = [] if f is None else [i for i, c in enumerate(conds) if not any(g.name in c for g in self.fields)]
        if f is None or not free:
            return conds
        share = np.asarray(f.counts, dtype=np.float64) / sum(f.counts or [])
        classes = np.searchsorted(np.cumsum(share) * len(free), rng.uniform() + np.arange(len(free)), side="right")
        classes = rng.permutation(np.minimum(classes, len(share) - 1))
        out = list(conds)
        for i, k in zip(free, classes):
            out[i] = {**conds[i], f.name: f.values[int(k)]}
        return out

    def series_conditions(self, data: SeriesSet, freq: str | None = None) -> list[dict[str, Any]]:
        """The raw condition values of every series in ``data`` (``freq``: the training data's, which the profile
        class reads where ``data`` carries none)."""
        out: list[dict[str, Any]] = [dict() for _ in range(len(data))]
        for f in self.fields:
            if f.hidden:
                classes = profile_classes(data, f.centres or [], freq) if len(data) else None
                col = [None] * len(data) if classes is None else [str(int(k)) for k in classes]
            elif f.name == "item_id":
                col = list(data.item_id)
            elif f.name in CALENDAR_FIELDS:
                cal = self.calendar(data, f.name)
                col = [None] * len(data) if cal is None else list(cal)
            elif f.name in data.attributes.columns:
                col = list(data.attributes[f.name])
            else:
                col = [None] * len(data)
            for d, v in zip(out, col):
                d[f.name] = v
        return out

    def decode(self, tokens: np.ndarray, first: int, ids: list[str],
               rng: np.random.Generator) -> tuple[list[str], dict[str, list]]:
        """Item ids and attributes from the field tokens (n, fields): a field's raw values replace ``ids`` (item
        id) or become an attribute (calendar fields are neither: the start time carries them; nor is the profile
        class, the codec's own)."""
        attrs = {}
        for j, f in enumerate(self.fields):
            tok = tokens[:, j] - self.offset(j, first)
            labels = [None if t == 0 else f.values[t - 1] for t in tok]
            raw = [None if lab is None else f.raw(lab, rng) for lab in labels]
            if f.name == "item_id":
                ids = [r if r is not None else ids[i] for i, r in enumerate(raw)]
            elif f.name not in CALENDAR_FIELDS and not f.hidden:
                attrs[f.name] = raw
        return ids, attrs


class _Part:
    """An attribute of :class:`ValueCodec` that one of its parts holds (``codec.edges`` is ``codec.bins.edges``)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else getattr(getattr(obj, self.part), self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        setattr(getattr(obj, self.part), self.name, value)


class ValueCodec:
    """The token layout over three parts: :class:`Scaler` (``scaler``), :class:`Bins` (``bins``) and
    :class:`ConditionVocabulary` (``vocabulary``); see the module docstring. The parts' settings and fitted
    numbers read and write as the codec's own attributes (``codec.edges``, ``codec.loc``, ``codec.fields``...)."""

    scaling = _Part("scaler")
    loc = _Part("scaler")
    scale = _Part("scaler")
    level_edges = _Part("scaler")
    series_spread_edges = _Part("scaler")
    profile = _Part("scaler")
    n_bins = _Part("bins")
    binning = _Part("bins")
    edges = _Part("bins")
    point_mass_series = _Part("bins")
    point_masses = _Part("bins")
    tails = _Part("bins")
    repeats = _Part("bins")
    repeat_groups = _Part("bins")
    settle = _Part("bins")
    conditions = _Part("vocabulary")
    fields = _Part("vocabulary")

    def __init__(self, n_bins: int = 256, binning: str = "quantile", scaling: str = "auto",
                 conditions: Sequence[str] | str = "auto", channels: list[str] | None = None, length: int | None = None,
                 freq: str | None = None, loc: list[float] | None = None, scale: list[float] | None = None,
                 edges: list[float] | None = None, level_edges: list[float] | None = None,
                 fields: list[ConditionField] | None = None, value_range: tuple[float, float] | None = None,
                 profile: list[list[float]] | None = None, point_mass_series: int = POINT_MASS_SERIES,
                 point_masses: list[dict] | None = None, tails: list[list[float]] | None = None,
                 repeats: list[float] | None = None, standardised: int | None = None,
                 series_spread_edges: list[float] | None = None, repeat_groups: list[dict] | None = None,
                 settle: list[float] | None = None) -> None:
        self.scaler = Scaler(scaling, _list(loc), _list(scale), _list(level_edges), profile,
                             _list(series_spread_edges))
        self.bins = Bins(n_bins, binning, _list(edges), point_mass_series, _list(point_masses), _list(tails),
                         _list(repeats), _list(repeat_groups), _list(settle))
        self.vocabulary = ConditionVocabulary(conditions, _list(fields))
        self.channels: list[str] = _list(channels)
        self.length = length
        self.freq = freq
        self.value_range = value_range  # a public range of the values (DP): the bins span it
        # ddof where every training series is standardised on its own (samples are standardised alike), else None;
        # set by the backend (:func:`tsynth.data.standardised_ddof`; under DP a release,
        # :meth:`tsynth.privacy.DPEngine.release_standardised`)
        self.standardised = standardised

    def __repr__(self) -> str:
        return (f"ValueCodec(scaling={self.scaling!r}, n_bins={self.n_bins}, binning={self.binning!r}, "
                f"channels={self.channels}, fields={[f.name for f in self.fields]}, value_range={self.value_range})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ValueCodec):
            return NotImplemented
        return ((self.scaler, self.bins, self.vocabulary, self.channels, self.length, self.freq, self.value_range,
                 self.standardised)
                == (other.scaler, other.bins, other.vocabulary, other.channels, other.length, other.freq,
                    other.value_range, other.standardised))

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    # ------------------------------------------------------------------ fitting
    def fit(self, data: SeriesSet, edges: Sequence[float] | None = None, split_wide: bool = False,
            profiles: bool = False) -> "ValueCodec":
        """Fit scaler, bins and condition vocabulary on the training set. ``edges``: fixed bin edges (a
        prior's, in scaled units) instead of bins fitted to ``data``; with scaling 'none' and a
        ``value_range``, that range is mapped linearly onto the edges' range. ``split_wide``: quantile bins far
        wider than most are cut into pieces (:func:`split_wide_bins`). ``profiles``: a profile class field where
        the data has profile classes (never under DP: the classes are read from the private values)."""
        if len(data) == 0:
            raise DataError("cannot fit a codec on an empty data set")
        self.bins.check()
        self.channels = list(data.channels)
        self.freq = data.freq
        self.length = data.length if data.is_regular else None
        vals = data.values.astype(np.float64)
        self.scaler.fit(data, vals, edges, self.value_range)
        self.vocabulary.fit(data, profiles)
        units = self.to_units(vals)
        if edges is not None:
            self.edges = [float(e) for e in edges]
        else:
            self.bins.fit_edges(units[~np.isnan(vals)], self.value_range, split_wide)
        self.tails = []
        if self.binning == "quantile" and self.value_range is None:
            self.bins.fit_tails(units)
        self.point_masses, self.repeats, self.repeat_groups, self.settle = [], [], [], []
        if self.point_mass_series > 0:  # facts read from the values: none under DP
            bins = self.bins.assign(units)  # one pass over the training values for all three
            if self.scaling == "series":
                log.info("no point masses with per-series scaling (a value's units differ from series to series)")
            else:
                self.bins.fit_point_masses(units, bins, data.item_id)
            self.bins.fit_repeats(vals, bins, by_level=self.scaling == "series")
            self.bins.fit_settle(units, bins)  # decodes with the tails, point masses and held shares above
        return self

    # ------------------------------------------------------------------ vocabulary
    @property
    def n_channels(self) -> int:
        return len(self.channels)

    @property
    def value_offset(self) -> int:
        return len(SPECIAL_TOKENS)

    @property
    def n_value_tokens(self) -> int:
        return self.bins.n_tokens

    @property
    def level_offset(self) -> int:
        return self.value_offset + self.n_value_tokens

    @property
    def n_level_tokens(self) -> int:
        return self.scaler.n_level_tokens

    @property
    def n_spread_tokens(self) -> int:
        """Spread tokens (scaling 'series' onto a prior's bins); they follow the level tokens."""
        return self.scaler.n_spread_tokens

    def field_offset(self, k: int) -> int:
        """Id of field k's unknown token; its values follow."""
        return self.vocabulary.offset(k, self.level_offset + self.n_level_tokens + self.n_spread_tokens)

    @property
    def vocab(self) -> list[str]:
        toks = list(SPECIAL_TOKENS) + [f"<v_{k}>" for k in range(self.n_value_tokens)]
        toks += [f"<level_{k}>" for k in range(self.n_level_tokens)]
        toks += [f"<spread_{k}>" for k in range(self.n_spread_tokens)]
        return toks + self.vocabulary.tokens()

    @property
    def prefix_length(self) -> int:
        """Tokens before the first value: bos and one per slot of :meth:`prefix_slots`."""
        return 1 + len(self.prefix_slots())

    def prefix_slots(self) -> list[tuple[int, int]]:
        """The allowed token id range [lo, hi) of each prefix slot after <bos>: the condition fields (their values,
        not the unknown token), then the level and spread slots."""
        ranges = [(self.field_offset(k) + 1, self.field_offset(k) + 1 + len(f.values))
                  for k, f in enumerate(self.fields)]
        lo = self.level_offset
        if self.scaling == "series":
            ranges += [(lo, lo + self.n_level_tokens)] * self.n_channels
        if self.n_spread_tokens:
            ranges += [(lo + self.n_level_tokens, lo + self.n_level_tokens + self.n_spread_tokens)] * self.n_channels
        return ranges

    def sequence_length(self, steps: int) -> int:
        return self.prefix_length + steps * self.n_channels + 1

    # ------------------------------------------------------------------ encoding
    def to_units(self, vals: np.ndarray, levels: np.ndarray | None = None) -> np.ndarray:
        """Values (n, steps, channels) in the codec's units: scaled, less the per-step profile."""
        return self.scaler.to_units(vals, levels, self.n_channels)

    def set_profile(self, profile: np.ndarray, centred: bool) -> None:
        """Take a released per-step profile (steps x channels, in the codec's units) and re-map the public
        ``value_range`` onto the edges so that every value in it, less its step's profile, stays inside them.
        Without that, subtracting the profile pushed every value below its step's mean out of a range like
        [0, 1] and into the lowest bin (every value below its step's mean). ``centred`` (a prior's edges, fitted on
        standardised series): a value equal to its step's profile stays at the edges' centre, as the prior
        expects, and the scale grows only as far as covering the range needs; else (the uniform bins of a fit
        from scratch) the range less the profile is mapped onto the edges exactly. The profile is first clipped
        to the range (a mean of values in the range lies in it); all of it only post-processes the release."""
        if self.scaling != "none" or self.value_range is None:
            raise ConfigError("a per-step profile needs scaling 'none' and a public value_range (a DP fit)")
        self.scaler.set_profile(profile, centred, self.value_range, self.edges[0], self.edges[-1])

    def _profile(self, steps: int) -> np.ndarray:
        """The per-step offset for ``steps`` steps (zeros without a profile)."""
        return self.scaler.step_profile(steps, self.n_channels)

    def condition_ids(self, conditions: dict[str, Any], rng: np.random.Generator | None = None) -> list[int]:
        """Token ids of the condition fields for one series; unseen values map to the unknown token."""
        return self.vocabulary.ids(conditions, self.field_offset(0))

    def series_conditions(self, data: SeriesSet) -> list[dict[str, Any]]:
        """The raw condition values of every series in ``data``."""
        return self.vocabulary.series_conditions(data, self.freq)

    def draw_profiles(self, conds: list[dict], rng: np.random.Generator) -> list[dict]:
        """See :meth:`ConditionVocabulary.draw_profiles`."""
        return self.vocabulary.draw_profiles(conds, rng)

    def value_bins(self, data: SeriesSet, warn: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Each value's bin, shape (n, steps, channels) (meaningless beyond a series' length), and the series'
        levels (scaling 'series'; else None). Values outside the range go to the edge bins (``warn``: say how many)."""
        scaled, levels = self._scaled(data)
        finite, outside = self.bins.outside(scaled)
        if warn and outside.any():
            log.warning("%d values (%.2f%%) fall outside the codec's range [%.3g, %.3g] and were put in the edge bins",
                        int(outside.sum()), 100 * outside.sum() / finite.sum(), self.edges[0], self.edges[-1])
        return self.bins.assign(scaled), levels

    def outside_share(self, data: SeriesSet) -> float:
        """The share of ``data``'s values that fall outside the bins' range (encoding clips them to the edge bins)."""
        finite, outside = self.bins.outside(self._scaled(data)[0])
        return float(outside.sum() / finite.sum()) if finite.any() else 0.0

    def _scaled(self, data: SeriesSet) -> tuple[np.ndarray, np.ndarray | None]:
        """``data``'s values in the codec's units, and the series' levels (scaling 'series'; else None)."""
        if list(data.channels) != self.channels:
            raise DataError(f"data has channels {data.channels}, the codec was fitted on {self.channels}")
        vals = data.values.astype(np.float64)
        levels = self.scaler.levels(vals) if self.scaling == "series" else None
        return self.to_units(vals, levels), levels

    def encode(self, data: SeriesSet, warn: bool = True) -> np.ndarray:
        """Token ids, shape (n, max sequence length), padded with <pad> after <eos> (``warn``: say how many values
        fall outside the range)."""
        bins, levels = self.value_bins(data, warn)
        conds = self.series_conditions(data)
        out = np.full((len(data), self.sequence_length(data.length)), PAD, dtype=np.int64)
        level_ids = None if levels is None else self.level_offset + self.scaler.level_ids(levels)
        for i in range(len(data)):
            seq = [BOS] + self.condition_ids(conds[i])
            if level_ids is not None:
                seq += level_ids[i].tolist()
            n = int(data.lengths[i])
            seq += (self.value_offset + bins[i, :n].reshape(-1)).tolist() + [EOS]
            out[i, : len(seq)] = seq
        return out

    # ------------------------------------------------------------------ decoding
    def decode(self, prefix: np.ndarray, value_ids: np.ndarray, lengths: np.ndarray,
               rng: np.random.Generator, item_id: Sequence[str] | None = None,
               start=None, finish: bool = True, runs: np.ndarray | None = None) -> SeriesSet:
        """Series from generated tokens: ``prefix`` (n, prefix_length) and ``value_ids`` (n, steps*channels).
        ``finish``: standardise each series where the training series were (a caller that changes values after
        decoding calls :meth:`finish` itself). ``runs`` (n, steps, channels): the ids whose runs may hold a value
        exactly (:meth:`Bins.hold`), where they differ from the value ids (a missing reading breaks a run)."""
        n = len(value_ids)
        steps = value_ids.shape[1] // self.n_channels
        k = value_ids.reshape(n, steps, self.n_channels) - self.value_offset
        k = np.clip(k, 0, len(self.edges) - 2)
        valid = np.broadcast_to(np.arange(steps)[None, :, None] < np.asarray(lengths)[:, None, None], k.shape)
        if runs is not None:
            valid = valid & (runs[:, :steps] < self.n_value_tokens)
        units = self._bin_values(k, rng, valid)
        profile = self._profile(steps)
        levels = None

        def draw_levels() -> np.ndarray | None:
            return (self.scaler.draw_levels(prefix[:, 1 + len(self.fields):] - self.level_offset, rng)
                    if self.scaling == "series" else None)

        if self.repeats:
            shares = None
            if self.repeat_groups:  # each series' share by its level, read from its values as drawn
                levels = draw_levels()
                shares = self.bins.repeat_shares(self.scaler.from_units(units + profile, levels), lengths)
            units = self.bins.hold(units, k if runs is None else runs, rng, shares)
        if levels is None:
            levels = draw_levels()
        vals = self.scaler.from_units(units + profile, levels)
        vals = np.where(np.arange(steps)[None, :, None] < lengths[:, None, None], vals, np.nan)
        ids = list(item_id) if item_id is not None else [f"synthetic_{i}" for i in range(n)]
        ids, attrs = self.vocabulary.decode(prefix[:, 1:1 + len(self.fields)], self.field_offset(0), ids, rng)
        out = SeriesSet(vals.astype(np.float32), lengths, np.asarray(ids, dtype=object), self.channels, start=start,
                        freq=self.freq if start is not None else None,
                        attributes=pd.DataFrame(attrs) if attrs else None)
        return self.finish(out) if finish else out

    def finish(self, data: SeriesSet) -> SeriesSet:
        """``data`` (decoded samples) with each series standardised on its own where the training series were."""
        if self.standardised is not None:
            data.values[:] = standardise(data.values, self.standardised)
        return data

    def _bin_values(self, k: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None) -> np.ndarray:
        """A value for each bin id in ``k`` (n, steps, channels): see :meth:`Bins.draw`."""
        return self.bins.draw(k, rng, valid)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "n_bins": self.n_bins, "binning": self.binning, "scaling": self.scaling,
            "channels": self.channels, "length": self.length, "freq": self.freq,
            "loc": self.loc, "scale": self.scale, "edges": self.edges, "level_edges": self.level_edges,
            **({"series_spread_edges": self.series_spread_edges} if self.series_spread_edges else {}),
            "value_range": list(self.value_range) if self.value_range else None, "profile": self.profile,
            "point_mass_series": self.point_mass_series,  # the masses themselves: save_point_masses
            "tails": self.tails,
            "point_masses_per_channel": [len(m["values"]) for m in self.point_masses],
            "fields": [{"name": f.name, "values": f.values, "edges": f.edges,
                        **({"centres": f.centres, "counts": f.counts} if f.centres else {})} for f in self.fields],
            # only where it is set: codecs without it save as they did before it existed
            **({"standardised": self.standardised} if self.standardised is not None else {}),
            **({"repeats": self.repeats} if self.repeats else {}),
            **({"repeat_groups": self.repeat_groups} if self.repeat_groups else {}),
            **({"settle": self.settle} if self.settle else {}),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ValueCodec":
        fields = [ConditionField(**f) for f in d["fields"]]
        vr = tuple(d["value_range"]) if d.get("value_range") else None
        return cls(n_bins=d["n_bins"], binning=d["binning"], scaling=d["scaling"],
                   conditions=[f.name for f in fields if not f.hidden], channels=d["channels"], length=d["length"],
                   freq=d["freq"], loc=d["loc"], scale=d["scale"], edges=d["edges"],
                   level_edges=d["level_edges"], fields=fields, value_range=vr, profile=d.get("profile"),
                   point_mass_series=d.get("point_mass_series", 0), tails=d.get("tails", []),
                   repeats=[float(r) for r in d.get("repeats", [])], standardised=d.get("standardised"),
                   series_spread_edges=d.get("series_spread_edges"), repeat_groups=d.get("repeat_groups"),
                   settle=[float(f) for f in d.get("settle", [])])

    def save_point_masses(self, path: Path) -> None:
        """Write the point masses (if any) to ``path`` (.npz): too many numbers for ``tsynth.json``."""
        self.bins.save_point_masses(path)

    def load_point_masses(self, path: Path) -> None:
        """Read what :meth:`save_point_masses` wrote."""
        self.bins.load_point_masses(path, self.n_channels)

    def hf_tokenizer(self):
        """The vocabulary as a Hugging Face fast tokenizer (word level, whitespace separated)."""
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(self.vocab)}, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                       pad_token="<pad>", model_max_length=self.sequence_length(self.length or 0))


def _calendar(start: np.ndarray, name: str) -> np.ndarray:
    return getattr(pd.DatetimeIndex(start), CALENDAR_FIELDS[name]).to_numpy()


def _series_means(values: np.ndarray) -> np.ndarray:
    """The mean of each series' readings per channel (n, channels) from ``values`` (n, steps, channels); NaN for
    a channel without a reading."""
    count = (~np.isnan(values)).sum(axis=1)
    return np.where(count > 0, np.nansum(values, axis=1) / np.maximum(count, 1), np.nan)


def _list(x: list | None) -> list:
    """``x``, or a new empty list (the same object when given: as the dataclass fields were)."""
    return [] if x is None else x


def _log_edges(logs: np.ndarray) -> list[float]:
    """``N_LEVEL_BINS`` equal bins over the finite values of ``logs`` (log10 levels or spreads), padded by 5 %."""
    finite = logs[np.isfinite(logs)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    pad = max(0.05 * (hi - lo), 1e-3)
    return np.linspace(lo - pad, hi + pad, N_LEVEL_BINS + 1).tolist()


def choose_scaling(data: SeriesSet, span: float = 20.0) -> str:
    """'series' when the series differ in level as wholes: in the median channel, the non-zero per-series
    levels (mean absolute value) span more than ``span`` times from the 5th to the 95th percentile; else 'global'.

    Clients of a utility (kW from tens to thousands) are such a set. One channel that is zero in many series
    (a light switched off) or near zero after min-max scaling is not: judging every channel on its own let such
    a channel force per-series units onto all of them."""
    with np.errstate(invalid="ignore"):
        m = np.nanmean(np.abs(data.values.astype(np.float64)), axis=1)
    spans = []
    for c in range(data.n_channels):
        levels = m[:, c][m[:, c] > 0]
        lo, hi = np.percentile(levels, [5, 95]) if len(levels) else (0.0, 0.0)
        spans.append(hi / lo if lo > 0 else 1.0)
    return "series" if np.median(spans) > span else "global"
