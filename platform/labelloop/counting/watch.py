"""Live counting: count the cells in every image that lands in a folder.

A file watcher (watchdog) reports new, changed and renamed files; a file is counted once
its size and modification time have held still for `settle_s` (a microscope or a copy may
still be writing it). Each count writes the image's overlay and appends one line to
`counts.jsonl`, the session-spanning ledger keyed by the file's content hash: a restart
reads it back, so no file is ever counted twice, and files that arrived while the watcher
was down are counted on start. `counts.csv`, `counts.json` and the auto-refreshing
`index.html` (the live page) are rewritten from the ledger after every image, atomically.

A file that does not decode (corrupt, or truncated and never finished) is logged in
`skipped.jsonl` and left alone; if it changes later, its new content is tried again. On
exit the watcher writes a session report: what it counted and skipped, totals, latency
from file closed to count written (p50/p95) and images per second."""

from __future__ import annotations

import csv
import hashlib
import html
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from labelloop.context import Context
from labelloop.counting.stage import draw_overlay
from labelloop.db.models import ModelVersion
from labelloop.errors import InputError
from labelloop.imaging import decode_image
from labelloop.ingest.readers.images import IMAGE_SUFFIXES
from labelloop.registry import load_model_version

_log = logging.getLogger(__name__)
LEDGER, SKIPPED = "counts.jsonl", "skipped.jsonl"
LIVE_REFRESH_S = 2


