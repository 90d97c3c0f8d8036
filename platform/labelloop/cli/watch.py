"""`labelloop watch`: count cells in every image that lands in a folder, live."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from labelloop.cli.options import JsonOpt, MaybeProjectOpt, context, resolve_model
from labelloop.cli.output import console, emit_json, handle_errors

app = typer.Typer()


@app.command()
@handle_errors
def watch(
    folder: Annotated[Path, typer.Argument(help="Folder where new images arrive.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for counts, overlays, live page.")],
    project: MaybeProjectOpt = None,
    model: Annotated[
        str | None, typer.Option(help="Model version (default: the project's production one).")
    ] = None,
    settle: Annotated[
        float, typer.Option(help="Seconds a file must stay unchanged before it is read.", min=0)
    ] = 0.5,
    max_images: Annotated[
        int | None, typer.Option(help="Stop after counting this many images.", min=1)
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Stop after this many seconds.", min=0)
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Count each new image in FOLDER (and its subfolders) as it arrives, until Ctrl-C.

    Writes `<out>/overlays/`, a running `counts.csv` / `counts.json`, the ledger
    `counts.jsonl` (a restart never counts a file twice), `skipped.jsonl` for files that
    do not decode, `index.html` (a live page that refreshes itself) and, on exit, a
    `session-<time>.json` report with totals and latency."""
    from labelloop.counting.watch import Watcher

    ctx = context()
    mv = resolve_model(ctx, model, project)
    stop = threading.Event()
    seen = 0

    def on_count(record: dict) -> None:
        nonlocal seen
        seen += 1
        if not as_json:
            counts = ", ".join(f"{k} {v}" for k, v in record["counts"].items())
            console.print(f"{record['file']}: {counts} ({record['latency_s']:.2f} s)")
        if max_images is not None and seen >= max_images:
            stop.set()

    watcher = Watcher(ctx, mv, folder, out, settle_s=settle, on_count=on_count)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    watcher.start()
    if not as_json:
        console.print(f"watching {folder} with {watcher.model_name}; live page {out}/index.html")
    deadline = None if timeout is None else time.monotonic() + timeout
    while not stop.is_set():
        watcher.step(timeout=0.1)
        if deadline is not None and time.monotonic() >= deadline:
            break
    report = watcher.stop()
    if as_json:
        emit_json(report)
    else:
        lat = report["latency_s"]
        console.print(
            f"counted {report['counted']}, skipped {len(report['skipped'])}; totals "
            f"{report['totals']}"
            + (f"; latency p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s" if lat else "")
        )
