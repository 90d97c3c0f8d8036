"""The dashboard: read-only pages next to the API, rendered on the server.

`mount(app)` adds the pages, their images and static files to the FastAPI app; every page
needs a log-in with an API token (labelloop.web.session)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from labelloop.access import PUBLIC, ROLE_KEY, SESSION, Caller, authenticate
from labelloop.api.auth import get_ctx
from labelloop.context import Context
from labelloop.counting.testset import reliability, test_predictions
from labelloop.db.models import AnnotationRound, Image, ModelVersion, Project, Score
from labelloop.domain import shapes_from_json
from labelloop.errors import NotFoundError
from labelloop.push.stage import round_batch
from labelloop.reports import model_warnings, version_fields
from labelloop.web import charts, data
from labelloop.web.overlay import overlay_png
from labelloop.web.session import (
    COOKIE,
    MAX_AGE_S,
    LoginRequired,
    current_caller,
    current_user,
    session_cookie,
)

WEB = resources.files("labelloop.web")
templates = Jinja2Templates(directory=str(WEB / "templates"))
templates.env.globals["charts"] = charts


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


templates.env.filters["fmt"] = _fmt
router = APIRouter(include_in_schema=False)
# What each page needs (labelloop.api.auth.access): a log-in, or nothing.
SESSION_ACCESS = {ROLE_KEY: SESSION}
PUBLIC_ACCESS = {ROLE_KEY: PUBLIC}


def page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context)


@router.get("/login", response_class=HTMLResponse, openapi_extra=PUBLIC_ACCESS)
def login_form(request: Request, next: str = "/") -> HTMLResponse:
    return page(request, "login.html", next=next, error=None, user=None)


@router.post("/login", response_class=HTMLResponse, openapi_extra=PUBLIC_ACCESS)
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode())
    token = (form.get("token") or [""])[0].strip()
    target = unquote((form.get("next") or ["/"])[0])
    if not target.startswith("/") or target.startswith("//"):
        target = "/"  # never an open redirect
    caller = (
        await anyio.to_thread.run_sync(
            authenticate, get_ctx(request), request.app.state.tokens, token
        )
        if token
        else None
    )
    if caller is None:
        # 200, not 401: the form is shown again (a browser logs a 401 page as an error).
        return page(request, "login.html", next=target, error="unknown token", user=None)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        COOKIE,
        session_cookie(caller),
        max_age=MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return resp


@router.post("/logout", openapi_extra=PUBLIC_ACCESS)
def logout() -> Response:
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE)
    return resp


@router.get("/", response_class=HTMLResponse, openapi_extra=SESSION_ACCESS)
def projects_page(
    request: Request, caller: Caller = Depends(current_caller), ctx: Context = Depends(get_ctx)
) -> HTMLResponse:
    """Every project, or the session token's own."""
    with ctx.db.session() as s:
        rows = data.projects_overview(s)
    if caller.project is not None:
        rows = [r for r in rows if r["name"] == caller.project]
    return page(request, "projects.html", user=caller.name, projects=rows)


@router.get("/p/{project}", response_class=HTMLResponse, openapi_extra=SESSION_ACCESS)
def project_page(
    project: str,
    request: Request,
    user: str = Depends(current_user),
    ctx: Context = Depends(get_ctx),
) -> HTMLResponse:
    with ctx.db.session() as s:
        d = data.project_page(s, project)
    return page(request, "project.html", user=user, d=d, figures=project_figures(d))


def project_figures(d: dict[str, Any]) -> dict[str, Any]:
    """The project page's charts, from the page data."""
    growth = [(t.timestamp(), n) for t, n in d["growth"]]
    models = d["models"]
    metric = models[-1]["metric"] if models else "metric"
    over_versions = [(i + 1, m["value"]) for i, m in enumerate(models) if m["value"] is not None]
    al_curve = [
        (m["train_images"], m["value"])
        for m in models
        if m["value"] is not None and m["train_images"] is not None
    ]
    n_models = max(len(models), 1)
    lo_img = min((x for x, _ in al_curve), default=0)
    hi_img = max((x for x, _ in al_curve), default=1)
    return {
        "growth": charts.line_chart(
            {"labelled images": growth},
            title="label growth",
            x_label="time (UTC)",
            x_ticks=charts.time_ticks(growth[0][0], growth[-1][0]) if growth else None,
            y_label="labelled images",
            kind="growth",
            step=True,
        ),
        "metric": charts.line_chart(
            {metric: over_versions},
            title=f"test {metric} per model version",
            x_label="model version (oldest first)",
            x_ticks=charts.int_ticks(1, n_models),
            y_label=f"test {metric}",
            kind="metric",
            zero=False,
        ),
        "al_curve": charts.line_chart(
            {metric: al_curve},
            title="active-learning curve",
            x_label="labelled images in the dataset version",
            x_ticks=charts.int_ticks(lo_img, hi_img if hi_img > lo_img else lo_img + 1),
            y_label=f"test {metric}",
            kind="al_curve",
            zero=False,
        ),
    }


