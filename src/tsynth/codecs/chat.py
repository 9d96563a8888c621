"""Chat/JSON text codec: the recipe's fine-tuning format for OpenAI-style chat models.

One series is one conversation::

    system     Given a meter ID, you return a series of hourly consumptions given as a json string.
    user       {"item_id": "MT_001"}
    assistant  {"consumption": [-1.507, -1.19, ...]}

The user turn is the JSON object of the conditions (item id and attributes, configurable), the
assistant turn holds the values rounded to ``decimals`` (the recipe: ``round(1000*x)/1000``) under
``series_key``, or one key per channel (the channel names) for multivariate data.

``style`` picks how the numbers are written (all three are JSON, parsed back to the same values):

* ``"recipe"``: the recipe's exact text, ``{"consumption": [-1.507, 0.25]}`` (``json.dumps``); what the
  OpenAI path sends. About 7 tokens a value with SmolLM2's tokenizer on z-scored load.
* ``"compact"``: no spaces and no trailing zeros, ``{"consumption":[-1.507,0.25]}``.
* ``"integer"``: no spaces, each value times ``10**decimals`` as an integer, ``{"consumption":[-1507,250]}``
  (about 4.3 tokens a value on the same data: the decimal point and the space are separate tokens in
  most tokenizers). The open-model default.

With ``"compact"`` and ``"integer"``, :meth:`ChatCodec.fit` lowers ``decimals`` to the data's own
resolution (values recorded in steps of 0.25 need 2 decimals, whole numbers none), so the decoded
series equal the data rounded to the requested decimals: nothing the data had is lost.

:meth:`ChatCodec.examples` writes conversations; :meth:`ChatCodec.from_examples` reads a training
file back into conditions and a SeriesSet (with line-numbered errors); :meth:`ChatCodec.parse`
checks a model's answer and says why it is unusable; :meth:`ChatCodec.response_format` is the
``response_format`` JSON schema that pins the array length.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..data import SeriesSet
from ..errors import DataError

DEFAULT_SYSTEM_PROMPT = "Given a meter ID, you return a series of hourly consumptions given as a json string."
CHAT_ROLES = ("system", "user", "assistant", "tool", "function", "developer")
MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id", "refusal")
_TOKEN_PIECE = re.compile(r"\d{1,3}|[^\W\d_]+|\S")
STYLES = ("recipe", "compact", "integer")


class AnswerError(DataError):
    """A model's answer is unusable; ``reason`` is one of ``not_json``, ``wrong_key``,
    ``wrong_length`` or ``non_finite``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def round_values(values: Sequence[float] | np.ndarray, decimals: int) -> list[float]:
    """Values rounded as the recipe does, ``round(1000*x)/1000`` for 3 decimals, as a JSON-ready list."""
    scale = 10.0 ** decimals
    return [round(x * scale) / scale for x in np.asarray(values, dtype=np.float64).tolist()]


def approx_tokens(text: str) -> int:
    """Token count without a tokenizer: digit runs count one token per 3 digits, letter runs one per 4
    letters, every other visible character one (white space is free).

    Used where ``tiktoken`` is unavailable. Plain characters/4 under-counts number-heavy JSON about
    2.5-fold (``-1.507, `` is ~5 tokens in OpenAI's tokenizers, not 2); this rule follows how those
    tokenizers split numbers and errs slightly high.
    """
    return sum(_piece_tokens(p) for p in _TOKEN_PIECE.findall(text))


def _piece_tokens(piece: str) -> int:
    return math.ceil(len(piece) / 4) if piece[0].isalpha() else 1


