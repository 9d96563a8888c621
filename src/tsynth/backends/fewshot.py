"""Backend "fewshot": the recipe's baseline -- prompt a chat model with example rows, no training.

Each request shows ``shots`` training series, drawn at random, as JSON arrays one per line (values
rounded as the recipe does), under the recipe's system prompt::

    You are a synthetic data generator,
    you generate 10 rows similar to the user examples, but not equal.
    You output the rows without more comment.

and reads the answer back one row per line. Rows that are not a JSON array of finite numbers are
*malformed*, rows of the wrong length *short* or *long*, and rows equal to a training series *copies*
(kept: they are what the baseline produces, and the privacy figures should see them); all are counted
in ``last_row_counts``. ``last_sample_stats`` holds the validity counts the evaluation takes, over
rows: ``requested``, ``parsed``, ``right_length``, ``retried``, ``dropped``. Missing rows are asked
for again, at most ``max_answer_retries`` rounds. Univariate series only, no conditions.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..codecs.chat import round_values
from ..data import SeriesSet, atomic_write
from ..errors import ConfigError, DataError
from .common import check_sample_request
from .openai import SampleError, make_client, run_requests

log = logging.getLogger("tsynth")

DEFAULT_MODEL = "gpt-4-turbo"
SYSTEM_PROMPT = ("You are a synthetic data generator,\nyou generate {rows} rows similar to the user examples, "
                 "but not equal.\nYou output the rows without more comment.")
EXAMPLES_FILE = "examples.jsonl"


@dataclass
class FewShotOptions:
    """Prompt and request settings (the recipe's: gpt-4-turbo, 10 shots, temperature 0.8, 4096 tokens)."""

    model: str = DEFAULT_MODEL
    shots: int = 10
    rows_per_request: int | None = None
    temperature: float = 0.8
    max_tokens: int = 4096
    decimals: int = 3
    concurrency: int = 4
    max_answer_retries: int = 3
    max_retries: int = 5
    timeout: float = 600.0
    base_url: str | None = None

    def __post_init__(self) -> None:
        if self.shots < 1 or (self.rows_per_request is not None and self.rows_per_request < 1):
            raise ConfigError("shots and rows_per_request must be at least 1")


class FewShotBackend:
    """See the module docstring."""

    name = "fewshot"

    def __init__(self, api_key: str | None = None, http_client=None, **options: Any) -> None:
        unknown = set(options) - {f.name for f in fields(FewShotOptions)}
        if unknown:
            raise ConfigError(f"unknown option(s) for the fewshot backend: {', '.join(sorted(unknown))}")
        self.options = FewShotOptions(**options)
        self.api_key, self.http_client = api_key, http_client
        self.examples: list[list[float]] = []
        self.length: int | None = None
        self.channel = "value"
        self.last_sample_stats: dict[str, int] | None = None
        self.last_row_counts: dict[str, int] | None = None

    def fit(self, train: SeriesSet, progress: bool = False) -> None:
        """Keep the training series (rounded) to draw examples from."""
        if train.n_channels != 1:
            raise DataError(f"the few-shot baseline takes univariate series; this data has channels {train.channels}")
        if len(train) < self.options.shots:
            raise DataError(f"{len(train)} series are fewer than the {self.options.shots} shots per prompt")
        self.examples = [round_values(train.series(i)[:, 0], self.options.decimals) for i in range(len(train))]
        self.length = train.length if train.is_regular else None
        self.channel = train.channels[0]

    def prompt(self, rows: Sequence[Sequence[float]]) -> list[dict[str, str]]:
        """The recipe's messages for example ``rows``."""
        k = self.options.rows_per_request or self.options.shots
        return [{"role": "system", "content": SYSTEM_PROMPT.format(rows=k)},
                {"role": "user", "content": "\n".join(json.dumps(list(r)) for r in rows)}]

    def sample(self, n: int, conditions: Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, length: int | None = None, progress: bool = False) -> SeriesSet:
        """Ask for rows until ``n`` usable ones came back (or the retry rounds are spent)."""
        if not self.examples:
            raise ConfigError("call fit() with the example series first")
        if conditions is not None:
            raise ConfigError("the few-shot baseline takes no conditions")
        check_sample_request(n)
        length = length or self.length
        if not length:
            raise ConfigError("the examples have different lengths: pass length=")
        o = self.options
        per = o.rows_per_request or o.shots
        temperature = o.temperature if temperature is None else temperature
        client = make_client(self.api_key, o.base_url, o.max_retries, o.timeout, self.http_client)
        rng = np.random.default_rng(seed)
        train_rows = {tuple(r) for r in self.examples}
        rows: list[list[float]] = []
        stats = dict.fromkeys(("requested", "parsed", "right_length", "retried", "dropped"), 0)
        counts = dict.fromkeys(("copies", "malformed", "short", "long"), 0)
        failure = None
        for round_ in range(o.max_answer_retries + 1):
            if len(rows) >= n or failure is not None:
                break
            n_requests = math.ceil((n - len(rows)) / per)
            stats["requested"] += n_requests * per
            stats["retried"] += n_requests * per if round_ else 0
            calls = []
            for _ in range(n_requests):
                shots = [self.examples[k] for k in rng.choice(len(self.examples), o.shots, replace=False)]
                calls.append(self._request_fn(client, shots, temperature, top_p, int(rng.integers(2**31))))
            answers, failure = run_requests(calls, o.concurrency, "few-shot prompts", progress)
            for text in answers:
                for line in [ln for ln in (text or "").splitlines() if ln.strip()][:per]:
                    row = _row(line)
                    if row is None:
                        counts["malformed"] += 1
                        continue
                    stats["parsed"] += 1
                    if len(row) != length:
                        counts["short" if len(row) < length else "long"] += 1
                        continue
                    stats["right_length"] += 1
                    counts["copies"] += tuple(row) in train_rows
                    rows.append(row)
        rows = rows[:n]
        stats["dropped"] = n - len(rows)
        self.last_sample_stats, self.last_row_counts = stats, counts
        out = SeriesSet.from_arrays([np.asarray(r) for r in rows], [f"fewshot_{i}" for i in range(len(rows))], [self.channel],
                                    source="few-shot answers") if rows else None
        if failure is not None:
            raise SampleError(f"the API failed ({failure}); {len(rows)} of {n} series were produced", out, stats)
        if out is None:
            raise SampleError(f"no usable row in {stats['requested']} requested (see last_row_counts)", None, stats)
        return out

    def _request_fn(self, client, shots: list[list[float]], temperature: float, top_p: float, seed: int):
        o = self.options
        extra = {"top_p": top_p} if top_p != 1.0 else {}

        def call() -> str | None:
            resp = client.chat.completions.create(model=o.model, messages=self.prompt(shots), temperature=temperature,
                                                  max_tokens=o.max_tokens, seed=seed, **extra)
            return resp.choices[0].message.content if resp.choices else None

        return call

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        return {"options": asdict(self.options), "length": self.length, "channel": self.channel,
                "n_examples": len(self.examples)}

    def save(self, directory: Path) -> None:
        """The example rows, one JSON array per line."""
        atomic_write(directory / EXAMPLES_FILE,
                     lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in self.examples)))

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> "FewShotBackend":
        self = cls(**state["options"])
        self.length, self.channel = state["length"], state["channel"]
        self.examples = [json.loads(line) for line in (directory / EXAMPLES_FILE).read_text().splitlines() if line]
        return self


def _row(line: str) -> list[float] | None:
    """A JSON array of finite numbers, or None."""
    try:
        row = json.loads(line.strip().rstrip(","))
    except json.JSONDecodeError:
        return None
    if not isinstance(row, list) or not row or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in row):
        return None
    return [float(x) for x in row] if all(math.isfinite(x) for x in row) else None
