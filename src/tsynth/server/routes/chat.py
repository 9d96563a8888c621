"""``/v1/chat/completions``: series from a fine-tuned model. The last user message is a JSON object of
conditions; a ``json_schema`` response format may pin the length; stop sequences and the token limit cut the
text; ``stream`` answers as server-sent events. Generation itself is :class:`tsynth.server.engine.ModelPool`."""

from __future__ import annotations

import json
from typing import Any, Iterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ...codecs.chat import approx_tokens, chat_tokens, message_text, truncate_tokens
from ...errors import TsynthError
from .. import schemas as S
from ..context import APIError, Ctx, model_not_found
from ..engine import LoadedModel
from ..store import new_id, now
from ..worker import preset_for

STREAM_PIECE = 64   # characters of content per streamed chunk

router = APIRouter(prefix="/v1/chat", tags=["chat"])


@router.post("/completions", response_model=S.ChatCompletion)
def chat_completions(ctx: Ctx, body: S.ChatRequest):
    if body.tools:
        raise APIError(400, "tools are not supported: the models answer with series only", "tools", "invalid_value")
    if body.logprobs:
        raise APIError(400, "logprobs are not supported by tsynth serve", "logprobs", "invalid_value")
    model = ctx.pool.get(body.model)
    if model is None:
        if preset_for(body.model) is not None or ctx.allowed.source(body.model) is not None:
            raise APIError(400, f"The model `{body.model}` is a base model: it has not been fine-tuned on any "
                                "series, so it cannot generate. Fine-tune it (POST /v1/fine_tuning/jobs) and use "
                                "the job's fine_tuned_model.", "model", "model_not_available")
        raise model_not_found(body.model)
    conditions = _conditions(body.messages)
    length = _length(model, body.response_format)
    try:
        texts = ctx.pool.generate(model, conditions, body.n, 1.0 if body.temperature is None else body.temperature,
                                  1.0 if body.top_p is None else body.top_p, body.seed, length)
    except TsynthError as e:
        raise APIError(400, str(e), "messages", "invalid_value") from None
    limit = body.max_completion_tokens or body.max_tokens
    stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    choices = [_finish_text(t, stops, limit) for t in texts]
    prompt = chat_tokens([m.model_dump() for m in body.messages])
    completion = sum(approx_tokens(t) for t, _ in choices)
    usage = S.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    cid, created = "chatcmpl-" + new_id("", 29), now()
    if body.stream:
        with_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(cid, created, body.model, choices, usage if with_usage else None),
                                 media_type="text/event-stream")
    return S.ChatCompletion(
        id=cid, created=created, model=body.model, usage=usage, system_fingerprint="fp_tsynth",
        choices=[S.ChatChoice(index=i, finish_reason=reason, message=S.AssistantMessage(content=text))
                 for i, (text, reason) in enumerate(choices)])


def _conditions(messages: list[S.ChatMessage]) -> dict[str, Any]:
    """The conditions: the JSON object of the last user message."""
    users = [m for m in messages if m.role == "user"]
    hint = 'the last user message must be a JSON object of conditions, e.g. {"item_id": "MT_001"} ({} for none)'
    if not users:
        raise APIError(400, f"No user message: {hint}", "messages", "invalid_value")
    try:
        cond = json.loads(message_text(users[-1].content))
    except json.JSONDecodeError:
        cond = None
    if not isinstance(cond, dict) or any(isinstance(v, (dict, list)) for v in cond.values()):
        raise APIError(400, f"Cannot read the conditions: {hint}", "messages", "invalid_value")
    return cond


def _length(model: LoadedModel, fmt: S.ResponseFormat | None) -> int:
    """The series length to sample: the model's, or the one a ``json_schema`` pins (checked)."""
    length = model.codec.length or model.max_length
    schema = fmt.json_schema.schema_ if fmt is not None and fmt.type == "json_schema" and fmt.json_schema else None
    if not schema:
        return length
    props = schema.get("properties") or {}
    keys = model.codec.keys
    if set(props) != set(keys) or any(props[k].get("type", "array") != "array" for k in keys):
        raise APIError(400, f"response_format: the schema asks for {sorted(props)}; this model answers with arrays "
                            f"under {keys}", "response_format", "invalid_value")
    pins = {(props[k].get("minItems"), props[k].get("maxItems")) for k in keys}
    pinned = {lo for lo, hi in pins if lo is not None and lo == hi}
    if len(pinned) > 1 or (pinned and len(pins) > 1):
        raise APIError(400, "response_format: every array must pin the same length", "response_format", "invalid_value")
    if not pinned:
        return length
    want = pinned.pop()
    if (model.codec.length and want != model.codec.length) or not 1 <= want <= model.max_length:
        raise APIError(400, f"response_format pins {want} values; this model generates series of "
                            f"{model.codec.length or f'at most {model.max_length}'} values", "response_format",
                       "invalid_value")
    return want


def _finish_text(text: str, stops: list[str], limit: int | None) -> tuple[str, S.FinishReason]:
    """Apply stop sequences and the token limit: (text, finish_reason)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    if limit is not None and approx_tokens(text) > limit:
        return truncate_tokens(text, limit), "length"
    return text, "stop"


def _sse(cid: str, created: int, model: str, choices: list[tuple[str, S.FinishReason]],
         usage: S.Usage | None) -> Iterator[str]:
    """Server-sent events of a streamed completion: role, content pieces, finish, usage, [DONE]."""
    def chunk(choices_: list[S.ChunkChoice], usage_: S.Usage | None = None) -> str:
        body = S.ChatCompletionChunk(id=cid, created=created, model=model, choices=choices_, usage=usage_)
        return "data: " + json.dumps(body.model_dump()) + "\n\n"

    for i, (text, reason) in enumerate(choices):
        yield chunk([S.ChunkChoice(index=i, delta={"role": "assistant", "content": ""})])
        for k in range(0, len(text), STREAM_PIECE):
            yield chunk([S.ChunkChoice(index=i, delta={"content": text[k: k + STREAM_PIECE]})])
        yield chunk([S.ChunkChoice(index=i, delta={}, finish_reason=reason)])
    if usage is not None:
        yield chunk([], usage)
    yield "data: [DONE]\n\n"
