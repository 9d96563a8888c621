"""``/v1/files``: upload (``fine-tune`` purpose, ``.jsonl`` only, within the upload limit and storage quota),
list, retrieve, content and delete."""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response

from .. import schemas as S
from ..context import APIError, Ctx, ServerContext, dedupe_key, page
from ..store import new_id, now

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")

router = APIRouter(prefix="/v1/files", tags=["files"])


def get_file(ctx: ServerContext, file_id: str) -> dict[str, Any]:
    doc = ctx.store.file(file_id)
    if doc is None:
        raise APIError(404, f"No such File object: {file_id}", "id")
    return doc


@router.post("", response_model=S.FileObject)
async def create_file(ctx: Ctx, request: Request, file: UploadFile = File(...), purpose: str = Form(...)):
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
    store = ctx.store
    file_id = new_id("file-")
    tmp = store.files_dir / f".{file_id}.upload"
    room = ctx.max_upload_bytes
    if ctx.max_storage_bytes is not None:
        room = min(room, ctx.max_storage_bytes - await asyncio.to_thread(store.usage))
    try:
        size, sha = await asyncio.to_thread(_save_upload, file.file, tmp, max(room, 0),
                                            f"{purpose}\n{filename}\n".encode())
    except OverflowError:
        if room < ctx.max_upload_bytes:
            raise APIError(413, f"The server's storage quota ({ctx.max_storage_bytes} bytes) has no room for this "
                                "file: delete files or models you no longer need.", "file",
                           "storage_quota_exceeded", headers={"x-should-retry": "false"}) from None
        raise APIError(413, f"File too large: the limit is {ctx.max_upload_bytes} bytes.", "file",
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


@router.get("")
def list_files(ctx: Ctx, purpose: str | None = None, after: str | None = None,
               limit: int = Query(10000, ge=1, le=10000), order: str = Query("desc", pattern="^(asc|desc)$")):
    where, args = ("purpose = ?", (purpose,)) if purpose else ("1", ())
    items, more = ctx.store.page("files", where, args, after, limit, newest_first=order == "desc")
    return page(items, more)


@router.get("/{file_id}", response_model=S.FileObject)
def retrieve_file(ctx: Ctx, file_id: str):
    return get_file(ctx, file_id)


@router.get("/{file_id}/content")
def file_content(ctx: Ctx, file_id: str):
    doc = get_file(ctx, file_id)
    path = ctx.store.file_path(doc["id"])
    if doc["purpose"] == "fine-tune-results":   # base64, as OpenAI serves result files
        return Response(base64.b64encode(path.read_bytes()), media_type="application/octet-stream")
    return FileResponse(path, media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=S.FileDeleted)
def delete_file(ctx: Ctx, file_id: str):
    get_file(ctx, file_id)
    ctx.store.delete_file(file_id)
    return S.FileDeleted(id=file_id)


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
