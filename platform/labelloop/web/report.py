"""Reports to hand to a lab: the model-version and round pages as one self-contained HTML
file (stylesheet and images inlined, opens offline), the same page printed to PDF by
headless Chromium, and the JSON behind it.

Everything is written to a staging folder inside `out` and moved into place at the end,
so a failure leaves no half-written report."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labelloop.context import Context
from labelloop.counting.report import SEEN_SPLITS
from labelloop.counting.testset import test_predictions
from labelloop.db.models import AnnotationRound, Image
from labelloop.domain import shapes_from_json
from labelloop.errors import ConfigError, NotFoundError
from labelloop.projects import get_project
from labelloop.web import charts, pages
from labelloop.web.overlay import overlay_png

PDF_TIMEOUT_S = 120


def chromium() -> str | None:
    return os.environ.get("LABELLOOP_CHROMIUM") or shutil.which("chromium")


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _image_bytes(ctx: Context, image_id: int) -> bytes:
    with ctx.db.session() as s:
        key = s.get(Image, image_id).blob_key
    return ctx.blobs.get_bytes(key)


def model_version_report(
    ctx: Context, name: str, out: Path, *, pdf: bool = True, gallery: int = 24
) -> dict[str, Path]:
    """`report.html`, `report.pdf` and `report.json` for model version `name` in `out`."""
    mv_id = pages.model_version_id(ctx, name)
    rows = test_predictions(ctx, mv_id)
    d = pages.model_version_data(ctx, name, rows)
    images = {}
    for r in rows[:gallery]:
        raw = _image_bytes(ctx, r["image_id"])
        for side in ("pred", "truth"):
            shapes = shapes_from_json(r["pred_shapes" if side == "pred" else "true_shapes"])
            images[(r["image_id"], side)] = _data_uri(overlay_png(raw, shapes, d["labels"]))
    html = pages.templates.get_template("model_version.html").render(
        d=d,
        figures=pages.model_figures(d),
        images=images,
        gallery_size=gallery,
        inline_css=_css(),
        user=None,
    )
    body = {
        "model_version": d["mv"],
        "labels": d["labels"],
        "test_metrics": d["summary"],
        "per_class": d["per_class"],
        "confusion_matrix": d["confusion"],
        "reliability": d["reliability"],
        "promotions": d["promotions"],
        "test_images": [
            {k: v for k, v in r.items() if k not in ("pred_shapes", "true_shapes")} for r in rows
        ],
    }
    return _write(out, html, body, pdf)


def round_report(
    ctx: Context, project: str, number: int, out: Path, *, pdf: bool = True
) -> dict[str, Path]:
    """`report.html`, `report.pdf` and `report.json` for round `number` of `project`."""
    with ctx.db.session() as s:
        pid = get_project(s, project).id
        rnd = s.scalar(
            select(AnnotationRound).where(
                AnnotationRound.project_id == pid, AnnotationRound.number == number
            )
        )
        if rnd is None:
            raise NotFoundError(f"project {project!r} has no round {number}")
        round_id = rnd.id
    d = pages.round_data(ctx, round_id)
    images = {}
    for it in d["items"]:
        shapes, _ = pages.round_prediction(ctx, round_id, it["image_id"])
        raw = _image_bytes(ctx, it["image_id"])
        images[it["image_id"]] = _data_uri(overlay_png(raw, shapes_from_json(shapes), d["labels"]))
    html = pages.templates.get_template("round.html").render(
        d=d, images=images, inline_css=_css(), user=None
    )
    return _write(out, html, d, pdf)


def count_report(report: dict[str, Any], out: Path, *, pdf: bool = True) -> dict[str, Path]:
    """`report.html` / `.pdf` / `.json` beside the output of `labelloop count` (the dict of
    `CountReport.to_json`): totals with their intervals, accuracy against held-out labelled
    images (`CountReport.compared`), the per-image table with intervals and splits, the
    predicted-vs-true plot of the compared images and the overlays, inlined."""
    overlays = {
        im["file"]: _data_uri(Path(im["overlay"]).read_bytes())
        for im in report["images"]
        if im.get("overlay") and Path(im["overlay"]).exists()
    }
    held_out = (report.get("compared") or {}).get("held_out")
    points = [  # the images the figures rest on (`CountReport.compared`)
        (float(im["truth"].get(lb, 0)), float(im["counts"].get(lb, 0)), lb)
        for im in report["images"]
        if im.get("truth") and not (held_out and im.get("split") in SEEN_SPLITS)
        for lb in report["labels"]
    ]
    figure = (
        charts.scatter(
            points,
            title="predicted vs true count",
            x_label="true count (annotated)",
            y_label="predicted count",
            kind="counts",
        )
        if points
        else None
    )
    interval_totals = {
        lb: (iv["low"], iv["high"]) for lb, iv in (report.get("interval_totals") or {}).items()
    }
    html = pages.templates.get_template("count.html").render(
        r=report,
        overlays=overlays,
        figure=figure,
        interval_totals=interval_totals,
        inline_css=_css(),
        user=None,
    )
    return _write(out, html, report, pdf)


def _css() -> str:
    return (pages.WEB / "static" / "style.css").read_text()


def _write(out: Path, html: str, body: dict[str, Any], pdf: bool) -> dict[str, Path]:
    exe = chromium() if pdf else None
    if pdf and exe is None:
        raise ConfigError(
            "printing the PDF needs chromium (Debian package `chromium`, or LABELLOOP_CHROMIUM);"
            " --no-pdf writes the HTML and JSON only"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        (staging / "report.html").write_text(html, encoding="utf-8")
        (staging / "report.json").write_text(json.dumps(body, indent=2, default=str))
        if exe is not None:
            print_pdf(exe, staging / "report.html", staging / "report.pdf")
        written = {}
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
            written[f.suffix.lstrip(".")] = out / f.name
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def print_pdf(exe: str, html: Path, pdf: Path, run: Callable = subprocess.run) -> None:
    """Print a local HTML file to PDF with headless Chromium (no network needed: every
    asset is inlined)."""
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-pdf-header-footer",
        f"--print-to-pdf={pdf}",
        html.resolve().as_uri(),
    ]
    with tempfile.TemporaryDirectory(prefix="labelloop-chromium-") as profile:
        proc = run(
            [*cmd[:1], f"--user-data-dir={profile}", *cmd[1:]],
            capture_output=True,
            timeout=PDF_TIMEOUT_S,
            check=False,
        )
    if proc.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
        raise ConfigError(
            f"chromium could not print {html.name} to PDF (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-500:]}"
        )
