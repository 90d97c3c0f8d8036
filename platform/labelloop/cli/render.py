"""Rich rendering of a project status (the same dict `status --json` prints)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from labelloop.reports import count_warning, model_warnings

# The per-class figure shown beside each kind's primary metric.
PER_CLASS_KEY = {"mean_dice": "dice", "map50": "ap50", "macro_f1": "f1"}


def _fmt(v, nd: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _count_err(model: dict, label: str) -> str:
    """Relative count error of the test totals, marked '*' when measured the old way."""
    err = (model.get("count_relative_error") or {}).get(label)
    if err is None:
        return "-"
    return f"{err:.1%}" + ("" if count_warning(model) is None else "*")


def selection_order(strategy: str) -> str:
    """How a round's ranks read. Only `uncertainty` ranks by the score alone; the others
    also weigh diversity, class balance or chance, so their uncertainty column is not
    sorted, and a title saying "least confident first" would misstate their order."""
    if strategy == "uncertainty":
        return "least confident first"
    if strategy == "random":
        return "a random sample"
    return f"in the order {strategy} chose them, which is not by uncertainty alone"


def render_status(st: dict, console: Console, *, items: int = 10) -> None:
    p = st["project"]
    im = st["images"]
    console.print(
        f"[bold]{p['name']}[/] ({p['task']}; labels {', '.join(p['labels'])}) — "
        f"{im['total']} images: {im['labelled']} labelled, {im['unlabeled']} unlabeled"
    )
    if st["annotations_per_class"]:
        console.print(
            "shapes per class: "
            + ", ".join(f"{k} {v}" for k, v in st["annotations_per_class"].items())
        )
    if any((st.get("objects_per_class") or {}).values()):
        console.print(
            "annotated objects per class (the truth counts compare with): "
            + ", ".join(f"{k} {v}" for k, v in st["objects_per_class"].items())
        )
    if st["dataset_versions"]:
        t = Table(title="dataset versions", title_justify="left")
        for c in ("#", "hash", "images", "train/val/test", "created"):
            t.add_column(c)
        for d in st["dataset_versions"]:
            sp = d["splits"] or {}
            t.add_row(
                str(d["number"]),
                d["hash"],
                str(d["images"]),
                f"{sp.get('train', 0)}/{sp.get('val', 0)}/{sp.get('test', 0)}",
                d["created_at"][:19],
            )
        console.print(t)
    if st["model_versions"]:
        labels = p["labels"]
        t = Table(title="model versions (metrics on the frozen test split)", title_justify="left")
        metric = st["model_versions"][-1].get("primary_metric") or "mean_dice"
        per_key = PER_CLASS_KEY.get(metric, "dice")
        for c in (
            "name",
            "stage",
            "data",
            metric,
            *[f"{per_key} {lb}" for lb in labels],
            *[f"count err {lb}" for lb in labels],
            "train s",
            "scored",
        ):
            t.add_column(c)
        for m in st["model_versions"]:
            met = m["metrics"] or {}
            per = {lb: (v or {}).get(per_key) for lb, v in (met.get("per_class") or {}).items()}
            t.add_row(
                m["name"],
                m["stage"],
                f"v{m['dataset_version']}",
                _fmt(met.get(m.get("primary_metric") or metric)),
                *[_fmt(per.get(lb)) for lb in labels],
                *[_count_err(m, lb) for lb in labels],
                _fmt(m["train_seconds"], 1),
                str(m["scored_images"]),
            )
        console.print(t)
        for m in st["model_versions"]:
            for warning in model_warnings(m):
                console.print(f"[yellow]{warning}[/]")
    for rnd in st["rounds"][-1:]:
        labels = p["labels"]
        t = Table(
            title=f"round {rnd['number']} ({rnd['strategy']}, {rnd['size']} images, "
            f"{rnd['status']}) — {selection_order(rnd['strategy'])}",
            title_justify="left",
        )
        for c in ("rank", "image", "uncertainty", *[f"pred {lb}" for lb in labels]):
            t.add_column(c, justify="right")
        for it in rnd["items"][:items]:
            counts = it["predicted_counts"] or {}
            t.add_row(
                str(it["rank"]),
                str(it["image_id"]),
                _fmt(it["score"], 4),
                *[str(counts.get(lb, "-")) for lb in labels],
            )
        console.print(t)
        for push in rnd["pushes"]:
            console.print(
                f"pushed {push['tasks']} tasks to {push['target']}: {push['destination']}"
            )
    for rnd in st["rounds"]:
        console.print(f"round {rnd['number']} ({rnd['status']}): {progress_line(rnd['progress'])}")


def progress_line(pr: dict) -> str:
    """A round's annotation progress in words."""
    return (
        f"{pr['sent']} of {pr['images']} sent, {pr['annotated']} annotated, "
        f"{pr['skipped']} skipped, {pr['left']} left"
    )


def render_dry_run(report, console: Console) -> None:
    """One line per file: what an ingest would take from it."""

    def counts(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"

    for file, per in report.files.items():
        line = (
            f"{escape(file)}: {per['images']} images ({per['unlabeled']} unlabeled); shapes "
            f"{counts(per['shapes_per_kind'])}; labels {escape(counts(per['shapes_per_class']))}"
        )
        if per["skipped"]:
            line += f"; [yellow]{per['skipped']} skipped[/]"
        console.print(line, soft_wrap=True, markup=True, highlight=False)


def render_ingest_details(report, console: Console, err_console: Console) -> None:
    """Shapes per class, then warnings and skipped records (on stderr), for any ingest."""
    if report.shapes_per_class:
        console.print(
            "shapes per class: " + ", ".join(f"{k} {v}" for k, v in report.shapes_per_class.items())
        )
    for warning in report.warnings:
        err_console.print(f"[yellow]warning[/] {warning}", soft_wrap=True)
    for sk in report.skipped:
        err_console.print(f"[yellow]skipped[/] {sk.file} {sk.record}: {sk.reason}", soft_wrap=True)
