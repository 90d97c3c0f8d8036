"""`labelloop report`: a model version's or a round's report as offline HTML, PDF and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, ProjectOpt, context
from labelloop.cli.output import console, emit_json, handle_errors

app = typer.Typer(no_args_is_help=True, help="Reports to hand on: HTML (offline), PDF, JSON.")
OutOpt = Annotated[Path, typer.Option("--out", help="Folder for report.html/.pdf/.json.")]
PdfOpt = Annotated[
    bool, typer.Option("--pdf/--no-pdf", help="Also print report.pdf (headless chromium).")
]


def _done(written: dict[str, Path], as_json: bool) -> None:
    if as_json:
        emit_json({k: str(v) for k, v in written.items()})
    else:
        for kind, path in written.items():
            console.print(f"{kind}: {path}")


@app.command("model-version")
@handle_errors
def model_version(
    name: Annotated[str, typer.Argument(help="Model version name.")],
    out: OutOpt,
    pdf: PdfOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """Test metrics per class, confusion matrix, predicted-vs-true counts, reliability and
    the test images worst first (prediction beside the truth as annotated)."""
    from labelloop.web.report import model_version_report

    _done(model_version_report(context(), name, out, pdf=pdf), as_json)


@app.command("round")
@handle_errors
def round_cmd(
    number: Annotated[int, typer.Argument(help="Round number within the project.")],
    project: ProjectOpt,
    out: OutOpt,
    pdf: PdfOpt = True,
    as_json: JsonOpt = False,
) -> None:
    """The round's images with the predictions they went out with, their uncertainty and
    predicted counts, and where each went."""
    from labelloop.web.report import round_report

    _done(round_report(context(), project, number, out, pdf=pdf), as_json)
