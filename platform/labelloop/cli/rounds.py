"""`labelloop score`, `select` and `push`: from a model version to a round in annotators'
hands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context, interactive, resolve_model
from labelloop.cli.output import console, emit_json, handle_errors, progress
from labelloop.errors import InputError
from labelloop.kinds import KINDS
from labelloop.push.targets import targets_help

app = typer.Typer()


def _split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


def _parse_params(values: list[str] | None) -> dict:
    out: dict = {}
    for item in _split_list(values):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--param takes key=value, got {item!r}")
        try:
            out[key] = float(raw) if any(c in raw for c in ".e") else int(raw)
        except ValueError:
            out[key] = raw
    return out


@app.command()
@handle_errors
def score(
    project: ProjectOpt,
    model: Annotated[
        str | None, typer.Option(help="Model version name (default: production).")
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            help="Scoring method(s), repeatable or comma-separated (default per task); "
            "`labelloop score --list-methods` shows them. One prediction serves them all."
        ),
    ] = None,
    list_methods: Annotated[
        bool, typer.Option("--list-methods", help="List the project's scoring methods.")
    ] = False,
    embed: Annotated[
        bool, typer.Option(help="Also store embeddings (for coreset / hybrid selection).")
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Score the unlabeled pool with a model version (stored per model version, image and
    method; re-running adds only what is missing).

    Methods read the model's probabilities: per-pixel entropy / margin / least confidence
    aggregated by mean, top 10 % or foreground weight (segmentation); box scores, class
    entropy, TTA localisation and count variance (detection); entropy, margin, BALD
    (classification). Multi-pass methods (bald, mc_variance, tta_*) cost 7-10 forward
    passes per image."""
    from labelloop.projects import get_project
    from labelloop.scoring import available_methods
    from labelloop.scoring.stage import default_method, score_pool

    ctx = context()
    if list_methods:
        with ctx.db.session() as s:
            task = get_project(s, project).task
        names = available_methods(task)
        if as_json:
            emit_json({"task": task, "default": default_method(task), "methods": names})
        else:
            console.print(f"{task} (default {default_method(task)}): {', '.join(names)}")
        return
    mv = resolve_model(ctx, model, project)
    with progress("score", None, interactive(as_json)) as update:
        result = score_pool(
            ctx,
            mv,
            methods=_split_list(method) or None,
            embed=embed,
            on_progress=lambda d, t: update(d, t),
        )
    data = {
        "model_version_id": mv,
        "method": result.method,
        "methods": result.methods,
        "scored": result.scored,
        "already_scored": result.already,
        "embedded": result.embedded,
        "seconds": round(result.seconds, 2),
        "images_per_s": round(result.images_per_s, 2),
    }
    if as_json:
        emit_json(data)
    else:
        console.print(
            f"scored {result.scored} images with {', '.join(result.methods)} "
            f"({result.already} already scored; {data['images_per_s']} images/s; "
            f"{result.embedded} embeddings added)"
        )


@app.command("select")
@handle_errors
def select_cmd(
    project: ProjectOpt,
    budget: Annotated[int, typer.Option(help="How many images to send to annotators.")],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="uncertainty | power | random | coreset | hybrid | class_balance | badge | "
            "cluster_margin | detection_aware | typiclust | count_uncertainty "
            "(random, coreset and typiclust also work before any model: a cold start). "
            "Default: the project's kind's, chosen on the label-efficiency benchmarks: "
            + ", ".join(f"{k.default_strategy} for {k.name}" for k in KINDS)
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model version name.")] = None,
    method: Annotated[
        str | None, typer.Option(help="Which stored scores rank the pool (default per task).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Per-annotator batch size: the round is dealt into batches."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="Strategy parameter key=value, e.g. prefilter=4 (hybrid), beta=1 (power); "
            "random_below=N (any strategy) draws at random while the model trained on fewer than N."
        ),
    ] = None,
    seed: int = 0,
    control_fraction: Annotated[
        float,
        typer.Option(
            help="Share of the budget drawn at random as a control slice; the guard compares "
            "earlier rounds' picks with their control and falls back to random on evidence."
        ),
    ] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Pick the next annotation round from stored scores: never an image that is labelled
    or already out with annotators in an open round."""
    from labelloop.selection import default_strategy, get_strategy, select_round

    ctx = context()
    if strategy is None:
        strategy = default_strategy(ctx, project)
    strat = get_strategy(strategy)
    mv = resolve_model(ctx, model, project) if (model or strat.needs_model) else None
    result = select_round(
        ctx,
        project,
        budget=budget,
        strategy=strategy,
        model_version_id=mv,
        method=method,
        seed=seed,
        batch_size=batch_size,
        params=_parse_params(param),
        control_fraction=control_fraction,
    )
    data = {
        "round_id": result.round_id,
        "number": result.number,
        "created": result.created,
        "strategy": result.strategy,
        "items": [
            {"image_id": i, "rank": r, "score": sc, "batch": (result.batches or {}).get(i, 1)}
            for i, r, sc in result.items
        ],
        "control": result.control,
        "guard": result.guard,
    }
    if as_json:
        emit_json(data)
    else:
        batches = len(set((result.batches or {}).values())) or 1
        console.print(
            f"round {result.number}: {len(result.items)} images in {batches} batch(es) "
            f"({'new' if result.created else 'existing'}, {result.strategy}"
            f"{f', {len(result.control)} random control' if result.control else ''})"
        )
        if result.guard:
            console.print(f"guard: {result.guard['decision']}: {result.guard['reason']}")


@app.command()
@handle_errors
def push(
    project: ProjectOpt,
    to: Annotated[str, typer.Option("--to", help=f"Push target. {targets_help()}.")] = "file",
    round_number: Annotated[
        int | None, typer.Option("--round", help="Round number (default: the latest).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder for --to file.")] = None,
    ls_url: Annotated[str | None, typer.Option(help="Label Studio URL (or env).")] = None,
    ls_title: Annotated[str | None, typer.Option(help="Label Studio project title.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Send a round to annotators with the model's predictions as pre-annotations.

    The Label Studio token comes from LABELLOOP_LABELSTUDIO_TOKEN (never a flag, so it
    stays out of shell history and process lists)."""
    from sqlalchemy import select

    from labelloop.db.models import AnnotationRound
    from labelloop.errors import NotFoundError
    from labelloop.projects import get_project
    from labelloop.push.stage import push_round
    from labelloop.selection import latest_round

    ctx = context()
    if round_number is None:
        rid = latest_round(ctx, project)
    else:
        with ctx.db.session() as s:
            p = get_project(s, project)
            rid = s.scalar(
                select(AnnotationRound.id).where(
                    AnnotationRound.project_id == p.id, AnnotationRound.number == round_number
                )
            )
        if rid is None:
            raise NotFoundError(f"project {project!r} has no round {round_number}")
    result = push_round(ctx, rid, to, out_dir=out, url=ls_url, title=ls_title)
    data = {
        "push_id": result.push_id,
        "target": result.target,
        "destination": result.destination,
        "round": result.round_number,
        "model_version": result.model_version,
        "tasks": len(result.id_map),
        "id_map": {str(k): v for k, v in result.id_map.items()},
    }
    if as_json:
        emit_json(data)
    else:
        console.print(
            f"pushed round {result.round_number} ({len(result.id_map)} tasks) to "
            f"{result.target}: {result.destination}"
        )