def truncate_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that :func:`approx_tokens` counts as at most ``limit`` tokens."""
    used = 0
    for m in _TOKEN_PIECE.finditer(text):
        used += _piece_tokens(m.group())
        if used > limit:
            return text[: m.start()]
    return text


def chat_tokens(messages: Sequence[dict], text_tokens: Callable[[str], int] = approx_tokens) -> int:
    """Tokens of a conversation as OpenAI's cookbook counts them: 3 per message, its text (counted by
    ``text_tokens``), 1 per name, 3 for the reply primer."""
    n = 3
    for m in messages:
        n += 3 + text_tokens(message_text(m.get("content"))) + (1 if m.get("name") else 0)
    return n


@dataclass
class ChatCodec:
    """Settings of the chat format; ``channels`` and ``length`` come from the data (``fit``)."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    user_fields: list[str] = field(default_factory=lambda: ["item_id"])
    series_key: str = "consumption"
    decimals: int = 3
    channels: list[str] = field(default_factory=list)
    length: int | None = None
    style: str = "recipe"

    def __post_init__(self) -> None:
        if not 0 <= self.decimals <= 12:
            raise DataError(f"decimals must lie in 0..12, got {self.decimals}")
        if not self.series_key:
            raise DataError("the series key must not be empty")
        if self.style not in STYLES:
            raise DataError(f"the text style must be one of {', '.join(STYLES)}, got {self.style!r}")

    @property
    def scale(self) -> int:
        """What the text's numbers are the values times: ``10**decimals`` in the integer style, else 1."""
        return 10 ** self.decimals if self.style == "integer" else 1

    # ------------------------------------------------------------------ settings
    def fit(self, data: SeriesSet) -> "ChatCodec":
        """Take the channels and the (regular) length from ``data``; check the user fields exist."""
        data.require_complete("the chat format")
        missing = [f for f in self.user_fields if f != "item_id" and f not in data.attributes.columns]
        if missing:
            raise DataError(f"user field(s) {missing} are not attributes of the data "
                            f"(attributes: {list(data.attributes.columns)})")
        self.channels = list(data.channels)
        self.length = data.length if data.is_regular else None
        if self.style != "recipe":
            self.decimals = resolution_decimals(data.values, self.decimals)
        return self

    @property
    def keys(self) -> list[str]:
        """The assistant turn's keys: the series key, or the channel names for multivariate data."""
        return list(self.channels) if len(self.channels) > 1 else [self.series_key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ChatCodec":
        return cls(**d)

    # ------------------------------------------------------------------ writing
    def user_content(self, conditions: dict[str, Any]) -> str:
        """The user turn: the conditions as a JSON object (``{"item_id": "MT_001"}``)."""
        return json.dumps({k: _plain(v) for k, v in conditions.items()})

    def prompt(self, conditions: dict[str, Any]) -> list[dict[str, str]]:
        """System and user messages that ask for one series."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.user_content(conditions)}]

    def render(self, values: np.ndarray) -> str:
        """The assistant turn for one series, ``values`` of shape (length,) or (length, channels)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[:, None] if v.ndim == 1 else v
        if v.shape[1] != len(self.keys):
            raise DataError(f"{v.shape[1]} channels to render but the codec has keys {self.keys}")
        if self.style == "recipe":
            return json.dumps({k: round_values(v[:, j], self.decimals) for j, k in enumerate(self.keys)})
        if self.style == "integer":
            columns = [[str(int(x)) for x in np.rint(v[:, j] * self.scale).tolist()] for j in range(v.shape[1])]
        else:
            columns = [[_short_number(x, self.decimals) for x in v[:, j].tolist()] for j in range(v.shape[1])]
        return "{" + ",".join(f"{json.dumps(k)}:[{','.join(c)}]" for k, c in zip(self.keys, columns)) + "}"

    def conditions(self, data: SeriesSet) -> list[dict[str, Any]]:
        """The user-turn conditions of every series of ``data``."""
        out = []
        for i in range(len(data)):
            out.append({f: data.item_id[i] if f == "item_id" else _plain(data.attributes[f].iloc[i])
                        for f in self.user_fields})
        return out

    def examples(self, data: SeriesSet) -> list[dict[str, Any]]:
        """One chat example ``{"messages": [...]}`` per series of ``data``."""
        if not self.channels:
            self.fit(data)
        data.require_complete("the chat format")
        return [{"messages": self.prompt(c) + [{"role": "assistant", "content": self.render(data.series(i))}]}
                for i, c in enumerate(self.conditions(data))]

    def response_format(self, length: int | None = None) -> dict[str, Any]:
        """A ``json_schema`` response format whose arrays have exactly ``length`` numbers."""
        length = length or self.length
        array: dict[str, Any] = {"type": "array", "items": {"type": "number"}}
        if length:
            array.update(minItems=int(length), maxItems=int(length))
        schema = {"type": "object", "properties": {k: array for k in self.keys}, "required": self.keys,
                  "additionalProperties": False}
        return {"type": "json_schema", "json_schema": {"name": "series", "strict": True, "schema": schema}}

    # ------------------------------------------------------------------ reading
    def parse(self, text: str | None, length: int | None = None) -> np.ndarray:
        """The values of one answer, shape (length, channels); :class:`AnswerError` says why not."""
        try:
            obj = json.loads(text or "")
        except json.JSONDecodeError as e:
            raise AnswerError("not_json", f"not valid JSON ({e.msg} at character {e.pos})") from None
        if not isinstance(obj, dict):
            raise AnswerError("wrong_key", f"expected a JSON object with {self.keys}, got {type(obj).__name__}")
        missing = [k for k in self.keys if not isinstance(obj.get(k), list)]
        if missing:
            raise AnswerError("wrong_key", f"no list under {missing[0]!r} (keys: {list(obj)[:5]})")
        cols = [obj[k] for k in self.keys]
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) for c in cols for x in c):
            raise AnswerError("non_finite", "the arrays hold values that are not numbers")
        lengths = {len(c) for c in cols}
        want = length or self.length
        if len(lengths) > 1:
            raise AnswerError("wrong_length", f"the channels have different lengths {sorted(lengths)}")
        n = lengths.pop()
        if n == 0 or (want and n != want):
            raise AnswerError("wrong_length", f"{n} values, expected {want or 'at least 1'}")
        v = np.asarray(cols, dtype=np.float64).T
        if not np.isfinite(v).all():
            raise AnswerError("non_finite", "the arrays hold values that are not finite")
        return v / self.scale if self.scale != 1 else v

    @classmethod
    def from_examples(cls, lines: Iterable[str], source: str = "training file"
                      ) -> tuple["ChatCodec", list[dict[str, Any]], SeriesSet]:
        """Read chat examples (JSON lines) back: the codec they imply (system prompt, user fields,
        keys, decimals, length), the user-turn conditions and the series. Errors name the line."""
        conds, arrays, reader, system, decimals = [], [], None, None, 0
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{source}: line {lineno}"
            messages = check_example(line, where)
            by_role: dict[str, Any] = {}
            for m in messages:
                by_role.setdefault(m["role"], m)
            if "user" not in by_role:
                raise DataError(f"{where}: no user message with the conditions")
            system = system if system is not None else message_text(by_role.get("system", {}).get("content"))
            try:
                cond = json.loads(message_text(by_role["user"]["content"]))
            except json.JSONDecodeError:
                cond = None
            if not isinstance(cond, dict) or any(isinstance(v, (list, dict)) for v in cond.values()):
                raise DataError(f"{where}: the user message must be a JSON object of scalar conditions such as "
                                '{"item_id": "MT_001"}')
            answer = message_text(by_role["assistant"]["content"])
            if reader is None:
                keys = _answer_keys(answer, where)
                reader = cls(series_key=keys[0], channels=keys)
            try:
                arrays.append(reader.parse(answer))
            except AnswerError as e:
                raise DataError(f"{where}: the assistant message is not a series: {e}") from None
            decimals = max(decimals, _decimals(answer))
            conds.append(cond)
        if not arrays or reader is None:
            raise DataError(f"{source}: no examples")
        fields = list(dict.fromkeys(k for c in conds for k in c))
        attrs = pd.DataFrame([{k: c.get(k) for k in fields if k != "item_id"} for c in conds])
        ids = [str(c.get("item_id", f"series_{i}")) for i, c in enumerate(conds)]
        data = SeriesSet.from_arrays(arrays, ids, reader.channels,
                                     attributes=attrs if len(attrs.columns) else None, source=source)
        reader.system_prompt, reader.user_fields, reader.decimals = system or "", fields, min(decimals, 12)
        return reader.fit(data), conds, data


