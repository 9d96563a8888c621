"""``tsynth serve``: an OpenAI-compatible HTTP API whose fine-tuning jobs and chat completions run the
local backend, or LoRA on a pretrained model. The official ``openai`` SDK works against it unchanged::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="anything-or-your-key")

Routes (under ``/v1``): ``files`` (upload, list, retrieve, content, delete), ``fine_tuning/jobs``
(create, list, retrieve, cancel, events, checkpoints), ``chat/completions``, ``models`` (list,
retrieve, delete). Errors use OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``
with the matching status, so the SDK raises its usual exceptions.

Behaviour worth knowing:

* Binds to 127.0.0.1 unless told otherwise. With an API key (``--api-key`` or ``TSYNTH_API_KEY``)
  every request needs ``Authorization: Bearer KEY``; without one any key is accepted. An empty key is
  refused (it would turn authentication off unnoticed).
* Uploads: purpose ``fine-tune`` only, ``.jsonl`` only, at most ``max_upload_bytes`` (512 MB, as
  OpenAI). With a storage quota (``--max-storage``) an upload that would take the data directory past
  it is refused (413, ``storage_quota_exceeded``), and so is one the disk has no room for (507); a job
  that starts with the quota used up fails with that code. The result file ``step_metrics.csv`` of a
  job is served **base64-encoded**, as OpenAI does (``base64.b64decode(client.files.content(id).read())``);
  uploaded files are served as stored.
* The SDK retries a POST that failed in transit without an idempotency key; a retried upload or job
  creation (``x-stainless-retry-count`` > 0) with the same content within 10 minutes returns the
  object made by the first attempt instead of a duplicate. An ``Idempotency-Key`` header is honoured
  for 24 hours.
* Base models (``tsynth-tiny`` / ``-small`` / ``-base``, and OpenAI model names, trained as the tiny
  preset) can be fine-tuned but cannot generate: a completion on one is a 400 that says so. Hugging Face
  models are fine-tuned with LoRA (the pretrained backend) only when the operator allows them
  (``--models-dir DIR``: each model folder or ``.gguf`` file there, by name; ``--base-model``: a path or
  hub id, as written; see :class:`tsynth.server.worker.BaseModels`); any other ``model`` is the same 404
  ``model_not_found``, whether or not such a path exists on the server.
* Tokens in ``usage`` and ``max_tokens`` are counted with :func:`tsynth.codecs.chat.approx_tokens`
  (there is no text tokenizer: the model works on value tokens).
* Jobs, restarts and hyperparameters: see :mod:`tsynth.server.worker`; completions: see
  :mod:`tsynth.server.engine`.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import logging
import os
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Iterator

from fastapi import BackgroundTasks, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..codecs.chat import approx_tokens, chat_tokens, message_text, truncate_tokens
from ..errors import ConfigError, TsynthError
from . import schemas as S
from .engine import LoadedModel, ModelPool
from .store import Store, new_id, now
from .worker import BASE_MODELS, BaseModels, Workers, preset_for, recover, validate_job

log = logging.getLogger("tsynth.server")

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
RETRY_WINDOW_S = 600
IDEMPOTENCY_WINDOW_S = 24 * 3600
STREAM_PIECE = 64


class APIError(Exception):
    """An error answered in OpenAI's envelope."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = S.ErrorResponse(error=S.ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return S.ListPage(data=items, has_more=has_more, first_id=items[0]["id"] if items else None,
                      last_id=items[-1]["id"] if items else None).model_dump()


