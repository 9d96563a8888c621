"""``/v1/fine_tuning/jobs``: create (checked, deduplicated, then validated in the background), list (with
``metadata[KEY]`` filters), retrieve, cancel, events and checkpoints. The worker processes run the jobs
(:mod:`tsynth.server.worker`)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Query, Request

from .. import schemas as S
from ..context import APIError, Ctx, ServerContext, dedupe_key, model_not_found, page
from ..store import new_id, now
from ..worker import BASE_MODELS, validate_job

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def get_job(ctx: ServerContext, job_id: str) -> dict[str, Any]:
    doc = ctx.store.job(job_id)
    if doc is None:
        raise APIError(404, f"No such fine-tuning job: {job_id}", "fine_tuning_job_id", "fine_tuning_job_not_found")
    return doc


def check_training_file(ctx: ServerContext, file_id: str | None, param: str) -> None:
    if file_id is None:
        return
    doc = ctx.store.file(file_id)
    if doc is None:
        raise APIError(400, f"invalid {param}: {file_id} (no such file)", param, "invalid_value")
    if doc["purpose"] != "fine-tune":
        raise APIError(400, f"File {file_id} has purpose '{doc['purpose']}'; fine-tuning needs purpose 'fine-tune'",
                       param, "invalid_value")


@router.post("", response_model=S.FineTuningJob)
def create_job(ctx: Ctx, body: S.JobCreate, request: Request, background: BackgroundTasks):
    if body.model.startswith("ft:"):
        raise APIError(400, f"Continuing training from a fine-tuned model ({body.model}) is not supported by "
                            f"tsynth serve; start from a base model ({', '.join(BASE_MODELS)}).",
                       "model", "model_not_available")
    if not ctx.allowed.allows(body.model):
        raise model_not_found(body.model)
    if body.method is not None and body.method.type != "supervised":
        raise APIError(400, f"Fine-tuning method '{body.method.type}' is not supported; use 'supervised'.",
                       "method.type", "invalid_value")
    for k, v in (body.metadata or {}).items():
        if len(k) > 64 or len(v) > 512:
            raise APIError(400, "metadata keys are at most 64 characters and values at most 512", "metadata",
                           "invalid_value")
    check_training_file(ctx, body.training_file, "training_file")
    check_training_file(ctx, body.validation_file, "validation_file")
    hp = body.hyperparameters or S.Hyperparameters()
    if body.method is not None and body.method.supervised is not None:
        hp = body.method.supervised.hyperparameters
    store = ctx.store
    digest, window = dedupe_key(request, body.model_dump_json().encode())
    earlier = store.by_digest("jobs", digest, now() - window) if window else None
    if earlier is not None:
        return earlier
    hyperparameters = hp.model_dump()
    doc = S.FineTuningJob(
        id=new_id("ftjob-"), created_at=now(), model=body.model, status="validating_files",
        training_file=body.training_file, validation_file=body.validation_file, hyperparameters=hyperparameters,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31), metadata=body.metadata,
        integrations=body.integrations, user_provided_suffix=body.suffix).model_dump()
    store.add_job(doc, digest, ctx.allowed.source(body.model))
    store.add_event(doc["id"], f"Created fine-tuning job: {doc['id']}")
    background.add_task(validate_job, store, doc["id"])
    return doc


@router.get("")
def list_jobs(ctx: Ctx, request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)):
    where, args = ["1"], []
    for key, value in request.query_params.items():
        if key.startswith("metadata[") and key.endswith("]"):
            name = key[9:-1]
            if '"' in name:
                raise APIError(400, f"invalid metadata key {name!r}", "metadata", "invalid_value")
            where.append("json_extract(doc, ?) = ?")
            args += [f'$.metadata."{name}"', value]
    items, more = ctx.store.page("jobs", " AND ".join(where), tuple(args), after, limit)
    return page(items, more)


@router.get("/{job_id}", response_model=S.FineTuningJob)
def retrieve_job(ctx: Ctx, job_id: str):
    return get_job(ctx, job_id)


@router.post("/{job_id}/cancel", response_model=S.FineTuningJob)
def cancel_job(ctx: Ctx, job_id: str):
    job = get_job(ctx, job_id)
    done = ctx.store.update_job(job_id, only_if=("validating_files", "queued", "running"), status="cancelled",
                                finished_at=now(), estimated_finish=None)
    if done is None:
        raise APIError(409, f"Job {job_id} has already {job['status']}; it cannot be cancelled.", "fine_tuning_job_id",
                       "job_not_cancellable", headers={"x-should-retry": "false"})
    ctx.store.add_event(job_id, "Fine-tuning job cancelled")
    return done


@router.get("/{job_id}/events")
def list_events(ctx: Ctx, job_id: str, after: str | None = None, limit: int = Query(20, ge=1, le=1000)):
    get_job(ctx, job_id)
    return page(*ctx.store.page("events", "job_id = ?", (job_id,), after, limit))


@router.get("/{job_id}/checkpoints")
def list_checkpoints(ctx: Ctx, job_id: str, after: str | None = None, limit: int = Query(10, ge=1, le=100)):
    get_job(ctx, job_id)
    return page(*ctx.store.page("checkpoints", "job_id = ?", (job_id,), after, limit))
