"""What every router of ``tsynth serve`` shares: the server's context (store, model pool, allow-list, limits),
OpenAI's error envelope, list pages, and the digest that recognises a retried POST.

A route reaches the context through the ``Ctx`` dependency (``app.state.context``, set by
:func:`tsynth.server.app.create_app`), so the routers are plain module-level ``APIRouter`` objects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from . import schemas as S
from .engine import ModelPool
from .store import Store
from .worker import BaseModels

RETRY_WINDOW_S = 600
IDEMPOTENCY_WINDOW_S = 24 * 3600


@dataclass(frozen=True)
class ServerContext:
    """The state one app's routes work on."""

    store: Store
    pool: ModelPool
    allowed: BaseModels           # the operator's allow-list of Hugging Face base models
    started: int                  # when the app was built: the ``created`` of the base models
    max_upload_bytes: int
    max_storage_bytes: int | None


def context(request: Request) -> ServerContext:
    return request.app.state.context


Ctx = Annotated[ServerContext, Depends(context)]


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


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist or you do not have access to it.", None,
                    "model_not_found")


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """One page of a list endpoint."""
    return S.ListPage(data=items, has_more=has_more, first_id=items[0]["id"] if items else None,
                      last_id=items[-1]["id"] if items else None).model_dump()


def dedupe_key(request: Request, content: bytes) -> tuple[str, int | None]:
    """A digest of the request and how far back a duplicate counts (None: do not look)."""
    idem = request.headers.get("idempotency-key")
    if idem:
        return "idem:" + hashlib.sha256(idem.encode()).hexdigest(), IDEMPOTENCY_WINDOW_S
    retried = request.headers.get("x-stainless-retry-count", "0")
    window = RETRY_WINDOW_S if retried.isdigit() and int(retried) > 0 else None
    return hashlib.sha256(content).hexdigest(), window