def resolution_decimals(values: np.ndarray, most: int) -> int:
    """The fewest decimals (at most ``most``) that write every finite value of ``values`` as it is at
    ``most`` decimals: the data's own resolution."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    steps = np.rint(finite * 10.0 ** most)
    for d in range(most):
        if np.all(np.fmod(steps, 10.0 ** (most - d)) == 0):
            return d
    return most


def _short_number(x: float, decimals: int) -> str:
    """``x`` at ``decimals`` decimals without trailing zeros (``2.50`` -> ``2.5``, ``-0.0`` -> ``0``)."""
    text = f"{x:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def tokens_per_value(codec: ChatCodec, data: SeriesSet, text_tokens: Callable[[str], int] = approx_tokens) -> float:
    """Mean tokens of the assistant turn per value of ``data`` in ``codec``'s text (counted by ``text_tokens``)."""
    total = sum(text_tokens(codec.render(data.series(i))) for i in range(len(data)))
    return total / max(int(np.isfinite(data.values).sum()), 1)


def check_example(line: str, where: str) -> list[dict[str, Any]]:
    """The messages of one JSONL line, checked against OpenAI's chat fine-tuning rules."""
    try:
        ex = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg}); every line must be one JSON object") from None
    if not isinstance(ex, dict):
        raise DataError(f"{where}: expected a JSON object with 'messages', got {type(ex).__name__}")
    messages = ex.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: missing the 'messages' list")
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {k} needs 'role' and 'content'")
        extra = set(m) - set(MESSAGE_KEYS)
        if extra:
            raise DataError(f"{where}: message {k} has unrecognised key(s) {sorted(extra)}")
        if m["role"] not in CHAT_ROLES:
            raise DataError(f"{where}: message {k} has unrecognised role {m['role']!r}")
        if m["content"] is None and not m.get("tool_calls") and not m.get("function_call"):
            raise DataError(f"{where}: message {k} has no content")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message (the turn that is trained)")
    return messages


def _answer_keys(answer: str, where: str) -> list[str]:
    try:
        obj = json.loads(answer)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: the assistant message is not JSON ({e.msg})") from None
    keys = [k for k, v in obj.items() if isinstance(v, list)] if isinstance(obj, dict) else []
    if not keys:
        raise DataError(f'{where}: the assistant message must be a JSON object of arrays such as {{"consumption": [...]}}')
    return keys


def _decimals(answer: str) -> int:
    return max((len(m) for m in re.findall(r"\.(\d+)", answer)), default=0)


def message_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def _plain(v: Any) -> Any:
    """A JSON-ready scalar (numpy scalars unwrapped, NaN as null)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
