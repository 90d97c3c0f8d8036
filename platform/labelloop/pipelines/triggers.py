"""What starts a project's pipeline, and what the pipeline pulls from: per-project settings.

Stored in `project.settings["triggers"]` (schedule and webhook threshold) and
`project.settings["links"]` (live sources the pipeline syncs first), so they travel with
the project and need no table of their own. Every field is optional: an unset one falls
back to the global Settings (`nightly_cron`, `retrain_min_annotations`, ...), so changing
a default changes every project that did not choose otherwise.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from labelloop.config import Settings
from labelloop.db.models import Project
from labelloop.errors import InputError
from labelloop.push.targets import NAMES as PUSH_TARGETS

_CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")


def parse_cron(expr: str) -> dict[str, str]:
    """`m h dom mon dow` -> celery crontab keyword arguments; InputError says what is wrong.

    Checked by building celery's own crontab, so what passes here is what beat runs."""
    from celery.schedules import crontab

    parts = expr.split()
    if len(parts) != 5:
        raise InputError(f"a crontab has 5 fields (m h dom mon dow), got {expr!r}")
    fields = dict(zip(_CRON_FIELDS, parts, strict=True))
    try:
        crontab(**fields)
    except Exception as exc:  # celery raises ValueError and its own ParseException
        raise InputError(f"invalid crontab {expr!r}: {exc}") from None
    return fields


class ProjectTriggers(BaseModel):
    """A project's own choices; None = the global default."""

    model_config = ConfigDict(extra="forbid")

    active: bool = Field(True, description="False pauses the schedule and webhook retrains")
    cron: str | None = Field(None, description="beat crontab (m h dom mon dow)")
    min_annotations: int | None = Field(None, ge=1, description="events that start a retrain")
    debounce_s: float | None = Field(None, ge=0, description="quiet time before it starts")
    budget: int | None = Field(None, ge=1, description="images selected per round")
    push_to: str | None = Field(None, description=" | ".join(PUSH_TARGETS))
    recipe: dict[str, Any] = Field(
        default_factory=dict, description="recipe overrides every pipeline of the project uses"
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_cron(v)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("push_to")
    @classmethod
    def _push_to(cls, v: str | None) -> str | None:
        if v is not None and v not in PUSH_TARGETS:
            raise ValueError(f"push_to must be one of {', '.join(PUSH_TARGETS)}")
        return v


class EffectiveTriggers(BaseModel):
    """The values a pipeline of this project uses: its own, else the global defaults."""

    active: bool
    cron: str
    min_annotations: int
    debounce_s: float
    debounce_max_s: float
    budget: int
    push_to: str
    recipe: dict[str, Any]


def project_triggers(project: Project) -> ProjectTriggers:
    raw = (project.settings or {}).get("triggers") or {}
    try:
        return ProjectTriggers.model_validate(raw)
    except ValidationError as exc:  # written by an older version or by hand
        raise InputError(f"project {project.name!r} has invalid trigger settings: {exc}") from None


def effective_triggers(project: Project, settings: Settings) -> EffectiveTriggers:
    own = project_triggers(project)
    return EffectiveTriggers(
        active=own.active,
        cron=own.cron or settings.nightly_cron,
        min_annotations=own.min_annotations or settings.retrain_min_annotations,
        debounce_s=settings.retrain_debounce_s if own.debounce_s is None else own.debounce_s,
        debounce_max_s=settings.retrain_debounce_max_s,
        budget=own.budget or settings.nightly_budget,
        push_to=own.push_to or settings.nightly_push_to,
        recipe=own.recipe,
    )


def update_triggers(project: Project, changes: dict[str, Any]) -> ProjectTriggers:
    """Apply `changes` (field -> value; None resets a field to the default) and store."""
    current = project_triggers(project).model_dump()
    unknown = set(changes) - set(current)
    if unknown:
        raise InputError(
            f"unknown trigger settings {sorted(unknown)}; known: {', '.join(sorted(current))}"
        )
    try:
        updated = ProjectTriggers.model_validate({**current, **changes})
    except ValidationError as exc:
        raise InputError(_validation_message(exc)) from None
    settings = dict(project.settings or {})
    settings["triggers"] = updated.model_dump(exclude_defaults=True)
    project.settings = settings  # a new object, so the JSON column is written
    return updated


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors()
    )


# -- linked live sources ----------------------------------------------------------------


def labelstudio_links(project: Project) -> list[dict[str, Any]]:
    """Label Studio projects the pipeline syncs before freezing: {url, ls_project, ...}."""
    return list(((project.settings or {}).get("links") or {}).get("labelstudio") or [])


def link_labelstudio(
    project: Project,
    url: str,
    ls_project: int,
    *,
    label_map: dict[str, str] | None = None,
    webhook_id: int | None = None,
) -> dict[str, Any]:
    """Remember a Label Studio project as a source of this project (idempotent per
    server and project id); returns the stored link."""
    url = url.rstrip("/")
    links = [
        lk
        for lk in labelstudio_links(project)
        if (lk["url"], lk["ls_project"]) != (url, ls_project)
    ]
    link: dict[str, Any] = {"url": url, "ls_project": int(ls_project)}
    if label_map:
        link["label_map"] = dict(label_map)
    if webhook_id is not None:
        link["webhook_id"] = int(webhook_id)
    links.append(link)
    settings = dict(project.settings or {})
    settings["links"] = {**(settings.get("links") or {}), "labelstudio": links}
    project.settings = settings
    return link
