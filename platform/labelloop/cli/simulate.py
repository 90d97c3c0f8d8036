"""`labelloop simulate SPEC.yaml`: label-efficiency curves with an oracle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from labelloop.cli.options import JsonOpt, interactive
from labelloop.cli.output import console, emit_json, handle_errors, progress

app = typer.Typer()

EXAMPLE = """\
name: bccd-detection
task: detection
labels: [RBC, WBC, Platelets]
source: {path: BCCD/, format: voc, test_list: BCCD/ImageSets/Main/test.txt,
         pool_list: BCCD/ImageSets/Main/train.txt}
recipe: {image_size: 320, epochs: 12}
strategies: [random, uncertainty, hybrid]
seeds: [0, 1, 2]
sizes: [10, 20, 40, 60, 100]
metric: map50
extra_metrics: [count_mae]
samples_per_epoch: 200
"""


def _table(summary: dict) -> Table:
    t = Table(
        title=f"{summary['name']}: {summary['metric']} (full pool {summary['full']['mean']:.3f})"
    )
    t.add_column("strategy")
    t.add_column("AUC (mean ± sd)", justify="right")
    t.add_column("gain vs random", justify="right")
    t.add_column("labels for 95 %", justify="right")
    for name, st in summary["strategies"].items():
        gain = st.get("auc_gain_over_random") or {}
        need = st["labels_for_target"]
        t.add_row(
            name,
            f"{st['auc']['mean']:.3f} ± {st['auc']['sd']:.3f}",
            f"{gain.get('mean', float('nan')):+.3f} ± {gain.get('sd', float('nan')):.3f}",
            str(need) if need is not None else f"> {max(st['sizes'])}",
        )
    return t


# A help text rather than a docstring: it embeds the example spec.
HELP = (
    """Replay the loop with an oracle: labels are withheld and revealed as a strategy
selects images; each step trains on what is labelled and is measured on a fixed test set.

Writes curves (mean ± sd over seeds), the area under each curve and the labels each
strategy needs for 95 % of the full-pool metric. An interrupted run resumes from
runs.jsonl. With `warm_start: true` each step fine-tunes the previous step's model for
`warm_epochs`, and the full-pool reference trains as long as all the steps together.

Example spec:

```yaml
"""
    + EXAMPLE
    + "```"
)


@app.command("simulate", help=HELP)
@handle_errors
def simulate_cmd(
    spec_file: Annotated[Path, typer.Argument(help="Simulation spec (YAML).")],
    out: Annotated[
        Path, typer.Option(help="Output folder: runs.jsonl, simulation.json, simulation.png.")
    ] = Path("simulation"),
    jobs: Annotated[
        int | None, typer.Option(help="Runs in parallel, one core each (default: spec).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    from labelloop.errors import InputError
    from labelloop.simulate import load_spec, simulate

    try:
        text = spec_file.read_text()
    except OSError as exc:
        raise InputError(
            f"cannot read the simulation spec: {exc.strerror}", file=str(spec_file)
        ) from None
    spec = load_spec(text, str(spec_file))
    if jobs is not None:
        spec = spec.model_copy(update={"jobs": jobs})
    total = len(spec.seeds) * (len(spec.strategies) + int(spec.include_full))
    with progress("simulate", total, interactive(as_json)) as update:
        summary = simulate(
            spec, out, on_run=lambda r, d, t: update(d, t, f"{r['strategy']} seed {r['seed']}")
        )
    if as_json:
        emit_json({k: v for k, v in summary.items() if k != "runs"})
        return
    console.print(_table(summary))
    console.print(f"curves: {out / 'simulation.png'}; data: {out / 'simulation.json'}")
