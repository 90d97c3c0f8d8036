"""`labelloop models`, `promote`, `recipe` and `count`: the registry, the recipe its
models are trained with, and what they produce."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labelloop.cli.options import (
    JsonOpt,
    MaybeProjectOpt,
    ProjectOpt,
    context,
    interactive,
    resolve_model,
)
from labelloop.cli.output import console, emit_json, err_console, handle_errors, progress
from labelloop.kinds import DEFAULT_TASK, TASKS

app = typer.Typer()


def _fmt(v: object, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) else "-"


@app.command("models")
@handle_errors
def models_cmd(
    project: ProjectOpt,
    as_json: JsonOpt = False,
) -> None:
    """List a project's model versions: stage, test metric, dataset version, recipe hash,
    and why each reached its stage; with a warning for a version whose instance rules rest
    on fewer than 10 annotated objects of a class (`--json`: `rule_objects`), or whose test
    counts of a class are no closer to the annotations than a constant count per image,
    the training images' median (`--json`: `count_mae_constant` per class in `metrics`),
    or whose count intervals held the annotated count of fewer than 80 % of 20 or more
    test images (`interval_coverage` per class)."""
    from labelloop.reports import model_versions, model_warnings

    rows = model_versions(context(), project)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        console.print(f"project {project!r} has no model versions yet; run `labelloop train`")
        return
    t = Table(title=f"model versions of {project} (test split)", title_justify="left")
    for c in ("name", "stage", "data", "metric", "test", "recipe", "train s", "why"):
        t.add_column(c)
    for r in rows:
        t.add_row(
            r["name"],
            r["stage"],
            f"v{r['dataset_version']}",
            r["metric"],
            _fmt(r["test"], 4),
            (r["recipe_hash"] or "")[:10],
            _fmt(r["train_seconds"], 1),
            (("forced: " if r["forced"] else "") + (r["stage_reason"] or "")),
        )
    console.print(t)
    for r in rows:
        for warning in model_warnings(r):
            err_console.print(f"[yellow]{warning}[/]")


@app.command("promote")
@handle_errors
def promote_cmd(
    model: Annotated[str, typer.Argument(help="Model version name (or id).")],
    reason: Annotated[str, typer.Option("--reason", help="Why the gate is overridden (recorded).")],
    project: MaybeProjectOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a model version production regardless of the promotion gate; the reason is
    recorded with the promotion and the previous production model is archived."""
    from labelloop.errors import InputError
    from labelloop.registry import promote

    if not reason.strip():
        raise InputError("--reason must say why the gate is overridden")
    ctx = context()
    mv = resolve_model(ctx, model, project)
    promote(ctx, mv, reason.strip(), forced=True)
    from labelloop.db.models import ModelVersion

    with ctx.db.session() as s:
        row = s.get(ModelVersion, mv)
        data = {"id": row.id, "name": row.name, "stage": row.stage, "reason": reason}
    if as_json:
        emit_json(data)
    else:
        console.print(f"{data['name']} is now {data['stage']} ({reason})")


@app.command("recipe")
@handle_errors
def recipe_cmd(
    task: Annotated[str, typer.Argument(help=f"One of: {', '.join(TASKS)}.")] = DEFAULT_TASK,
    as_json: JsonOpt = False,
) -> None:
    """Print a task's default training recipe: every field a recipe file may override
    (`labelloop train --recipe FILE`, `runs start --recipe FILE`); unknown fields are
    refused."""
    from labelloop.training.recipe import parse_recipe

    recipe = parse_recipe({}, task)
    if as_json:
        emit_json(recipe.model_dump(mode="json"))
    else:
        sys.stdout.write(recipe.to_yaml())


@app.command("count")
@handle_errors
def count_cmd(
    images: Annotated[
        list[Path], typer.Argument(help="Image files and/or folders (searched recursively).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for overlays and counts.")],
    model: Annotated[
        str | None,
        typer.Option("--model", help="Model version name (default: production of --project)."),
    ] = None,
    project: MaybeProjectOpt = None,
    overlays: Annotated[
        bool, typer.Option("--overlays/--no-overlays", help="Write an overlay PNG per image.")
    ] = True,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Also write report.html (offline), report.pdf (headless chromium), report.json.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Count cells per class in images with a model version.

    Writes `<image>.overlay.png` (every counted object's box or outline and index, a count
    legend), `counts.csv` and `counts.json` into `--out`; each count carries an interval
    from the objects' confidences. Images already labelled in the project (same content)
    are compared with their annotated objects: count MAE and relative error per class, and
    `counts.png` plots predicted against true counts. Only held-out images are compared
    (not in the model's training or validation split) unless every annotated image is one
    of those, and then it warns that the figures are optimistic. Beside each MAE stands the plain
    baseline's: a constant count per image, the median of the model's training images. It
    warns when the model cannot be trusted to count: a semantic model (touching cells
    merge), instance rules chosen on fewer than 10 annotated objects of a class
    (validation's, and training images' where validation holds too few), or counts of a
    class on the annotated images no better than the constant's, or intervals the test
    split found too narrow.
    """
    from labelloop.counting.stage import count_images

    ctx = context()
    mv = resolve_model(ctx, model, project)
    if report:
        from labelloop.errors import ConfigError
        from labelloop.web.report import chromium

        if chromium() is None:  # before counting: the PDF would be missing at the end
            raise ConfigError("--report prints a PDF with chromium, which is not installed")
    with progress("count", None, interactive(as_json)) as update:
        result = count_images(
            ctx, mv, images, out, overlays=overlays, on_progress=lambda d, t: update(d, t)
        )
    data = result.to_json()
    if report:
        from labelloop.web.report import count_report

        count_report(data, out)
    if as_json:
        emit_json(data)
        return
    t = Table(title=f"counts by {result.model} ({len(result.images)} images)")
    # The totals are over every image; the rest over the compared (annotated) images.
    columns = ("class", "total", "interval", "compared: predicted / true", "MAE / image")
    for c in (*columns, "constant's MAE", "relative error", "in interval"):
        t.add_column(c, justify="left" if c == "class" else "right")
    acc = result.accuracy() or {}
    spans = result.interval_totals()
    for lb, total in result.totals().items():
        a = acc.get(lb) or {}
        span = spans.get(lb)
        t.add_row(
            lb,
            str(total),
            f"{span['low']:.0f}-{span['high']:.0f}" if span else "-",
            f"{a['predicted']} / {a['true']}" if a else "-",
            _fmt(a.get("mae"), 2),
            _fmt(a.get("mae_constant"), 2),
            _fmt(a.get("relative_error"), 3),
            _fmt(a.get("interval_coverage"), 2),
        )
    console.print(t)
    cmp = result.comparison()
    if cmp["images"]:
        which = "held-out" if cmp["held_out"] else "training/validation"
        skipped = cmp["left_out_seen"]
        console.print(
            f"true counts: {cmp['images']} {which} annotated images"
            + (f" ({skipped} the model trained or tuned on left out)" if skipped else "")
        )
    if spans:  # how the intervals shown were formed
        console.print(data["interval_basis"])
    extra = ", report.html/.pdf/.json" if report else ""
    console.print(f"per image: {out / 'counts.csv'}, {out / 'counts.json'}{extra}")
    if result.plot:
        console.print(f"predicted vs true: {result.plot}")
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