def _wanted(path: Path, out_dir: Path) -> bool:
    """Image files only; not our own outputs, not hidden or partial files (`.x.png`,
    `x.png.part`), which writers rename into place when done."""
    return (
        path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
        and out_dir not in path.parents
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _append_line(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines file; a last line cut short by a crash is ignored (it was not written)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            _log.warning("%s: ignoring an incomplete line", path)
    return out


@dataclass
class SessionStats:
    started: float = field(default_factory=time.time)
    counted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    already: int = 0  # files seen again with content counted before

    def report(self, labels: list[str], ended: float) -> dict[str, Any]:
        lat = np.array([c["latency_s"] for c in self.counted]) if self.counted else None
        first = min((c["closed_at"] for c in self.counted), default=None)
        last = max((c["counted_at"] for c in self.counted), default=None)
        return {
            "started": datetime.fromtimestamp(self.started, UTC).isoformat(),
            "ended": datetime.fromtimestamp(ended, UTC).isoformat(),
            "counted": len(self.counted),
            "skipped": self.skipped,
            "already_counted": self.already,
            "totals": {lb: sum(c["counts"].get(lb, 0) for c in self.counted) for lb in labels},
            "latency_s": None
            if lat is None
            else {
                "p50": round(float(np.percentile(lat, 50)), 4),
                "p95": round(float(np.percentile(lat, 95)), 4),
                "max": round(float(lat.max()), 4),
            },
            # From the first file closed to the last count written: what the watcher
            # sustains when files arrive faster than it counts.
            "images_per_s": round(len(self.counted) / (last - first), 3)
            if self.counted and last > first
            else None,
        }


class Watcher:
    """Counts images arriving in `folder` with a model version; see the module docstring."""

    def __init__(
        self,
        ctx: Context,
        model_version_id: int,
        folder: Path,
        out_dir: Path,
        *,
        settle_s: float = 0.5,
        overlays: bool = True,
        on_count: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.ctx, self.folder, self.out = ctx, Path(folder).resolve(), Path(out_dir).resolve()
        if not self.folder.is_dir():
            raise InputError("not a folder to watch", file=str(folder))
        self.settle_s, self.overlays, self.on_count = settle_s, overlays, on_count
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "overlays").mkdir(exist_ok=True)
        with ctx.db.session() as s:
            self.model_name = s.scalar(
                select(ModelVersion.name).where(ModelVersion.id == model_version_id)
            )
        self.model = load_model_version(ctx, model_version_id)
        self.labels = list(self.model.labels)
        self.ledger = _read_lines(self.out / LEDGER)
        self.done = {r["sha256"] for r in self.ledger}
        self.bad = {r["sha256"] for r in _read_lines(self.out / SKIPPED)}
        self.stats = SessionStats()
        self._events: queue.Queue[Path] = queue.Queue()
        self._pending: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime, seen)
        self._observer: Any = None

    # -- the file watcher -----------------------------------------------------------------

    def start(self) -> None:
        """Start watching, and queue what is already there (arrived while we were down)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        events = self._events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.is_directory:
                    return
                for p in (getattr(event, "dest_path", ""), event.src_path):
                    if p:
                        events.put(Path(os.fsdecode(p)))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.folder), recursive=True)
        self._observer.start()
        for path in sorted(self.folder.rglob("*")):
            if path.is_file():
                self._events.put(path)
        self._write_views()

    def stop(self) -> dict[str, Any]:
        """Stop watching and write the session report; returns it."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
        report = {
            "model": self.model_name,
            "folder": str(self.folder),
            **self.stats.report(self.labels, time.time()),
        }
        stamp = datetime.fromtimestamp(self.stats.started, UTC).strftime("%Y%m%dT%H%M%S")
        _atomic_write(self.out / f"session-{stamp}.json", json.dumps(report, indent=2))
        return report

    def run(self, stop: threading.Event, *, poll_s: float = 0.1) -> None:
        """Count until `stop` is set."""
        while not stop.is_set():
            self.step(timeout=poll_s)

    def step(self, timeout: float = 0.1) -> int:
        """Take the file events so far and count each file that has settled; returns how
        many files were counted."""
        try:
            path = self._events.get(timeout=timeout)
            self._note(path)
            while True:
                self._note(self._events.get_nowait())
        except queue.Empty:
            pass
        counted = 0
        now = time.time()
        for path, (size, mtime, seen) in list(self._pending.items()):
            try:
                st = path.stat()
            except FileNotFoundError:
                del self._pending[path]  # renamed or deleted before it settled
                continue
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                self._pending[path] = (st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen < self.settle_s or st.st_size == 0:
                continue
            del self._pending[path]
            counted += self._process(path, st.st_mtime)
        return counted

    def _note(self, path: Path) -> None:
        if not _wanted(path, self.out) or path in self._pending:
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        self._pending[path] = (st.st_size, st.st_mtime_ns, time.time())

    # -- counting -------------------------------------------------------------------------

    def _process(self, path: Path, closed_at: float) -> int:
        try:
            data = path.read_bytes()
        except OSError as exc:
            _log.warning("%s: cannot read (%s); skipped", path, exc)
            return 0
        sha = hashlib.sha256(data).hexdigest()
        if sha in self.done:
            self.stats.already += 1
            return 0
        if sha in self.bad:
            return 0
        try:
            image = decode_image(
                data, name=str(path), max_pixels=self.ctx.settings.max_image_pixels
            )
        except InputError as exc:
            _log.warning("skipped: %s", exc)
            record = {"file": str(path), "sha256": sha, "reason": str(exc), "at": time.time()}
            _append_line(self.out / SKIPPED, record)
            self.bad.add(sha)
            self.stats.skipped.append(record)
            return 0
        pred = self.model.predict([image])[0]
        counts = {lb: int(pred.counts.get(lb, 0)) for lb in self.labels}
        overlay = None
        if self.overlays:
            overlay = f"overlays/{sha[:12]}-{path.stem}.png"
            (self.out / overlay).write_bytes(draw_overlay(image, pred.shapes, counts, self.labels))
        now = time.time()
        record = {
            "file": str(path.relative_to(self.folder)),
            "sha256": sha,
            "counts": counts,
            "overlay": overlay,
            "closed_at": closed_at,
            "counted_at": now,
            "latency_s": round(now - closed_at, 4),
        }
        _append_line(self.out / LEDGER, record)  # the count exists from here on
        self.ledger.append(record)
        self.done.add(sha)
        self.stats.counted.append(record)
        self._write_views()
        if self.on_count:
            self.on_count(record)
        return 1

    def totals(self) -> dict[str, int]:
        return {lb: sum(r["counts"].get(lb, 0) for r in self.ledger) for lb in self.labels}

    def _write_views(self) -> None:
        tmp = self.out / ".counts.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["file", "sha256", *self.labels, "counted_at"])
            for r in self.ledger:
                at = datetime.fromtimestamp(r["counted_at"], UTC).isoformat(timespec="seconds")
                w.writerow(
                    [r["file"], r["sha256"], *[r["counts"].get(lb, 0) for lb in self.labels], at]
                )
        os.replace(tmp, self.out / "counts.csv")
        body = {
            "model": self.model_name,
            "labels": self.labels,
            "images": len(self.ledger),
            "totals": self.totals(),
            "records": self.ledger,
        }
        _atomic_write(self.out / "counts.json", json.dumps(body, indent=1))
        _atomic_write(self.out / "index.html", self._live_page())

    def _live_page(self) -> str:
        """The live page: totals and the latest overlays, reloading itself every few
        seconds (open the file in any browser; nothing is fetched from elsewhere)."""
        head = "".join(f"<th>{html.escape(lb)}</th>" for lb in self.labels)
        totals = "".join(f"<td>{v}</td>" for v in self.totals().values())
        cards = []
        for r in reversed(self.ledger[-24:]):
            counts = " · ".join(f"{html.escape(k)} {v}" for k, v in r["counts"].items())
            img = f'<img src="{html.escape(r["overlay"])}" alt="">' if r["overlay"] else ""
            cards.append(
                f'<div class="c">{img}<div>{html.escape(r["file"])}<br>{counts}</div></div>'
            )
        return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{LIVE_REFRESH_S}"><link rel="icon" href="data:,">
<title>labelloop watch · {len(self.ledger)} images</title><style>
body{{font:14px system-ui,sans-serif;margin:16px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 10px;text-align:right}}
.g{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:10px}}
.c img{{width:100%}}.c{{font-size:12px}}</style></head><body>
<h1>Live counts: {html.escape(str(self.folder))}</h1>
<p>model {html.escape(self.model_name or "")} · <b id="images">{len(self.ledger)}</b> images
· {len(self.bad)} skipped</p>
<table id="totals"><tr><th>images</th>{head}</tr><tr><td>{len(self.ledger)}</td>{totals}</tr>
</table><h2>Latest</h2><div class="g">{"".join(cards)}</div></body></html>"""
