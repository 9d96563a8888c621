"""``/v1/models``: list, retrieve and delete. The list holds the base models (the presets, OpenAI names trained
as the tiny preset, the operator's allowed Hugging Face models) and the fine-tuned ones; base models cannot be
deleted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import schemas as S
from ..context import APIError, Ctx, ServerContext, model_not_found
from ..worker import BASE_MODELS

router = APIRouter(prefix="/v1/models", tags=["models"])


def base_model(ctx: ServerContext, name: str) -> dict[str, Any]:
    return S.ModelObject(id=name, created=ctx.started, owned_by="system").model_dump()


def is_base_model(ctx: ServerContext, name: str) -> bool:
    return name in BASE_MODELS or ctx.allowed.source(name) is not None


@router.get("", response_model=S.ModelList)
def list_models(ctx: Ctx):
    bases = [*BASE_MODELS, *ctx.allowed.listed()]
    return S.ModelList(data=[base_model(ctx, m) for m in bases] + ctx.store.models())


@router.get("/{model:path}", response_model=S.ModelObject)
def retrieve_model(ctx: Ctx, model: str):
    if is_base_model(ctx, model):
        return base_model(ctx, model)
    found = ctx.store.model(model)
    if found is None:
        raise model_not_found(model)
    return found[0]


@router.delete("/{model:path}", response_model=S.ModelDeleted)
def delete_model(ctx: Ctx, model: str):
    if is_base_model(ctx, model):
        raise APIError(403, f"You cannot delete the base model {model}.", "model", "permission_denied")
    if not ctx.store.delete_model(model):
        raise model_not_found(model)
    ctx.pool.forget(model)
    return S.ModelDeleted(id=model)