def create_app(data_dir: str | os.PathLike, api_key: str | None = None, workers: int = 1, train_threads: int = 1,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, generation_slots: int = 1,
               models_dir: str | os.PathLike | None = None, base_models: tuple[str, ...] | list[str] = (),
               max_storage_bytes: int | None = None) -> FastAPI:
    """The ASGI app over one data directory; starting it (lifespan) starts ``workers`` training processes,
    each on ``train_threads`` torch threads, and the supervisor that restarts them (``app.state.workers``).
    ``models_dir`` and ``base_models`` are the operator's allow-list of Hugging Face base models;
    ``max_storage_bytes`` caps the data directory."""
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty: give a key, or none to serve without authentication")
    if max_storage_bytes is not None and max_storage_bytes <= 0:
        raise ConfigError(f"the storage quota must be positive, got {max_storage_bytes} bytes")
    store = Store(data_dir)
    pool = ModelPool(store, slots=generation_slots)
    allowed = BaseModels(models_dir, base_models)
    started = now()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        lock = _lock(store.root / "server.lock")
        for job_id in recover(store):
            threading.Thread(target=validate_job, args=(store, job_id), daemon=True).start()
        app.state.workers = Workers(store, workers, train_threads, max_storage_bytes)
        try:
            yield
        finally:
            await asyncio.to_thread(app.state.workers.stop)
            lock.close()

    app = FastAPI(title="tsynth serve", description=__doc__, lifespan=lifespan)

    # ------------------------------------------------------------------ auth, errors
    def refusal(request: Request) -> JSONResponse | None:
        """The answer to a request refused before routing: a missing or wrong key, an oversized upload."""
        if api_key is not None:
            header = request.headers.get("authorization", "")
            if not header:
                return error_response(401, "You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.",
                                      code="invalid_api_key")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not secrets.compare_digest(given.encode(), api_key.encode()):
                return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        size = request.headers.get("content-length", "")
        if request.url.path == "/v1/files" and size.isdigit() and int(size) > max_upload_bytes + 1024 * 1024:
            return error_response(413, f"File too large: the limit is {max_upload_bytes} bytes.", "file",
                                  "file_too_large")
        return None

    @app.middleware("http")
    async def auth_and_request_id(request: Request, call_next):
        response = refusal(request) or await call_next(request)
        response.headers["x-request-id"] = "req_" + secrets.token_hex(12)
        return response

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param, e.code, e.type, e.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, e: RequestValidationError):
        err = e.errors()[0]
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form")]
        if err.get("type") == "json_invalid":
            return error_response(400, "We could not parse the JSON body of your request. (HINT: This likely means "
                                       "you aren't using your HTTP library correctly.)")
        where = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        return error_response(400, f"Invalid '{where}': {msg}.", where if loc else None,
                              "missing_required_parameter" if err.get("type") == "missing" else "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            return error_response(404, f"Invalid URL ({request.method} {request.url.path})")
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(Exception)
    async def on_crash(request: Request, e: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, f"The server had an error while processing your request ({type(e).__name__}).",
                              type_="server_error")

    def dedupe_key(request: Request, content: bytes) -> tuple[str, int | None]:
        """A digest of the request and how far back a duplicate counts (None: do not look)."""
        idem = request.headers.get("idempotency-key")
        if idem:
            return "idem:" + hashlib.sha256(idem.encode()).hexdigest(), IDEMPOTENCY_WINDOW_S
        retried = request.headers.get("x-stainless-retry-count", "0")
        window = RETRY_WINDOW_S if retried.isdigit() and int(retried) > 0 else None
        return hashlib.sha256(content).hexdigest(), window

    # ------------------------------------------------------------------ files
    def get_file(file_id: str) -> dict[str, Any]:
        doc = store.file(file_id)
        if doc is None:
            raise APIError(404, f"No such File object: {file_id}", "id")
        return doc

    @app.post("/v1/files", response_model=S.FileObject)
    async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
        if purpose not in UPLOAD_PURPOSES:
            raise APIError(400, f"'{purpose}' is not one of {list(UPLOAD_PURPOSES)} - 'purpose'", "purpose",
                           "invalid_value")
        if purpose != "fine-tune":
            raise APIError(400, f"tsynth serve stores files for fine-tuning only: purpose must be 'fine-tune', "
                                f"got '{purpose}'", "purpose", "invalid_value")
        filename = Path(file.filename or "").name
        if not filename.endswith(".jsonl"):
            raise APIError(400, f"Invalid file format for Fine-Tuning API. Must be .jsonl (got '{filename}')",
                           "file", "invalid_file_format")
        file_id = new_id("file-")
        tmp = store.files_dir / f".{file_id}.upload"
        room = max_upload_bytes
        if max_storage_bytes is not None:
            room = min(room, max_storage_bytes - await asyncio.to_thread(store.usage))
        try:
            size, sha = await asyncio.to_thread(_save_upload, file.file, tmp, max(room, 0),
                                                f"{purpose}\n{filename}\n".encode())
        except OverflowError:
            if room < max_upload_bytes:
                raise APIError(413, f"The server's storage quota ({max_storage_bytes} bytes) has no room for this "
                                    "file: delete files or models you no longer need.", "file",
                               "storage_quota_exceeded", headers={"x-should-retry": "false"}) from None
            raise APIError(413, f"File too large: the limit is {max_upload_bytes} bytes.", "file",
                           "file_too_large") from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise APIError(507, "The server's disk is full: the file could not be stored.", "file",
                           "insufficient_storage", "server_error", headers={"x-should-retry": "false"}) from None
        digest, window = dedupe_key(request, sha.encode())
        earlier = store.by_digest("files", digest, now() - window) if window else None
        if earlier is not None:
            tmp.unlink()
            return earlier
        os.replace(tmp, store.file_path(file_id))
        doc = S.FileObject(id=file_id, bytes=size, created_at=now(), filename=filename, purpose=purpose).model_dump()
        return store.add_file(doc, digest)

    @app.get("/v1/files")
    def list_files(purpose: str | None = None, after: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                   order: str = Query("desc", pattern="^(asc|desc)$")):
        where, args = ("purpose = ?", (purpose,)) if purpose else ("1", ())
        items, more = store.page("files", where, args, after, limit, newest_first=order == "desc")
        return _page(items, more)

    @app.get("/v1/files/{file_id}", response_model=S.FileObject)
    def retrieve_file(file_id: str):
        return get_file(file_id)

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str):
        doc = get_file(file_id)
        path = store.file_path(doc["id"])
        if doc["purpose"] == "fine-tune-results":   # base64, as OpenAI serves result files
            return Response(base64.b64encode(path.read_bytes()), media_type="application/octet-stream")
        return FileResponse(path, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}", response_model=S.FileDeleted)
    def delete_file(file_id: str):
        get_file(file_id)
        store.delete_file(file_id)
        return S.FileDeleted(id=file_id)

    # ------------------------------------------------------------------ fine-tuning jobs
    def get_job(job_id: str) -> dict[str, Any]:
        doc = store.job(job_id)
        if doc is None:
            raise APIError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_id", "fine_tuning_job_not_found")
        return doc

    def check_training_file(file_id: str | None, param: str) -> None:
        if file_id is None:
            return
        doc = store.file(file_id)
        if doc is None:
            raise APIError(400, f"invalid {param}: {file_id} (no such file)", param, "invalid_value")
        if doc["purpose"] != "fine-tune":
            raise APIError(400, f"File {file_id} has purpose '{doc['purpose']}'; fine-tuning needs purpose 'fine-tune'",
                           param, "invalid_value")

    @app.post("/v1/fine_tuning/jobs", response_model=S.FineTuningJob)
    def create_job(body: S.JobCreate, request: Request, background: BackgroundTasks):
        if body.model.startswith("ft:"):
            raise APIError(400, f"Continuing training from a fine-tuned model ({body.model}) is not supported by "
                                f"tsynth serve; start from a base model ({', '.join(BASE_MODELS)}).",
                           "model", "model_not_available")
        if not allowed.allows(body.model):
            raise _model_not_found(body.model)
        if body.method is not None and body.method.type != "supervised":
            raise APIError(400, f"Fine-tuning method '{body.method.type}' is not supported; use 'supervised'.",
                           "method.type", "invalid_value")
        for k, v in (body.metadata or {}).items():
            if len(k) > 64 or len(v) > 512:
                raise APIError(400, "metadata keys are at most 64 characters and values at most 512", "metadata",
                               "invalid_value")
        check_training_file(body.training_file, "training_file")
        check_training_file(body.validation_file, "validation_file")
        hp = body.hyperparameters or S.Hyperparameters()
        if body.method is not None and body.method.supervised is not None:
            hp = body.method.supervised.hyperparameters
        digest, window = dedupe_key(request, body.model_dump_json().encode())
        earlier = store.by_digest("jobs", digest, now() - window) if window else None
        if earlier is not None:
            return earlier
        hp = hp.model_dump()
        doc = S.FineTuningJob(
            id=new_id("ftjob-"), created_at=now(), model=body.model, status="validating_files",
            training_file=body.training_file, validation_file=body.validation_file, hyperparameters=hp,
            method={"type": "supervised", "supervised": {"hyperparameters": hp}},
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31), metadata=body.metadata,
            integrations=body.integrations, user_provided_suffix=body.suffix).model_dump()
        store.add_job(doc, digest, allowed.source(body.model))
        store.add_event(doc["id"], f"Created fine-tuning job: {doc['id']}")
        background.add_task(validate_job, store, doc["id"])
        return doc

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)):
        where, args = ["1"], []
        for key, value in request.query_params.items():
            if key.startswith("metadata[") and key.endswith("]"):
                name = key[9:-1]
                if '"' in name:
                    raise APIError(400, f"invalid metadata key {name!r}", "metadata", "invalid_value")
                where.append("json_extract(doc, ?) = ?")
                args += [f'$.metadata."{name}"', value]
        items, more = store.page("jobs", " AND ".join(where), tuple(args), after, limit)
        return _page(items, more)

    @app.get("/v1/fine_tuning/jobs/{job_id}", response_model=S.FineTuningJob)
    def retrieve_job(job_id: str):
        return get_job(job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel", response_model=S.FineTuningJob)
    def cancel_job(job_id: str):
        job = get_job(job_id)
        done = store.update_job(job_id, only_if=("validating_files", "queued", "running"), status="cancelled",
                                finished_at=now(), estimated_finish=None)
        if done is None:
            raise APIError(409, f"Job {job_id} has already {job['status']}; it cannot be cancelled.", "fine_tuning_job_id",
                           "job_not_cancellable", headers={"x-should-retry": "false"})
        store.add_event(job_id, "Fine-tuning job cancelled")
        return done

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def list_events(job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
        get_job(job_id)
        return _page(*store.page("events", "job_id = ?", (job_id,), after, limit))

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def list_checkpoints(job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)):
        get_job(job_id)
        return _page(*store.page("checkpoints", "job_id = ?", (job_id,), after, limit))

    # ------------------------------------------------------------------ models
    def base_model(name: str) -> dict[str, Any]:
        return S.ModelObject(id=name, created=started, owned_by="system").model_dump()

    @app.get("/v1/models")
    def list_models():
        bases = [*BASE_MODELS, *allowed.listed()]
        return {"object": "list", "data": [base_model(m) for m in bases] + store.models()}

    @app.get("/v1/models/{model:path}", response_model=S.ModelObject)
    def retrieve_model(model: str):
        if model in BASE_MODELS or allowed.source(model) is not None:
            return base_model(model)
        found = store.model(model)
        if found is None:
            raise _model_not_found(model)
        return found[0]

    @app.delete("/v1/models/{model:path}", response_model=S.ModelDeleted)
    def delete_model(model: str):
        if model in BASE_MODELS or allowed.source(model) is not None:
            raise APIError(403, f"You cannot delete the base model {model}.", "model", "permission_denied")
        if not store.delete_model(model):
            raise _model_not_found(model)
        pool.forget(model)
        return S.ModelDeleted(id=model)

    # ------------------------------------------------------------------ chat completions
    @app.post("/v1/chat/completions", response_model=S.ChatCompletion)
    def chat_completions(body: S.ChatRequest):
        if body.tools:
            raise APIError(400, "tools are not supported: the models answer with series only", "tools", "invalid_value")
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by tsynth serve", "logprobs", "invalid_value")
        model = pool.get(body.model)
        if model is None:
            if preset_for(body.model) is not None or allowed.source(body.model) is not None:
                raise APIError(400, f"The model `{body.model}` is a base model: it has not been fine-tuned on any "
                                    "series, so it cannot generate. Fine-tune it (POST /v1/fine_tuning/jobs) and use "
                                    "the job's fine_tuned_model.", "model", "model_not_available")
            raise _model_not_found(body.model)
        conditions = _conditions(body.messages)
        length = _length(model, body.response_format)
        try:
            texts = pool.generate(model, conditions, body.n, 1.0 if body.temperature is None else body.temperature,
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
            choices=[S.ChatChoice(index=i, finish_reason=reason,
                                  message={"role": "assistant", "content": text, "refusal": None, "annotations": []})
                     for i, (text, reason) in enumerate(choices)])

    return app


def _model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist or you do not have access to it.", None,
                    "model_not_found")


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


