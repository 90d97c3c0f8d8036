"""The dashboard in process (FastAPI's TestClient) on an embedded project with a tiny
trained model, a scored pool, a round and a push: log-in, every page kind, figures equal
to the database."""

from __future__ import annotations

import json
import re
from html import unescape

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from labelloop.access import Caller, digest
from labelloop.db.models import ModelVersion, RoundItem
from labelloop.web.app import create_app
from labelloop.web.session import COOKIE, session_cookie, user_from_cookie
from tests.factories import trained_project

TOKENS = {"alice": "a" * 32}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One trained project shared by the module's tests (training is the slow part)."""
    from labelloop.config import Settings
    from labelloop.context import Context, set_context
    from labelloop.db import migrate
    from labelloop.push.stage import push_round
    from labelloop.scoring.stage import score_pool
    from labelloop.selection import select_round

    tmp = tmp_path_factory.mktemp("web")
    settings = Settings(
        data_dir=tmp / "data",
        database_url="",
        blob_url="",
        broker_url="memory://",
        result_backend="",
        redis_url="",
        api_tokens=TOKENS,
    )
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    _, mv = trained_project(ctx, "cells", tmp, labelled=8, pool=4)
    score_pool(ctx, mv)
    rnd = select_round(ctx, "cells", budget=3, model_version_id=mv)
    push_round(ctx, rnd.round_id, "file", out_dir=tmp / "out")
    app = create_app(settings)
    yield {"ctx": ctx, "app": app, "mv": mv, "round": rnd.round_id}
    set_context(None)
    ctx.close()