@router.get("/p/{project}/live.json", openapi_extra=SESSION_ACCESS)
def project_live(
    project: str, user: str = Depends(current_user), ctx: Context = Depends(get_ctx)
) -> JSONResponse:
    """What the project page refreshes without a reload: its pipeline runs and counts."""
    with ctx.db.session() as s:
        p = data.get_project(s, project)
        body = {"pipelines": data.pipeline_rows(s, p.id), "counts": data.image_counts(s, p.id)}
    return JSONResponse(body)


_cache_lock = threading.Lock()
EVAL_CACHE = 8  # model versions whose per-image test results a server process keeps


def evaluation(request: Request, ctx: Context, mv_id: int) -> list[dict[str, Any]]:
    """Per-image test predictions of a model version, computed once per process (model
    versions are immutable) for the most recently viewed EVAL_CACHE versions."""
    cache: OrderedDict[int, list[dict[str, Any]]] = request.app.state.web_eval
    with _cache_lock:
        if mv_id not in cache:
            cache[mv_id] = test_predictions(ctx, mv_id)
        cache.move_to_end(mv_id)
        while len(cache) > EVAL_CACHE:
            cache.popitem(last=False)
        return cache[mv_id]


@router.get("/models/{name}", response_class=HTMLResponse, openapi_extra=SESSION_ACCESS)
def model_version_page(
    name: str,
    request: Request,
    user: str = Depends(current_user),
    ctx: Context = Depends(get_ctx),
) -> HTMLResponse:
    d = model_version_data(ctx, name, evaluation(request, ctx, model_version_id(ctx, name)))
    return page(request, "model_version.html", user=user, d=d, figures=model_figures(d))


def model_version_id(ctx: Context, name: str) -> int:
    with ctx.db.session() as s:
        return data.get_model_version(s, name).id


