"""The Data Manager tab of a round: what annotators see first in Label Studio.

A tab made through the API without column settings shows the prediction score, model
version, "Completed" and "Annotated by" columns empty (Label Studio computes only the
columns a view declares visible), keeps the thumbnail and our fields 3,000 px to the
right behind twenty built-in columns, and sorts data fields as text. So a round's tab
declares:

- `hiddenColumns`: every built-in column but the few an annotator reads (id, completed,
  annotated by, prediction score and model version) and our internal fields, in both the
  table (`explore`) and the side list while labeling (`labeling`);
- `columnsDisplayType`: rank, uncertainty and the predicted counts are Numbers, so they
  display as numbers and sort numerically (on a PostgreSQL-backed Label Studio a String
  column sorts "10" before "9");
- `ordering`: by rank, the order the selection strategy chose.

Label Studio keeps a user's own column order (dragged headers) in the browser, not in
the view, so the tab cannot move columns; with the rest hidden, the columns it shows fit
on one screen. Tabs of rounds that are closed (every image annotated) are removed when
the next round is pushed.
"""

from __future__ import annotations

from typing import Any

from labelloop.errors import ExternalServiceError
from labelloop.labelstudio.client import LabelStudioClient

TASKS = "tasks:"
ROUND_FIELD = "labelloop_round"
BATCH_FIELD = "labelloop_batch"
# Our bookkeeping fields: needed to find and filter tasks, noise to an annotator.
INTERNAL_FIELDS = ("labelloop_key", "labelloop_image_id", ROUND_FIELD, BATCH_FIELD)
# Built-in Label Studio (1.23) columns an annotator does not need in a round's tab.
HIDDEN_BUILTINS = (
    "inner_id",
    "total_annotations",
    "cancelled_annotations",
    "total_predictions",
    "annotations_results",
    "annotations_ids",
    "predictions_results",
    "file_upload",
    "storage_filename",
    "created_at",
    "updated_at",
    "updated_by",
    "avg_lead_time",
    "draft_exists",
)
# Built-in columns the tab shows (Label Studio's "visible by default" leaves the last two
# hidden, and computes none of them for an API-made view without hiddenColumns).
SHOWN_BUILTINS = (
    "id",
    "completed_at",
    "annotators",
    "predictions_score",
    "predictions_model_versions",
)
PREDICTED_PREFIX = "pred_"  # + label: the model's count of that class in the image


def tab_title(number: int, batch: int | None = None) -> str:
    """Short: a tab strip shows a dozen of these side by side."""
    return f"Round {number}" if batch is None else f"Round {number} · B{batch}"


def numeric_fields(labels: list[str]) -> list[str]:
    """The task data fields the tab shows as numbers, in the order they are shown."""
    return ["rank", "uncertainty", *(PREDICTED_PREFIX + lab for lab in labels)]


def round_view_data(number: int, labels: list[str], batch: int | None = None) -> dict[str, Any]:
    """The `data` of a round's tab (one annotator batch when `batch` is set)."""
    equals: dict[str, int] = {ROUND_FIELD: number}
    if batch is not None:
        equals[BATCH_FIELD] = batch
    hidden = [TASKS + c for c in HIDDEN_BUILTINS] + [f"{TASKS}data.{f}" for f in INTERNAL_FIELDS]
    return {
        "title": tab_title(number, batch),
        "type": "list",
        "target": "tasks",
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": f"filter:{TASKS}data.{name}",
                    "operator": "equal",
                    "type": "Number",
                    "value": value,
                }
                for name, value in equals.items()
            ],
        },
        "ordering": [f"{TASKS}data.rank"],
        "hiddenColumns": {"explore": hidden, "labeling": hidden},
        "columnsDisplayType": {f"{TASKS}data.{f}": "Number" for f in numeric_fields(labels)},
    }


def view_round(view: dict[str, Any]) -> int | None:
    """The round a tab shows (by its filter on our round field), None for other tabs."""
    data = view.get("data") or {}
    for item in (data.get("filters") or {}).get("items") or []:
        if item.get("filter") == f"filter:{TASKS}data.{ROUND_FIELD}":
            try:
                return int(item.get("value"))
            except (TypeError, ValueError):
                return None
    return None


def ensure_view(client: LabelStudioClient, project_id: int, data: dict[str, Any]) -> int:
    """The tab titled `data["title"]`, created or updated in place (never duplicated).
    Returns its id."""
    title = data["title"]
    same = sorted(
        v["id"]
        for v in client.views(project_id)
        if v.get("id") is not None and (v.get("data") or {}).get("title") == title
    )
    if same:
        client.call(
            f"PATCH /api/dm/views/{same[0]}",
            lambda: client.sdk.views.update(str(same[0]), data=data, project=project_id),
        )
        return same[0]
    created = client.call(
        "POST /api/dm/views", lambda: client.sdk.views.create(data=data, project=project_id)
    )
    if created.id is None:
        raise ExternalServiceError(f"Label Studio at {client.url} created a view with no id")
    return created.id


def remove_closed_tabs(client: LabelStudioClient, project_id: int, closed: set[int]) -> list[int]:
    """Delete the tabs of closed rounds (and of their batches); returns their ids. Other
    tabs, including the users' own, are left alone."""
    gone = [v["id"] for v in client.views(project_id) if view_round(v) in closed]
    for view_id in gone:
        client.call(
            f"DELETE /api/dm/views/{view_id}", lambda v=view_id: client.sdk.views.delete(str(v))
        )
    return gone
