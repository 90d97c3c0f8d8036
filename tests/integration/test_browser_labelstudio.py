"""What annotators see, in a real browser: headless Chromium logs in to the real Label
Studio server, opens a round's tab and a task of it."""

from __future__ import annotations

import pytest

from labelloop.push.stage import push_round
from labelloop.scoring.stage import score_pool
from labelloop.selection import select_round
from tests.factories import trained_project
from tests.integration.browser import screenshot

pytestmark = [pytest.mark.integration, pytest.mark.labelstudio]


def _login(page, labelstudio) -> None:
    page.goto(f"{labelstudio.url}/user/login")
    page.fill("input[name=email]", labelstudio.username)
    page.fill("input[name=password]", labelstudio.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)


SHOWN = [
    "tasks:id",
    "tasks:completed_at",
    "tasks:annotators",
    "tasks:predictions_score",
    "tasks:predictions_model_versions",
    "tasks:data.image",
    "tasks:data.rank",
    "tasks:data.uncertainty",
    "tasks:data.pred_RBC",
    "tasks:data.pred_WBC",
    "tasks:data.pred_Platelets",
]


def _table(page) -> tuple[list[str], list[list[str]]]:
    """The Data Manager's visible column ids and each row's cell texts, in order."""
    headers = page.eval_on_selector_all("span.lsf-th[data-id]", "els => els.map(e => e.dataset.id)")
    rows = page.eval_on_selector_all(
        "[data-testid=table-row]",
        "rows => rows.map(r => Array.from(r.querySelectorAll(':scope > .lsf-table__cell'))"
        ".slice(1).map(c => c.innerText.trim()))",
    )
    return headers, rows


def test_round_tab_and_task_as_an_annotator_sees_them(ctx, labelstudio, page, tmp_path):
    _, mv = trained_project(ctx, "browser", tmp_path, labelled=6, pool=10, pool_seed=600)
    score_pool(ctx, mv)
    # Ten images: ranks 1..10, which a text sort would order 1, 10, 2, ...
    rnd = select_round(ctx, "browser", budget=10, strategy="uncertainty", model_version_id=mv)
    pushed = push_round(
        ctx,
        rnd.round_id,
        "labelstudio",
        url=labelstudio.url,
        token=labelstudio.token,
        title="Blood smears",
    )
    ls_project = int(pushed.destination.rsplit("/", 1)[1])
    _login(page, labelstudio)
    page.goto(f"{labelstudio.url}/projects/{ls_project}/data?tab={pushed.views[0]}")
    page.wait_for_selector("[data-testid=table-row]", timeout=90_000)
    page.wait_for_function(
        "document.querySelectorAll('[data-testid=table-row]').length >= 10", timeout=60_000
    )
    headers, rows = _table(page)
    assert headers == SHOWN  # what annotators read, first; nothing internal
    col = {h: i for i, h in enumerate(headers)}
    ranks = [int(r[col["tasks:data.rank"]]) for r in rows]
    assert ranks == list(range(1, 11))  # sorted by rank, numerically
    unc = [float(r[col["tasks:data.uncertainty"]]) for r in rows]
    assert unc == sorted(unc, reverse=True)  # least confident first
    assert all(len(r[col["tasks:data.uncertainty"]].split(".")[-1]) <= 3 for r in rows)
    assert {r[col["tasks:predictions_model_versions"]] for r in rows} == {pushed.model_version}
    scores = [float(r[col["tasks:predictions_score"]]) for r in rows]
    assert scores == pytest.approx([1 - u for u in unc], abs=2e-3)  # computed, not blank
    page.wait_for_function(  # thumbnails load lazily; the screenshot should show them
        "Array.from(document.querySelectorAll('[data-testid=table-row] img'))"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=60_000,
    )
    screenshot(page, "annotators-round-tab")

    # The least confident task, opened: its prediction's regions are drawn.
    page.locator("[data-testid=table-row]").first.click()
    page.wait_for_selector("canvas", timeout=90_000)
    page.wait_for_selector(".lsf-outliner-item", timeout=60_000)
    from labelloop.labelstudio.client import LabelStudioClient

    ls = LabelStudioClient(labelstudio.url, labelstudio.token)
    first_task = int(pushed.id_map[rnd.items[0][0]])
    (pred,) = ls.predictions(first_task)
    drawn = page.locator(".lsf-outliner-item").count()
    # The regions list renders what fits on screen; every one is a predicted region.
    assert 1 <= drawn <= len(pred["result"]), (drawn, len(pred["result"]))
    titles = page.locator(".lsf-outliner-item__title").all_inner_texts()
    assert titles and set(titles) <= {"RBC", "WBC", "Platelets"}
    assert page.get_by_text(pushed.model_version).count() >= 1  # the prediction's model
    # One tool, so each label appears once under the image.
    assert page.locator(".lsf-label").count() in (0, 3)
    screenshot(page, "annotators-task")