def model_version_data(ctx: Context, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    with ctx.db.session() as s:
        mv = data.get_model_version(s, name)
        project = s.get(Project, mv.project_id)
        labels = [lc.name for lc in project.labels]
        metric, value = data.primary(mv.metrics)
        test = dict(mv.metrics.get("test") or {})
        promos = [p for p in data.promotions(s, project.id) if p["model"] == mv.name]
        info = {
            "id": mv.id,
            "name": mv.name,
            "project": project.name,
            "task": project.task,
            "stage": mv.stage,
            "metric": metric,
            "value": value,
            "sha256": mv.sha256,
            "created_at": data._iso(mv.created_at),
            "epochs": mv.metrics.get("epochs"),
            "train_seconds": mv.metrics.get("train_seconds"),
            "comparison": mv.metrics.get("comparison"),
        }
        # What `models` and `status` say under their tables about this version.
        warnings = model_warnings(version_fields(mv, project.task))
    per_class = test.pop("per_class", {}) or {}
    confusion = test.pop("confusion_matrix", None)
    columns: list[str] = []
    for entry in per_class.values():
        columns += [k for k, v in entry.items() if k not in columns and not isinstance(v, dict)]
    summary = {k: v for k, v in test.items() if isinstance(v, int | float | str)}
    return {
        "mv": info,
        "warnings": warnings,
        "labels": labels,
        "summary": summary,
        "per_class": per_class,
        "columns": columns,
        "confusion": confusion,
        "confusion_labels": test.get("labels") or labels,
        "promotions": promos,
        "rows": rows,
        "reliability": reliability(rows),
    }


def model_figures(d: dict[str, Any]) -> dict[str, Any]:
    counts = [
        (float(r["truth"].get(lb, 0)), float(r["counts"].get(lb, 0)), lb)
        for r in d["rows"]
        for lb in d["labels"]
        if r["true_label"] is None  # image-level labels are not counts
    ]
    figs: dict[str, Any] = {
        "counts": charts.scatter(
            counts,
            title="predicted vs true count per test image",
            x_label="true count (annotated)",
            y_label="predicted count",
            kind="counts",
        ),
    }
    if d["confusion"]:
        figs["confusion"] = charts.heatmap(
            d["confusion"], d["confusion_labels"], title="confusion matrix"
        )
    if d["reliability"]:
        figs["reliability"] = charts.scatter(
            [(b["confidence"], b["accuracy"], "test images") for b in d["reliability"]],
            title="reliability diagram",
            x_label="confidence",
            y_label="accuracy",
            kind="reliability",
        )
    return figs


@router.get("/models/{name}/test/{image_id}/{side}.png", openapi_extra=SESSION_ACCESS)
def test_overlay(
    name: str,
    image_id: int,
    side: str,
    request: Request,
    user: str = Depends(current_user),
    ctx: Context = Depends(get_ctx),
) -> Response:
    """A test image with the model's prediction (`pred`) or the annotation (`truth`)."""
    if side not in ("pred", "truth"):
        raise NotFoundError(f"no overlay {side!r}: pred or truth")
    mv_id = model_version_id(ctx, name)
    row = next((r for r in evaluation(request, ctx, mv_id) if r["image_id"] == image_id), None)
    if row is None:
        raise NotFoundError(f"image {image_id} is not in the test split of {name}")
    shapes = row["pred_shapes"] if side == "pred" else row["true_shapes"]
    return _overlay_response(ctx, image_id, shapes, mv_id=mv_id)


def _overlay_response(
    ctx: Context, image_id: int, shapes_json: list, *, mv_id: int | None = None, project_id=None
) -> Response:
    with ctx.db.session() as s:
        img = s.get(Image, image_id)
        if img is None:
            raise NotFoundError(f"no image with id {image_id}")
        pid = project_id or s.get(ModelVersion, mv_id).project_id
        labels = [lc.name for lc in s.get(Project, pid).labels]
        key = img.blob_key
    png = overlay_png(ctx.blobs.get_bytes(key), shapes_from_json(shapes_json), labels)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/rounds/{round_id}", response_class=HTMLResponse, openapi_extra=SESSION_ACCESS)
def round_page(
    round_id: int,
    request: Request,
    user: str = Depends(current_user),
    ctx: Context = Depends(get_ctx),
) -> HTMLResponse:
    return page(request, "round.html", user=user, d=round_data(ctx, round_id))


def round_data(ctx: Context, round_id: int) -> dict[str, Any]:
    batch = round_batch(ctx, round_id)
    with ctx.db.session() as s:
        rnd = s.get(AnnotationRound, round_id)
        pushed = data.pushed_tasks(s, round_id)
        rows = {r["id"]: r for r in data.round_rows(s, rnd.project_id)}
    items = []
    for t in batch.specs:
        items.append(
            {
                "image_id": t.image_id,
                "rank": t.rank,
                "uncertainty": t.uncertainty,
                "counts": t.counts,
                "batch": t.batch,
                "went_to": [dict(p, link=_task_link(p)) for p in pushed.get(t.image_id, [])],
            }
        )
    return {
        "round": rows[round_id],
        "project": batch.project,
        "task": batch.task,
        "model": batch.model_version,
        "labels": batch.labels,
        "items": items,
    }


def _task_link(p: dict[str, str]) -> str | None:
    if p["target"] == "labelstudio" and p["destination"].startswith("http"):
        return f"{p['destination']}/data?task={p['task']}"
    if p["destination"].startswith("http"):
        return p["destination"]
    return None


@router.get("/rounds/{round_id}/images/{image_id}.png", openapi_extra=SESSION_ACCESS)
def round_overlay(
    round_id: int,
    image_id: int,
    user: str = Depends(current_user),
    ctx: Context = Depends(get_ctx),
) -> Response:
    """An image of a round with the prediction it was sent out with."""
    shapes, pid = round_prediction(ctx, round_id, image_id)
    return _overlay_response(ctx, image_id, shapes, project_id=pid)


def round_prediction(ctx: Context, round_id: int, image_id: int) -> tuple[list, int]:
    """The prediction (canonical shapes JSON) an image of a round went out with, and the
    round's project id."""
    with ctx.db.session() as s:
        rnd = s.get(AnnotationRound, round_id)
        if rnd is None:
            raise NotFoundError(f"no annotation round with id {round_id}")
        q = select(Score).where(
            Score.model_version_id == rnd.model_version_id, Score.image_id == image_id
        )
        if (rnd.params or {}).get("method"):
            q = q.where(Score.method == rnd.params["method"])
        sc = s.scalars(q.limit(1)).first()
        key = (sc.details or {}).get("shapes_key") if sc else None
        pid = rnd.project_id
    return (json.loads(ctx.blobs.get_bytes(key)) if key else []), pid


def mount(app: FastAPI) -> None:
    """Add the dashboard to the API app: pages at /, static files at /static."""

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(f"/login?next={exc.next_url}", status_code=303)

    app.state.web_eval = OrderedDict()
    app.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    app.include_router(router)
