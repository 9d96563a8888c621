"""Backend "openai": fine-tune a chat model through any OpenAI-compatible API, sample by chat completions.

It drives the official ``openai`` SDK, so it works with OpenAI's cloud and with ``tsynth serve``
(``base_url="http://127.0.0.1:8000/v1"``). The API key and base URL come from the options, or from
``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``; the key is never written anywhere.

* :func:`prepare_files` writes ``train.jsonl`` and ``validation.jsonl`` in the recipe's chat format
  (:class:`~tsynth.codecs.chat.ChatCodec`). The validation file holds **other items** than the
  training file (a split by item). The recipe itself validated on the test split of
  ``LeoTungAnh/electricity_hourly``, which holds the *same* 370 meters as its training split, so its
  validation loss measured memorisation rather than generalisation. The files are checked against
  OpenAI's rules (JSON lines of ``messages``, known roles and keys, an assistant turn, at least 10
  examples, every example under the model's token limit) and a token count and cost estimate are
  reported. Tokens are counted with ``tiktoken`` when it is installed, else with
  :func:`~tsynth.codecs.chat.approx_tokens` (a digit-aware estimate that errs slightly high).
* ``fit`` writes the files to a work directory, uploads them, creates the job and follows it
  (status, events, train/validation loss). The file and job ids go to ``openai_state.json`` in the
  work directory as soon as they exist: a rerun with the same work directory re-attaches to the job
  (a job that failed or was cancelled is replaced by a new one) and never uploads an unchanged file
  twice; ``job_id=`` re-attaches to any job.
* ``sample`` sends one chat completion per condition with ``n`` choices, at most ``concurrency`` at a
  time, with a ``json_schema`` response format that pins the array length (falling back to
  ``json_object``, then to none, when the server rejects it). Every answer is parsed and checked
  (JSON, key, length, finite numbers); unusable ones are asked for again, at most
  ``max_answer_retries`` rounds. 429 (honouring ``Retry-After``), 408/409 and 5xx answers and
  connection errors are retried by the SDK with backoff (``max_retries``); when they still fail,
  :class:`SampleError` says how many series were produced and carries them.
  ``last_sample_stats`` counts the answers: ``requested`` (asked for, retries included), ``parsed``
  (JSON with the right keys and finite numbers), ``right_length`` (usable), ``retried`` (asked for
  again) and ``dropped`` (series still missing at the end).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .common import series_from_answers, text_sample_inputs
from ..codecs.chat import AnswerError, ChatCodec, chat_tokens, check_example
from ..data import SeriesSet, atomic_write
from ..errors import ConfigError, DataError, TsynthError

log = logging.getLogger("tsynth")

DEFAULT_MODEL = "gpt-4o-mini-2024-07-18"
STATE_FILE = "openai_state.json"
MIN_EXAMPLES = 10
# Training context per example (OpenAI's fine-tuning guide); unknown models get the largest.
TOKEN_LIMITS = {"gpt-4o-mini-2024-07-18": 65536, "gpt-4o-2024-08-06": 65536, "gpt-3.5-turbo-0125": 16385,
                "gpt-3.5-turbo-1106": 16385, "gpt-3.5-turbo-0613": 4096, "gpt-3.5-turbo": 16385}
DEFAULT_TOKEN_LIMIT = 65536
# USD per 1M training tokens, OpenAI's price list of 2025: check https://openai.com/api/pricing before relying on it.
TRAINING_PRICES = {"gpt-4o-mini": 3.0, "gpt-4o": 25.0, "gpt-3.5-turbo": 8.0, "gpt-4.1-nano": 1.5,
                   "gpt-4.1-mini": 5.0, "gpt-4.1": 25.0, "davinci-002": 6.0, "babbage-002": 0.4}
TERMINAL = ("succeeded", "failed", "cancelled")


class SampleError(TsynthError):
    """Sampling stopped on an API failure; ``partial`` holds the series produced so far (or None)."""

    def __init__(self, message: str, partial: SeriesSet | None, stats: dict[str, int]) -> None:
        super().__init__(message)
        self.partial, self.stats = partial, stats


def keep_partial(error: SampleError, output: str | os.PathLike) -> Path | None:
    """Write the series a failed sampling produced to ``output`` (+ ``.validity.json``), if any; returns
    the path written, or None when there was nothing to keep."""
    if error.partial is None:
        return None
    path = error.partial.write(output)
    Path(str(path) + ".validity.json").write_text(json.dumps(error.stats, indent=2))
    log.info("kept the %d series produced in %s", len(error.partial), path)
    return path


class JobError(TsynthError):
    """The fine-tuning job failed or was cancelled."""


# ---------------------------------------------------------------------- tokens and files
def count_tokens(messages: Sequence[dict], model: str = DEFAULT_MODEL) -> int:
    """Tokens of one conversation for ``model``: with ``tiktoken`` when installed, else estimated."""
    try:
        import tiktoken
    except ImportError:
        return chat_tokens(messages)
    enc = tiktoken.get_encoding("cl100k_base" if model.startswith(("gpt-3.5", "gpt-4-")) else "o200k_base")
    return chat_tokens(messages, lambda s: len(enc.encode(s)))


def cookbook_epochs(n_examples: int) -> int:
    """OpenAI cookbook's default epochs: 3, more for small files, fewer for huge ones (1..25)."""
    if 3 * n_examples < 100:
        return min(25, 100 // max(n_examples, 1))
    if 3 * n_examples > 25000:
        return max(1, 25000 // n_examples)
    return 3


def training_price(model: str) -> float | None:
    """USD per 1M training tokens of the model family (None when unknown)."""
    name = model.split(":")[1] if model.startswith("ft:") else model
    for family in sorted(TRAINING_PRICES, key=len, reverse=True):
        if name.startswith(family):
            return TRAINING_PRICES[family]
    return None


@dataclass
class PreparedFiles:
    """What :func:`prepare_files` wrote and measured."""

    train_path: Path
    validation_path: Path | None
    n_train: int
    n_validation: int
    tokens: int
    max_example_tokens: int
    token_limit: int
    epochs: int
    cost_usd: float | None
    model: str

    def summary(self) -> str:
        lines = [f"train.jsonl: {self.n_train} examples -> {self.train_path}"]
        if self.validation_path is not None:
            lines.append(f"validation.jsonl: {self.n_validation} examples of other items -> {self.validation_path}")
        lines.append(f"tokens: {self.tokens:,} in the training file, at most {self.max_example_tokens:,} per example "
                     f"(limit {self.token_limit:,} for {self.model})")
        cost = "unknown price for this model" if self.cost_usd is None else f"about ${self.cost_usd:,.2f}"
        lines.append(f"estimated training cost at {self.epochs} epochs: {self.tokens * self.epochs:,} tokens, {cost}")
        return "\n".join(lines)


def prepare_files(data: SeriesSet, out_dir: str | os.PathLike, codec: ChatCodec | None = None,
                  validation_fraction: float = 0.1, seed: int = 0, model: str = DEFAULT_MODEL,
                  n_epochs: int | str = "auto") -> PreparedFiles:
    """Write ``train.jsonl`` and ``validation.jsonl`` (other items) and check them against OpenAI's rules."""
    codec = codec or ChatCodec()
    codec.fit(data)
    train, valid = data, None
    n_items = len(pd.unique(data.item_id))
    if validation_fraction > 0 and n_items >= 2:
        train, valid = data.split(validation_fraction, seed=seed)
    elif validation_fraction > 0:
        log.warning("one item only: no validation file (it must hold other items than the training file)")
    out = Path(out_dir)
    limit = next((v for k, v in TOKEN_LIMITS.items() if model.startswith(k)), DEFAULT_TOKEN_LIMIT)
    counts = []
    paths = {}
    texts = {}
    if len(train) < MIN_EXAMPLES:
        raise DataError(f"train.jsonl: {len(train)} examples; OpenAI requires at least {MIN_EXAMPLES}")
    for name, part in (("train.jsonl", train), ("validation.jsonl", valid)):
        if part is None:
            continue
        lines = [json.dumps(ex) for ex in codec.examples(part)]
        tokens = [count_tokens(check_example(line, f"{name}: line {i}"), model) for i, line in enumerate(lines, 1)]
        too_long = [i for i, t in enumerate(tokens, 1) if t > limit]
        if too_long:
            raise DataError(f"{name}: {len(too_long)} example(s) exceed the {limit:,}-token limit of {model} "
                            f"(first: line {too_long[0]}, {tokens[too_long[0] - 1]:,} tokens); cut shorter windows "
                            "(--length) or use fewer decimals")
        texts[name] = "\n".join(lines) + "\n"
        counts.append(tokens)
    for name, text in texts.items():  # written only once both files passed every check
        paths[name] = atomic_write(out / name, lambda p, text=text: p.write_text(text, "utf-8"))
    epochs = cookbook_epochs(len(counts[0])) if n_epochs == "auto" else int(n_epochs)
    price = training_price(model)
    total = sum(counts[0])
    return PreparedFiles(paths["train.jsonl"], paths.get("validation.jsonl"), len(counts[0]),
                         len(counts[1]) if len(counts) > 1 else 0, total, max(counts[0]), limit, epochs,
                         None if price is None else total * epochs * price / 1e6, model)


# ---------------------------------------------------------------------- the API
def make_client(api_key: str | None, base_url: str | None, max_retries: int, timeout: float, http_client=None):
    """An ``openai.OpenAI`` client; the key and URL default to ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``."""
    from openai import OpenAI

    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ConfigError("no API key: set OPENAI_API_KEY or pass --api-key (any value works for a tsynth serve "
                          "started without --api-key)")
    return OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                  max_retries=max_retries, timeout=timeout, http_client=http_client)


def run_requests(calls: Sequence[Callable[[], Any]], concurrency: int, desc: str, progress: bool
                 ) -> tuple[list[Any], Exception | None]:
    """Run API calls with at most ``concurrency`` at once; stop starting new ones after the first API
    failure. Returns the results (None where a call did not succeed) and that failure."""
    from openai import APIError
    from tqdm.auto import tqdm

    results: list[Any] = [None] * len(calls)
    failure = None
    with ThreadPoolExecutor(max(1, concurrency)) as pool, tqdm(total=len(calls), desc=desc, unit="request",
                                                              disable=not progress, leave=False) as bar:
        futures = {pool.submit(c): i for i, c in enumerate(calls)}
        for f in as_completed(futures):
            bar.update()
            if f.cancelled():
                continue
            try:
                results[futures[f]] = f.result()
            except APIError as e:
                failure = failure or e
                for g in futures:
                    g.cancel()
    return results, failure


@dataclass
class OpenAIOptions:
    """Fine-tuning and sampling settings (all recorded in ``tsynth.json``)."""

    model: str = DEFAULT_MODEL
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    suffix: str | None = None
    seed: int | None = None
    base_url: str | None = None
    validation_fraction: float = 0.1
    system_prompt: str | None = None
    user_fields: Sequence[str] = ("item_id",)
    series_key: str = "consumption"
    decimals: int = 3
    temperature: float = 1.1
    choices_per_request: int = 8
    concurrency: int = 4
    max_answer_retries: int = 3
    response_format: str = "json_schema"
    max_retries: int = 5
    timeout: float = 600.0
    poll_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.response_format not in ("json_schema", "json_object", "none"):
            raise ConfigError(f"response_format must be json_schema, json_object or none, got {self.response_format!r}")
        if self.choices_per_request < 1 or self.concurrency < 1 or self.max_answer_retries < 0:
            raise ConfigError("choices_per_request and concurrency must be >= 1, max_answer_retries >= 0")
        self.user_fields = list(self.user_fields)


class OpenAIBackend:
    """See the module docstring."""

    name = "openai"

    def __init__(self, api_key: str | None = None, http_client=None, **options: Any) -> None:
        known = {f.name for f in fields(OpenAIOptions)}
        unknown = set(options) - known
        if unknown:
            raise ConfigError(f"unknown option(s) for the openai backend: {', '.join(sorted(unknown))}")
        self.options = OpenAIOptions(**options)
        self.api_key, self.http_client = api_key, http_client
        self.codec: ChatCodec | None = None
        self.model_id: str | None = None
        self.job_id: str | None = None
        self.files: dict[str, str] = {}
        self.conditions: list[dict[str, Any]] = []
        self.training: dict[str, Any] = {}
        self.last_sample_stats: dict[str, int] | None = None
        self._format = self.options.response_format
        self._say: Callable[[str], None] = log.info

    def client(self):
        o = self.options
        return make_client(self.api_key, o.base_url, o.max_retries, o.timeout, self.http_client)

    # ------------------------------------------------------------------ fit
    def fit(self, train: SeriesSet, work_dir: str | os.PathLike | None = None, job_id: str | None = None,
            progress: bool = True, notify: Callable[[str], None] | None = None) -> None:
        """Prepare and upload the files, create (or re-attach to) the job, follow it to the end.

        ``notify`` receives each message for the user (files written, uploads, job id, the fine-tuned
        model); without it they go to the ``tsynth`` logger at INFO level."""
        o = self.options
        self._say = notify or log.info
        prompt: dict[str, Any] = {"system_prompt": o.system_prompt} if o.system_prompt else {}
        self.codec = ChatCodec(**prompt, user_fields=list(o.user_fields), series_key=o.series_key,
                               decimals=o.decimals).fit(train)
        self.conditions = list({json.dumps(c, sort_keys=True): c for c in self.codec.conditions(train)}.values())
        work = Path(work_dir) if work_dir else None
        state = _read_state(work) if work else {}
        client = self.client()
        job = None
        if job_id or state.get("job_id"):
            job = client.fine_tuning.jobs.retrieve(job_id or state["job_id"])
            if not job_id and job.status in ("failed", "cancelled"):
                log.warning("job %s had %s; starting a new one", job.id, job.status)
                job = None
            else:
                self._say(f"re-attached to fine-tuning job {job.id} ({job.status})")
        if job is None:
            work = work or Path(tempfile.mkdtemp(prefix="tsynth-openai-"))
            prepared = prepare_files(train, work, self.codec, o.validation_fraction, o.seed or 0, o.model, o.n_epochs)
            self._say(prepared.summary())
            files = {name: self._upload(client, path, state, work, progress)
                     for name, path in (("train", prepared.train_path), ("validation", prepared.validation_path))
                     if path is not None}
            hp = {"n_epochs": o.n_epochs, "batch_size": o.batch_size, "learning_rate_multiplier": o.learning_rate_multiplier}
            job = client.fine_tuning.jobs.create(
                model=o.model, training_file=files["train"], validation_file=files.get("validation"),
                method={"type": "supervised", "supervised": {"hyperparameters": hp}},
                **({"suffix": o.suffix} if o.suffix else {}), **({"seed": o.seed} if o.seed is not None else {}))
            self._say(f"created fine-tuning job {job.id}")
        if work is not None and state.get("job_id") != job.id:
            state["job_id"] = job.id
            _write_state(work, state)
        self.job_id = job.id
        self.files = {"train": job.training_file, "validation": job.validation_file}
        job = self._follow(client, job, progress)
        if job.status != "succeeded":
            err = job.error.message if job.error is not None and job.error.message else "no reason given"
            raise JobError(f"fine-tuning job {job.id} {job.status}: {err}")
        self.model_id = job.fine_tuned_model
        self.training = {"job_id": job.id, "trained_tokens": job.trained_tokens,
                         "hyperparameters": job.hyperparameters.model_dump() if job.hyperparameters else None,
                         **_result_metrics(client, job.result_files)}
        self._say(f"fine-tuned model: {self.model_id}")

    def _upload(self, client, path: Path, state: dict, work: Path, progress: bool) -> str:
        """The id of ``path`` on the server: reused when this exact content was uploaded before."""
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        known = state.setdefault("files", {}).get(path.name)
        if known and known["sha256"] == digest:
            return known["id"]
        with open(path, "rb") as fh:
            f = client.files.create(file=fh, purpose="fine-tune")
        state["files"][path.name] = {"id": f.id, "sha256": digest}
        state.pop("job_id", None)
        _write_state(work, state)
        self._say(f"uploaded {path.name} as {f.id}")
        return f.id

    def _follow(self, client, job, progress: bool):
        """Poll the job until it ends, showing status, events and losses."""
        from tqdm.auto import tqdm

        seen: set[str] = set()
        bar = tqdm(desc=job.status, unit="step", disable=not progress)
        try:
            while True:
                new = []
                for ev in client.fine_tuning.jobs.list_events(job.id, limit=100):
                    if ev.id in seen:
                        break
                    new.append(ev)
                for ev in reversed(new):
                    seen.add(ev.id)
                    data = ev.data or {}
                    if ev.type == "metrics" and "step" in data:
                        bar.total = data.get("total_steps") or bar.total
                        bar.n = int(data["step"])
                        bar.set_postfix({k: f"{data[k]:.4f}" for k in ("train_loss", "valid_loss") if data.get(k) is not None})
                    elif progress:
                        bar.write(f"[{ev.level}] {ev.message}")
                bar.set_description(job.status)
                if job.status in TERMINAL:
                    return job
                time.sleep(self.options.poll_interval)
                job = client.fine_tuning.jobs.retrieve(job.id)
        except KeyboardInterrupt:
            self._say(f"\ninterrupted: job {job.id} goes on at the server; rerun the same command, or pass "
                      f"--job-id {job.id}, to re-attach (nothing is uploaded again)")
            raise
        finally:
            bar.close()

    # ------------------------------------------------------------------ sample
    def sample(self, n: int, conditions: Sequence[dict] | None = None, temperature: float | None = None,
               top_p: float = 1.0, seed: int | None = 0, length: int | None = None, progress: bool = False) -> SeriesSet:
        """Draw ``n`` series through chat completions (see the module docstring)."""
        if self.model_id is None or self.codec is None:
            raise ConfigError("the model is not fitted")
        temperature = self.options.temperature if temperature is None else temperature
        length, rng, conds = text_sample_inputs(self.codec, n, conditions, self.conditions, temperature, top_p, seed,
                                                length)
        client = self.client()
        groups: dict[str, list[int]] = {}
        for i, c in enumerate(conds):
            groups.setdefault(json.dumps(c, sort_keys=True), []).append(i)
        got: dict[int, np.ndarray] = {}
        stats = dict.fromkeys(("requested", "parsed", "right_length", "retried", "dropped"), 0)
        failure = None
        for round_ in range(self.options.max_answer_retries + 1):
            todo = [(key, [i for i in idx if i not in got]) for key, idx in groups.items()]
            todo = [(key, idx) for key, idx in todo if idx]
            if not todo or failure is not None:
                break
            missing = sum(len(idx) for _, idx in todo)
            stats["requested"] += missing
            stats["retried"] += missing if round_ else 0
            calls, slots = [], []
            k_max = self.options.choices_per_request
            for key, idx in todo:
                for lo in range(0, len(idx), k_max):
                    part = idx[lo: lo + k_max]
                    calls.append(self._request_fn(client, conds[part[0]], len(part), temperature, top_p,
                                                  int(rng.integers(2**31)), length))
                    slots.append(part)
            answers, failure = run_requests(calls, self.options.concurrency, "sampling", progress)
            for part, texts in zip(slots, answers):
                for i, text in zip(part, texts or []):
                    self._check(text, length, i, got, stats)
        stats["dropped"] = n - len(got)
        self.last_sample_stats = stats
        order = sorted(got)
        out = series_from_answers([got[i] for i in order], [conds[i] for i in order], self.codec.channels) if got else None
        if failure is not None:
            raise SampleError(f"the API failed ({failure}); {len(got)} of {n} series were produced", out, stats)
        if out is None:
            raise SampleError(f"no usable answer in {stats['requested']} (see last_sample_stats)", None, stats)
        if stats["dropped"]:
            log.warning("%d of %d series dropped: no usable answer after %d retry rounds", stats["dropped"], n,
                        self.options.max_answer_retries)
        return out

    @property
    def fitted_codec(self) -> ChatCodec:
        """The codec of a fitted (or loaded) model."""
        if self.codec is None:
            raise ConfigError("the model is not fitted")
        return self.codec

    def _check(self, text: str | None, length: int, i: int, got: dict, stats: dict) -> None:
        try:
            got[i] = self.fitted_codec.parse(text, length)
            stats["parsed"] += 1
            stats["right_length"] += 1
        except AnswerError as e:
            stats["parsed"] += e.reason == "wrong_length"
            log.debug("unusable answer (%s): %s", e.reason, e)

    def _request_fn(self, client, cond: dict, k: int, temperature: float, top_p: float, seed: int, length: int):
        """A call asking for ``k`` answers under ``cond``; it returns their texts."""
        codec = self.fitted_codec
        budget = length * len(codec.keys) * (codec.decimals + 4) + 20

        def call() -> list[str | None]:
            from openai import BadRequestError

            while True:
                fmt = self._format
                extra: dict[str, Any] = {}
                if fmt == "json_schema":
                    extra["response_format"] = codec.response_format(length)
                elif fmt == "json_object":
                    extra["response_format"] = {"type": "json_object"}
                if top_p != 1.0:
                    extra["top_p"] = top_p
                try:
                    resp = client.chat.completions.create(model=self.model_id, messages=codec.prompt(cond), n=k,
                                                          temperature=temperature, seed=seed,
                                                          max_completion_tokens=budget, **extra)
                    return [c.message.content for c in sorted(resp.choices, key=lambda c: c.index)]
                except BadRequestError as e:
                    if fmt == "none" or "response_format" not in f"{e.param} {e.message}":
                        raise
                    self._format = "json_object" if fmt == "json_schema" else "none"
                    log.warning("the server rejects response_format %s (%s); using %s", fmt, e.message, self._format)

        return call

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        """What ``tsynth.json`` records: options, codec, model/job/file ids, conditions (never the key)."""
        return {"options": asdict(self.options), "codec": self.codec.to_dict() if self.codec else None,
                "model_id": self.model_id, "job_id": self.job_id, "files": self.files,
                "conditions": self.conditions, "training": self.training,
                "base_url": self.options.base_url or os.environ.get("OPENAI_BASE_URL")}

    def save(self, directory: Path) -> None:
        """Nothing beyond ``tsynth.json``: the model lives at the API."""

    @classmethod
    def load(cls, directory: Path, state: dict[str, Any]) -> "OpenAIBackend":
        self = cls(**{**state["options"], "base_url": state.get("base_url")})
        self.codec = ChatCodec.from_dict(state["codec"])
        self.model_id, self.job_id, self.files = state["model_id"], state.get("job_id"), state.get("files", {})
        self.conditions, self.training = state.get("conditions", []), state.get("training", {})
        return self


def _read_state(work: Path) -> dict[str, Any]:
    p = work / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def _write_state(work: Path, state: dict[str, Any]) -> None:
    atomic_write(work / STATE_FILE, lambda p: p.write_text(json.dumps(state, indent=2)))


def _result_metrics(client, result_files: Sequence[str]) -> dict[str, Any]:
    """Steps and losses from the job's ``step_metrics.csv`` (base64 at OpenAI, raw elsewhere)."""
    if not result_files:
        return {}
    raw = client.files.content(result_files[0]).read()
    try:
        raw = base64.b64decode(raw, validate=True)
    except ValueError:
        pass
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", "replace"))))
    num = lambda r, k: float(r[k]) if r.get(k) not in (None, "") else None  # noqa: E731
    return {"steps": [int(float(r["step"])) for r in rows if r.get("step")],
            "train_loss": [num(r, "train_loss") for r in rows], "valid_loss": [num(r, "valid_loss") for r in rows]}
