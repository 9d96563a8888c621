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

This module builds the app (authentication, error envelope, lifespan) and runs it; the routes are one router per
resource in :mod:`tsynth.server.routes`, the wire format is :mod:`tsynth.server.schemas`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import threading
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, TsynthError
from .context import APIError, ServerContext, error_response
from .engine import ModelPool
from .routes import ROUTERS
from .store import Store, now
from .worker import BaseModels, Workers, recover, validate_job

log = logging.getLogger("tsynth.server")

MAX_UPLOAD_BYTES = 512 * 1024 * 1024


def create_app(data_dir: str | os.PathLike, api_key: str | None = None, workers: int = 1, train_threads: int = 1,
               max_upload_bytes: int = MAX_UPLOAD_BYTES, generation_slots: int = 1,
               models_dir: str | os.PathLike | None = None, base_models: tuple[str, ...] | list[str] = (),
               max_storage_bytes: int | None = None) -> FastAPI:
    """The ASGI app over one data directory; starting it (lifespan) starts ``workers`` training processes,
    each on ``train_threads`` torch threads, and the supervisor that restarts them (``app.state.workers``).
    ``models_dir`` and ``base_models`` are the operator's allow-list of Hugging Face base models;
    ``max_storage_bytes`` caps the data directory. The routes are the routers of :mod:`tsynth.server.routes`,
    which reach the store and model pool through ``app.state.context``."""
    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty: give a key, or none to serve without authentication")
    if max_storage_bytes is not None and max_storage_bytes <= 0:
        raise ConfigError(f"the storage quota must be positive, got {max_storage_bytes} bytes")
    store = Store(data_dir)
    context = ServerContext(store=store, pool=ModelPool(store, slots=generation_slots),
                            allowed=BaseModels(models_dir, base_models), started=now(),
                            max_upload_bytes=max_upload_bytes, max_storage_bytes=max_storage_bytes)

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
    app.state.context = context

    @app.middleware("http")
    async def auth_and_request_id(request: Request, call_next):
        response = _refusal(request, api_key, max_upload_bytes) or await call_next(request)
        response.headers["x-request-id"] = "req_" + secrets.token_hex(12)
        return response

    _add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _refusal(request: Request, api_key: str | None, max_upload_bytes: int) -> JSONResponse | None:
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


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's envelope: ours (APIError), invalid requests as 400 (OpenAI's status, not
    FastAPI's 422), unknown URLs, and crashes (logged, answered 500)."""

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
