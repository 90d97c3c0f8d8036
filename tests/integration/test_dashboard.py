"""The dashboard as a user sees it: `labelloop serve` on PostgreSQL with a trained project,
driven by a real headless Chromium. Log in, open each page kind, charts and galleries
render with no console error, every image loads, figures equal the database; a running
pipeline's progress moves on the project page without a reload."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from sqlalchemy import select

from labelloop.context import Context, set_context
from labelloop.db.models import ModelVersion, RoundItem
from tests.factories import trained_project
from tests.integration.browser import screenshot
from tests.integration.conftest import WorkerProcess
from tests.integration.services import ApiServer, wait_for

pytestmark = pytest.mark.integration

TOKEN = "t-" + uuid.uuid4().hex
ALL_IMAGES_LOADED = (
    "() => Array.from(document.images).length > 0 && "
    "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
)


@pytest.fixture(scope="module")
def world(service_env, service_settings, tmp_path_factory):
    """A trained, scored project with a pushed round, an untrained one to retrain live,
    and `labelloop serve` in its own process."""
    from labelloop.push.stage import push_round
    from labelloop.scoring.stage import score_pool
    from labelloop.selection import select_round

    tmp = tmp_path_factory.mktemp("dashboard")
    ctx = Context(service_settings)
    set_context(ctx)
    name = f"smears-{uuid.uuid4().hex[:6]}"
    _, mv = trained_project(ctx, name, tmp / "a", labelled=8, pool=4)
    score_pool(ctx, mv)
    rnd = select_round(ctx, name, budget=3, model_version_id=mv)
    push_round(ctx, rnd.round_id, "file", out_dir=tmp / "out")
    live = f"live-{uuid.uuid4().hex[:6]}"
    trained_project(ctx, live, tmp / "b", labelled=8, pool=2, train=False)
    env = {**service_env, "LABELLOOP_API_TOKENS": json.dumps({"ml": TOKEN})}
    server = ApiServer(env, tmp / "serve.log", TOKEN)
    try:
        server.wait_ready(timeout=240)  # startup imports torch: slow on a loaded machine
        yield {
            "ctx": ctx,
            "server": server,
            "env": env,
            "project": name,
            "live": live,
            "mv": mv,
            "round": rnd.round_id,
        }
    finally:
        server.stop()
        set_context(None)
        ctx.close()


def _log_in(page, url: str, next_path: str = "/") -> None:
    page.goto(f"{url}{next_path}")
    assert "/login" in page.url  # no session yet: the log-in page
    page.fill("#token", "wrong")
    page.click("#login")
    assert page.locator("#login-error").inner_text() == "unknown token"
    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(f"{url}{next_path}")


def _all_images_loaded(page) -> None:
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(ALL_IMAGES_LOADED, timeout=60_000)


def test_every_page_kind_renders_the_database(world, page):
    url, project, ctx = world["server"].url, world["project"], world["ctx"]
    _log_in(page, url)
    row = page.locator(f'tr[data-project="{project}"]')
    assert row.locator('[data-field="labelled"]').inner_text() == "8"
    assert row.locator('[data-field="unlabeled"]').inner_text() == "4"
    assert row.locator('[data-field="out"]').inner_text() == "3"
    screenshot(page, "dashboard-projects")

    row.locator("a").first.click()
    page.wait_for_url(f"{url}/p/{project}")
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, world["mv"])
        metric = mv.metrics.get("primary_metric") or "mean_dice"
        value, name, per_class = (
            mv.metrics["test"][metric],
            mv.name,
            mv.metrics["test"]["per_class"],
        )
    points = json.loads(page.locator('svg[data-chart="metric"]').get_attribute("data-points"))
    assert points == {metric: [[1, value]]}
    growth = json.loads(page.locator('svg[data-chart="growth"]').get_attribute("data-points"))
    assert growth["labelled images"][-1][1] == 8
    model_row = page.locator(f'tr[data-model="{name}"]')
    assert model_row.locator('[data-field="value"]').inner_text() == f"{value:.3f}"
    assert page.locator('tr[data-round="1"] [data-field="progress"]').inner_text() == "0/3"
    assert page.locator('tr[data-version="1"] [data-field="added"]').inner_text() == "8"
    screenshot(page, "dashboard-project")

    model_row.locator("a").first.click()
    page.wait_for_url(f"{url}/models/{name}")
    for label, entry in per_class.items():
        cell = page.locator(f'tr[data-class="{label}"] [data-field="dice"]')
        expect = "–" if entry["dice"] is None else f"{entry['dice']:.3f}"
        assert cell.inner_text() == expect
        # The plain baseline beside the model's count error, from the same evaluation.
        base = page.locator(f'tr[data-class="{label}"] [data-field="count_mae_constant"]')
        assert base.inner_text() == f"{entry['count_mae_constant']:.3f}"
    # The page says what `models` says of this version (here every training and test image
    # holds one object of each class, so the constant is exact and no model beats it).
    warning = page.locator("[data-warning]").first.inner_text()
    assert "no closer to the annotations than a constant" in warning
    errors = [
        int(e)
        for e in page.locator("#gallery .item").evaluate_all("els => els.map(e => e.dataset.error)")
    ]
    assert errors and errors == sorted(errors, reverse=True)
    assert page.locator('svg[data-chart="counts"] circle').count() == len(errors) * 3
    _all_images_loaded(page)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dashboard-model-version")

    page.goto(f"{url}/p/{project}")
    page.locator('tr[data-round="1"] a').click()
    page.wait_for_url(f"{url}/rounds/{world['round']}")
    with ctx.db.session() as s:
        ranked = list(
            s.scalars(
                select(RoundItem.image_id)
                .where(RoundItem.round_id == world["round"])
                .order_by(RoundItem.rank)
            )
        )
    shown = page.locator("#gallery .item").evaluate_all("els => els.map(e => +e.dataset.image)")
    assert shown == ranked
    _all_images_loaded(page)
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "dashboard-round")
    assert page.console_errors == []


def test_pipeline_progress_moves_without_a_reload(world, page, tmp_path):
    url, live = world["server"].url, world["live"]
    _log_in(page, url, f"/p/{live}")
    page.evaluate("window.__same_page = true")
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    body = {"recipe": {"epochs": 60, "batch_size": 2, "image_size": 64}}
    run_id = api.post(f"/projects/{live}/runs", json=body).json()["run"]["id"]
    worker = WorkerProcess(world["env"], tmp_path / "worker.log")
    try:
        worker.wait_ready(timeout=240)  # slow to import on a loaded machine
        _watch_progress(page, api, run_id)
    finally:
        worker.stop()


def _watch_progress(page, api: httpx.Client, run_id: int) -> None:
    row = page.locator(f'tr[data-run="{run_id}"]')
    row.wait_for(timeout=30_000)  # the new run appears without a reload

    def epoch() -> int:
        text = row.locator('[data-field="epoch"]').inner_text()
        return int(text.split("epoch ")[1].split("/")[0]) if "epoch " in text else 0

    first = wait_for(epoch, 300, "the page to show the first epoch", every=0.5)
    wait_for(lambda: epoch() >= first + 2, 300, "the page to show later epochs", every=0.5)
    curve = json.loads(row.locator("svg.spark").get_attribute("data-points"))
    assert len(curve) >= 2 and all(loss > 0 for _, loss in curve)
    assert row.locator('[data-field="stage"]').inner_text() == "train"
    screenshot(page, "dashboard-live-pipeline")
    assert api.post(f"/runs/{run_id}/cancel", json={"reason": "enough"}).status_code == 200
    wait_for(
        lambda: row.locator('[data-field="status"]').inner_text() == "cancelled",
        60,
        "the page to show the run cancelled",
    )
    assert page.evaluate("window.__same_page") is True  # never reloaded
    assert page.console_errors == []