@pytest.fixture
def client(world):
    c = TestClient(world["app"])
    r = c.post("/login", data={"token": TOKENS["alice"], "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    return c


def test_pages_need_a_log_in_and_a_wrong_token_is_refused(world):
    c = TestClient(world["app"])
    r = c.get("/p/cells", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/p/cells"
    bad = c.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 200 and "unknown token" in bad.text
    assert COOKIE not in c.cookies
    forged = TestClient(world["app"], cookies={COOKIE: "alice:" + "0" * 64})
    assert forged.get("/", follow_redirects=False).status_code == 303
    # An open redirect is refused: after log-in the user stays on this site.
    r = c.post("/login", data={"token": TOKENS["alice"], "next": "//evil"}, follow_redirects=False)
    assert r.headers["location"] == "/"


def test_session_cookie_is_bound_to_the_token():
    alice = Caller("alice", "read", sha256=digest("secret"))
    value = session_cookie(alice)
    assert user_from_cookie([alice], value) == alice
    rotated = Caller("alice", "read", sha256=digest("rotated"))
    assert user_from_cookie([rotated], value) is None
    assert user_from_cookie([], value) is None
    assert user_from_cookie([alice], "garbage") is None
    # the same digest under another name signs nothing
    assert user_from_cookie([Caller("bob", "read", sha256=alice.sha256)], value) is None


def _field(html: str, field: str) -> str:
    m = re.search(rf'data-field="{field}">([^<]*)<', html)
    assert m, field
    return m.group(1)


def test_projects_and_project_page_show_the_database(client, world):
    ctx = world["ctx"]
    home = client.get("/")
    assert home.status_code == 200 and 'href="/p/cells"' in home.text
    assert _field(home.text, "labelled") == "8"
    assert _field(home.text, "unlabeled") == "4"
    assert _field(home.text, "out") == "3"  # the round's images are out with annotators
    page = client.get("/p/cells")
    assert page.status_code == 200
    with ctx.db.session() as s:
        mv = s.get(ModelVersion, world["mv"])
        value = mv.metrics["test"][mv.metrics.get("primary_metric") or "mean_dice"]
        name = mv.name
    assert f'href="/models/{name}"' in page.text
    assert _field(page.text, "value") == f"{value:.3f}"
    assert 'data-chart="growth"' in page.text and 'data-chart="metric"' in page.text
    assert 'data-field="progress">0/3<' in page.text
    assert _field(page.text, "added") == "8"  # the first dataset version adds every image
    live = client.get("/p/cells/live.json").json()
    assert live["counts"] == {"total": 12, "labelled": 8, "unlabeled": 4, "out": 3}


def test_model_version_page_gallery_worst_first(client, world):
    with world["ctx"].db.session() as s:
        name = s.get(ModelVersion, world["mv"]).name
    page = client.get(f"/models/{name}")
    assert page.status_code == 200
    assert 'id="per-class"' in page.text and 'data-class="RBC"' in page.text
    # Every image holds one object of each class: the constant count is exact, the page
    # shows its error beside the model's and says the model's counts show nothing.
    assert _field(page.text, "count_mae_constant") == "0.000"
    assert "data-warning>" in page.text
    assert "no closer to the annotations than a constant" in page.text
    errors = [int(e) for e in re.findall(r'data-error="(\d+)"', page.text)]
    assert errors and errors == sorted(errors, reverse=True)
    image = re.search(r'data-image="(\d+)"', page.text).group(1)
    for side in ("pred", "truth"):
        png = client.get(f"/models/{name}/test/{image}/{side}.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get(f"/models/{name}/test/{image}/other.png").status_code == 404
    assert client.get("/models/nope").status_code == 404


def test_round_page_lists_the_round_in_rank_order(client, world):
    rid = world["round"]
    page = client.get(f"/rounds/{rid}")
    assert page.status_code == 200
    with world["ctx"].db.session() as s:
        images = list(
            s.scalars(
                select(RoundItem.image_id).where(RoundItem.round_id == rid).order_by(RoundItem.rank)
            )
        )
        assert s.scalar(select(func.count()).where(RoundItem.round_id == rid)) == 3
    assert [int(i) for i in re.findall(r'data-image="(\d+)"', page.text)] == images
    assert page.text.count("file: ") == 3  # where each went
    png = client.get(f"/rounds/{rid}/images/{images[0]}.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/static/live.js").status_code == 200


def test_reports_are_self_contained_and_printed(world, tmp_path):
    from labelloop.web.report import chromium, model_version_report, round_report
    from tests.support import require

    require(chromium() is not None, "chromium is not installed (Debian package `chromium`)")
    ctx = world["ctx"]
    with ctx.db.session() as s:
        name = s.get(ModelVersion, world["mv"]).name
    written = model_version_report(ctx, name, tmp_path / "mv")
    assert sorted(written) == ["html", "json", "pdf"]
    html = written["html"].read_text()
    # Offline: no stylesheet, script or image is fetched from anywhere.
    assert not re.search(r'(src|href)="(https?:|/static)', html)
    body = json.loads(written["json"].read_text())
    assert html.count('src="data:image/png;base64,') == 2 * len(body["test_images"])
    assert body["model_version"]["name"] == name
    assert written["pdf"].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in (tmp_path / "mv").iterdir()) == [
        "report.html",
        "report.json",
        "report.pdf",
    ]

    written = round_report(ctx, "cells", 1, tmp_path / "round", pdf=False)
    assert sorted(written) == ["html", "json"]
    body = json.loads(written["json"].read_text())
    assert [it["rank"] for it in body["items"]] == [1, 2, 3]
    assert written["html"].read_text().count('src="data:image/png;base64,') == 3


def test_report_cli_names_what_is_missing(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from labelloop.cli.main import app

    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(world["ctx"].settings.data_dir))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    res = CliRunner().invoke(app, ["report", "round", "7", "-p", "cells", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "project 'cells' has no round 7" in res.output
    assert list(tmp_path.iterdir()) == []
    res = CliRunner().invoke(
        app, ["report", "model-version", "nope", "--out", str(tmp_path / "x"), "--no-pdf"]
    )
    assert res.exit_code == 2 and "no model version named 'nope'" in res.output


def test_count_report_claims_95_percent_intervals_only_when_calibrated(tmp_path):
    from labelloop.counting.report import CountReport, ImageCount
    from labelloop.objects import interval_basis
    from labelloop.web.report import count_report

    iv = {"RBC": {"expected": 9.5, "low": 6.0, "high": 13.0, "sd": 1.8}}
    for margin, head in ((None, "interval (not calibrated)"), ({"RBC": 2.0}, "interval (95 %)")):
        r = CountReport("m1", ["RBC"], tmp_path, interval_margin=margin)
        r.images.append(ImageCount("a.png", {"RBC": 10}, {"RBC": 14}, intervals=iv))
        out = tmp_path / str(bool(margin))
        html = count_report(r.to_json(), out, pdf=False)["html"].read_text()
        assert re.search(r'data-field="interval-head">([^<]*)<', html).group(1) == head
        said = re.search(r"data-interval-basis>([^<]*)</p>", html).group(1)
        assert unescape(said) == interval_basis(margin) + "."
        assert ("interval (95" in html) == bool(margin)


def test_count_report_inlines_overlays_and_plots_against_truth(world, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from labelloop.cli.main import app
    from labelloop.web.report import chromium
    from tests.factories import png
    from tests.support import require

    require(chromium() is not None, "chromium is not installed (Debian package `chromium`)")
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(world["ctx"].settings.data_dir))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "labelled.png").write_bytes(png(seed=0))  # image 0 of the labelled export
    (folder / "new.png").write_bytes(png(seed=99))
    out = tmp_path / "out"
    args = ["count", str(folder), "-p", "cells", "--out", str(out), "--report", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    counts = json.loads(res.output)
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 2
    found = re.search(r'data-chart="counts" data-points="([^"]*)"', html)
    points = json.loads(unescape(found.group(1)))
    truth = [im for im in counts["images"] if im["truth"]]
    assert len(points) == 3 * len(truth) >= 3
    # It says which labelled images the figures rest on (held out or not).
    held = "held-out" if counts["compared"]["held_out"] else "training/validation"
    assert re.search(rf"data-compared>True counts: 1 {held} labelled images", html)
    # Each class total carries the interval of the summed count: the images' variances
    # add, and so do their margins.
    margins = counts["interval_margin"] or {}
    for lb in counts["labels"]:
        ivs = [im["intervals"][lb] for im in counts["images"] if lb in im["intervals"]]
        if ivs:
            mid = sum(iv["expected"] for iv in ivs)
            half = 1.96 * np.sqrt(sum(iv["sd"] ** 2 for iv in ivs))
            half += len(ivs) * margins.get(lb, 0.0)
            low, high = round(max(0.0, mid - half)), round(mid + half)
            assert counts["interval_totals"][lb]["high"] == pytest.approx(mid + half, abs=0.01)
            row = re.search(rf'data-class="{lb}".*?data-field="interval">([^<]*)<', html)
            assert row.group(1) == f"{low}–{high}"
    # What the command warned about is in the report too (a PDF travels without the terminal).
    shown = re.findall(r"<p class=\"warning\" data-warning>([^<]*)</p>", html)
    assert counts["warnings"] and [unescape(w) for w in shown] == counts["warnings"]
    assert (out / "report.pdf").read_bytes()[:5] == b"%PDF-"
    assert json.loads((out / "report.json").read_text())["totals"] == counts["totals"]
