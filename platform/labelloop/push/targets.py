"""Where a round can be pushed: one line per target.

A target lives with its tool (`labelloop.labelstudio.push`, `labelloop.cvat.push`) or, for
the tool-neutral folder, in `labelloop.push.file`; it is named here by module path and
imported on first use, so the push stage never imports a tool package. The CLI
(`push --to`), the API, pipeline parameters and help texts all read this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from labelloop.errors import ConfigError


@dataclass(frozen=True)
class PushTarget:
    name: str
    function: str  # "module:function" taking (ctx, round_id, PushOptions) -> PushResult
    description: str  # one line, for help texts

    def load(self) -> Callable[..., Any]:
        return load_function(self.function)


TARGETS: dict[str, PushTarget] = {
    t.name: t
    for t in (
        PushTarget(
            "file",
            "labelloop.push.file:push_to_file",
            "a folder to import by hand: the images, Label Studio tasks.json and labeling "
            "config, CVAT 1.1 XML, a CSV of ranks and predicted counts",
        ),
        PushTarget(
            "labelstudio",
            "labelloop.labelstudio.push:push_to_labelstudio",
            "tasks with predictions in a Label Studio project, a sorted tab per round "
            "(LABELLOOP_LABELSTUDIO_URL, _TOKEN)",
        ),
        PushTarget(
            "cvat",
            "labelloop.cvat.push:push_to_cvat",
            "a CVAT task with the predictions via cvat-sdk (LABELLOOP_CVAT_URL, _TOKEN or "
            "_USER + _PASSWORD); writes the folder too",
        ),
    )
}
NAMES: tuple[str, ...] = tuple(TARGETS)


def get_target(name: str) -> PushTarget:
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown push target {name!r}; choose one of: {', '.join(NAMES)}"
        ) from None


def targets_help() -> str:
    """The targets and what each does, for `--help` and API descriptions."""
    return "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values())


def load_function(path: str) -> Callable[..., Any]:
    """The function a "module:function" path names, imported now."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)