def _finish_text(text: str, stops: list[str], limit: int | None) -> tuple[str, str]:
    """Apply stop sequences and the token limit: (text, finish_reason)."""
    cuts = [text.find(s) for s in stops if s and s in text]
    if cuts:
        text = text[: min(cuts)]
    if limit is not None and approx_tokens(text) > limit:
        return truncate_tokens(text, limit), "length"
    return text, "stop"


def _sse(cid: str, created: int, model: str, choices: list[tuple[str, str]], usage: S.Usage | None) -> Iterator[str]:
    """Server-sent events of a streamed completion: role, content pieces, finish, usage, [DONE]."""
    def chunk(choices_: list[dict], usage_: dict | None = None) -> str:
        return "data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                      "system_fingerprint": "fp_tsynth", "choices": choices_, "usage": usage_}) + "\n\n"

    for i, (text, reason) in enumerate(choices):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for k in range(0, len(text), STREAM_PIECE):
            yield chunk([{"index": i, "delta": {"content": text[k: k + STREAM_PIECE]}, "finish_reason": None}])
        yield chunk([{"index": i, "delta": {}, "finish_reason": reason}])
    if usage is not None:
        yield chunk([], usage.model_dump())
    yield "data: [DONE]\n\n"


def _save_upload(src, tmp: Path, limit: int, salt: bytes) -> tuple[int, str]:
    """Copy an upload to ``tmp``: (size, sha256 of salt + content); OverflowError past ``limit`` bytes."""
    h, size = hashlib.sha256(salt), 0
    try:
        with open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise OverflowError
                h.update(chunk)
                out.write(chunk)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, h.hexdigest()


