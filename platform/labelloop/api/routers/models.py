"""Model versions: one version, its artifact (streamed), promotion."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from labelloop.access import Caller
from labelloop.api.auth import access, get_ctx, require_role
from labelloop.api.schemas import ErrorOut, ModelVersionId, ModelVersionOut, PromoteIn
from labelloop.context import Context
from labelloop.db.models import ModelVersion, Project
from labelloop.errors import InputError, NotFoundError
from labelloop.registry import promote
from labelloop.reports import model_versions

router = APIRouter(prefix="/model-versions", tags=["model versions"])
SHA_HEADER = "X-Labelloop-SHA256"
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such model version"}}


def _version(ctx: Context, model_version_id: int) -> dict:
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        project = s.get(Project, mv.project_id).name
    return next(m for m in model_versions(ctx, project) if m["id"] == model_version_id)


@router.get(
    "/{model_version_id}",
    response_model=ModelVersionOut,
    responses=NOT_FOUND,
    summary="One model version",
    **access("read"),
)
def get_model_version(model_version_id: ModelVersionId, ctx: Context = Depends(get_ctx)) -> dict:
    return _version(ctx, model_version_id)


@router.get(
    "/{model_version_id}/artifact",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/octet-stream": {}},
            "description": f"the weights (a state_dict); `{SHA_HEADER}` and `Repr-Digest` "
            "carry the recorded sha256",
        },
        **NOT_FOUND,
    },
    summary="Download a model artifact",
    **access("read"),
)
def download_artifact(
    model_version_id: ModelVersionId, ctx: Context = Depends(get_ctx)
) -> StreamingResponse:
    """Streamed from the blob store in 1 MiB chunks. The sha256 recorded when the version
    was made is sent as a header; should the stored bytes not match it, the stream breaks
    off instead of completing, so a client never receives a silently different file."""
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None:
            raise NotFoundError(f"no model version with id {model_version_id}")
        key, sha, name = mv.artifact_key, mv.sha256, mv.name
    if not ctx.blobs.exists(key):
        raise NotFoundError(f"the artifact of model version {name} is missing from the blob store")

    def chunks() -> Iterator[bytes]:
        h = hashlib.sha256()
        for block in ctx.blobs.iter_bytes(key):
            h.update(block)
            yield block
        if h.hexdigest() != sha:
            raise RuntimeError(f"artifact {key} does not match its recorded sha256")

    digest = base64.b64encode(bytes.fromhex(sha)).decode()
    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={
            SHA_HEADER: sha,
            "Repr-Digest": f"sha-256=:{digest}:",
            "Content-Length": str(ctx.blobs.size(key)),
            "Content-Disposition": f'attachment; filename="{name}.pt"',
        },
    )


@router.post(
    "/{model_version_id}/promote",
    response_model=ModelVersionOut,
    responses=NOT_FOUND,
    summary="Promote to production",
    **access("admin"),
)
def promote_model_version(
    model_version_id: ModelVersionId,
    body: PromoteIn,
    ctx: Context = Depends(get_ctx),
    caller: Caller = Depends(require_role("admin")),
) -> dict:
    """Make the version production regardless of the promotion gate; the reason (and who
    gave it) is recorded, and the previous production version is archived."""
    reason = body.reason.strip()
    if not reason:
        raise InputError("reason must say why the gate is overridden")
    _version(ctx, model_version_id)
    promote(ctx, model_version_id, f"{reason} (by {caller.name})", forced=True)
    return _version(ctx, model_version_id)
