"""Projects and their label classes: the root every other row hangs from."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from labelloop.db.models import LabelClass, Project
from labelloop.domain import TaskKind
from labelloop.errors import ConfigError, InputError, NotFoundError
from labelloop.kinds import kind_entry

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
PALETTE = {"RBC": "#e53935", "WBC": "#8e24aa", "Platelets": "#fb8c00"}
_FALLBACK = ["#1e88e5", "#43a047", "#fdd835", "#00acc1", "#6d4c41", "#d81b60", "#546e7a"]


def create_project(s: Session, name: str, task: str, labels: list[str]) -> tuple[Project, bool]:
    """Create a project, or return the existing one when it matches exactly (idempotent).

    Returns (project, created). A same-named project with other labels is an error rather
    than a silent change, because label indices are baked into trained models."""
    if not _NAME.match(name):
        raise InputError(f"invalid project name {name!r}: use letters, digits, '_', '-', '.'")
    try:
        kind = TaskKind(task)
    except ValueError:
        raise InputError(
            f"unknown task {task!r}; choose one of: {', '.join(t.value for t in TaskKind)}"
        ) from None
    clean = [lb.strip() for lb in labels if lb.strip()]
    if not clean:
        raise InputError("a project needs at least one label")
    if len(set(clean)) != len(clean):
        raise InputError(f"duplicate labels in {clean}")
    existing = s.scalar(select(Project).where(Project.name == name))
    if existing is not None:
        have = [lc.name for lc in existing.labels]
        if existing.task != kind.value or have != clean:
            raise InputError(
                f"project {name!r} already exists with task {existing.task} and labels {have}"
            )
        return existing, False
    project = Project(name=name, task=kind.value)
    for i, lb in enumerate(clean):
        color = PALETTE.get(lb, _FALLBACK[i % len(_FALLBACK)])
        project.labels.append(LabelClass(name=lb, index=i, color=color))
    s.add(project)
    s.flush()
    return project, True


def get_project(s: Session, name: str) -> Project:
    project = s.scalar(select(Project).where(Project.name == name))
    if project is None:
        names = s.scalars(select(Project.name).order_by(Project.name)).all()
        hint = f"; existing projects: {', '.join(names)}" if names else "; none exist yet"
        raise NotFoundError(f"no project named {name!r}{hint}")
    return project


def label_names(project: Project) -> list[str]:
    return [lc.name for lc in project.labels]


def draw_kind(project: Project) -> str:
    """The shape kind the project's annotators draw (its `draw` setting, else the task's
    default): what its Label Studio labeling config offers as the one tool."""
    return kind_entry(project.task).draw_kind((project.settings or {}).get("draw"))


def set_draw(project: Project, kind: str) -> None:
    """Choose the tool annotators draw with (e.g. polygons instead of the brush for a
    segmentation project); InputError names the kinds the task allows."""
    try:
        kind_entry(project.task).draw_kind(kind)
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    project.settings = {**(project.settings or {}), "draw": kind}