def _lock(path: Path):
    """Hold an exclusive lock on ``path`` for the server's lifetime (one server per data directory)."""
    import fcntl

    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise TsynthError(f"{path.parent}: another tsynth serve uses this data directory") from None
    return fh


def serve(host: str = "127.0.0.1", port: int = 8000, data_dir: str | os.PathLike = "tsynth-server",
          api_key: str | None = None, workers: int = 1, models_dir: str | os.PathLike | None = None,
          base_models: tuple[str, ...] | list[str] = (), max_storage_bytes: int | None = None) -> None:
    """Run the server with uvicorn until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach this port can use it", host)
    if models_dir is not None and not Path(models_dir).is_dir():
        raise ConfigError(f"--models-dir {models_dir}: no such folder")
    app = create_app(data_dir, api_key=api_key, workers=workers, models_dir=models_dir, base_models=base_models,
                     max_storage_bytes=max_storage_bytes)
    _lock(Path(data_dir) / "server.lock").close()   # one clear error now rather than a failed startup later
    print(f"tsynth serve: http://{host}:{port}/v1 (data in {Path(data_dir).resolve()}"
          f"{', API key required' if api_key else ''})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def serve_from_cli(args) -> int:
    """``tsynth serve``: the API key comes from ``--api-key`` or ``TSYNTH_API_KEY``; an empty one is refused."""
    key, source = (args.api_key, "--api-key") if args.api_key is not None else \
        (os.environ.get("TSYNTH_API_KEY"), "TSYNTH_API_KEY")
    if key is not None and not key.strip():
        raise ConfigError(f"{source} is empty, which would turn authentication off: give a key, or leave it out "
                          "to serve without one")
    serve(args.host, args.port, args.data_dir, key, models_dir=args.models_dir, base_models=args.base_model or (),
          max_storage_bytes=parse_size(args.max_storage) if args.max_storage else None)
    return 0


def parse_size(text: str) -> int:
    """``500M``, ``20G``, ``1.5T`` or a number of bytes, as bytes (K, M, G, T: powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)]) * units[unit]
    except ValueError:
        raise ConfigError(f"--max-storage expects a size such as 500M or 20G, got {text!r}") from None
    if not value >= 1:
        raise ConfigError(f"--max-storage must be positive, got {text!r}")
    return int(value)
