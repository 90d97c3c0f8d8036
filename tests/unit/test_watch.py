"""Live counting with a real file watcher on real files: files still being written are
waited for, corrupt files are skipped without stopping the watcher, and nothing is counted
twice, not even across a restart."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest
from typer.testing import CliRunner

from tests.factories import png, trained_project
from tests.integration.services import wait_for


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from labelloop.config import Settings
    from labelloop.context import Context, set_context
    from labelloop.db import migrate

    tmp = tmp_path_factory.mktemp("watch")
    settings = Settings(
        data_dir=tmp / "data",
        database_url="",
        blob_url="",
        broker_url="memory://",
        result_backend="",
        redis_url="",
    )
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    _, mv = trained_project(ctx, "cells", tmp, labelled=6, pool=1)
    yield ctx, mv
    set_context(None)
    ctx.close()


class Running:
    """A Watcher counting in a background thread, as `labelloop watch` does."""

    def __init__(self, ctx, mv, folder, out):
        from labelloop.counting.watch import Watcher

        self.watcher = Watcher(ctx, mv, folder, out, settle_s=0.4)
        self.stop = threading.Event()
        self.watcher.start()
        self.thread = threading.Thread(target=self.watcher.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self) -> dict:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.watcher.stop()


def _ledger(out) -> list[dict]:
    return [json.loads(x) for x in (out / "counts.jsonl").read_text().splitlines()]


def test_watch_waits_skips_and_never_counts_twice(model, tmp_path):
    ctx, mv = model
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    (inbox / "before.png").write_bytes(png(seed=1))  # there before the watcher starts
    w = Running(ctx, mv, inbox, out)
    try:
        wait_for(lambda: (out / "counts.jsonl").exists(), 60, "the file already there")
        # A file written slowly, in pieces: read only once complete.
        data = png(seed=2, width=96, height=80)
        with open(inbox / "slow.png", "wb") as f:
            for i in range(0, len(data), len(data) // 6 + 1):
                f.write(data[i : i + len(data) // 6 + 1])
                f.flush()
                time.sleep(0.15)
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image at all")
        (inbox / "notes.txt").write_text("not an image")
        wait_for(lambda: len(_ledger(out)) == 2, 60, "the slow file to be counted")
        wait_for(lambda: (out / "skipped.jsonl").exists(), 30, "the corrupt file to be skipped")
        # The same content under another name, and the slow file touched again: no recount.
        (inbox / "copy.png").write_bytes(data)
        (inbox / "slow.png").write_bytes(data)
        (inbox / "later.png").write_bytes(png(seed=3))  # the watcher is still alive
        wait_for(lambda: len(_ledger(out)) == 3, 60, "a file after the corrupt one")
        time.sleep(1.0)
    finally:
        report = w.close()
    ledger = _ledger(out)
    assert sorted(r["file"] for r in ledger) == ["before.png", "later.png", "slow.png"]
    assert len({r["sha256"] for r in ledger}) == 3
    (skipped,) = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped["file"].endswith("broken.png") and "cannot decode" in skipped["reason"]
    assert report["counted"] == 3 and report["already_counted"] >= 1
    assert report["latency_s"]["p50"] >= 0.4  # waited for the file to settle
    with open(out / "counts.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == [r["file"] for r in ledger]
    totals = json.loads((out / "counts.json").read_text())["totals"]
    assert totals == {
        lb: sum(r["counts"][lb] for r in ledger) for lb in ("RBC", "WBC", "Platelets")
    }
    for r in ledger:
        assert (out / r["overlay"]).read_bytes()[:4] == b"\x89PNG"
    page = (out / "index.html").read_text()
    assert 'http-equiv="refresh"' in page and '<b id="images">3</b>' in page

    # A restart: what arrived meanwhile is counted, nothing is counted again.
    (inbox / "while-down.png").write_bytes(png(seed=4))
    w = Running(ctx, mv, inbox, out)
    try:
        wait_for(lambda: len(_ledger(out)) == 4, 60, "the file that arrived while down")
        time.sleep(1.0)
    finally:
        report = w.close()
    assert [r["file"] for r in _ledger(out)][-1] == "while-down.png"
    assert report["counted"] == 1
    assert len(list(out.glob("session-*.json"))) >= 1


def test_watch_cli_counts_and_reports(model, tmp_path, monkeypatch):
    from labelloop.cli.main import app

    ctx, _ = model
    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(ctx.settings.data_dir))
    for var in ("LABELLOOP_DATABASE_URL", "LABELLOOP_BLOB_URL", "LABELLOOP_BROKER_URL"):
        monkeypatch.delenv(var, raising=False)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    for i in range(2):
        (inbox / f"a{i}.png").write_bytes(png(seed=10 + i))
    args = ["watch", str(inbox), "-p", "cells", "--out", str(out), "--settle", "0.2"]
    res = CliRunner().invoke(app, [*args, "--max-images", "2", "--timeout", "120", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["counted"] == 2 and set(report["totals"]) == {"RBC", "WBC", "Platelets"}
    res = CliRunner().invoke(
        app, ["watch", str(tmp_path / "nope"), "-p", "cells", "--out", str(out)]
    )
    assert res.exit_code == 2 and "not a folder to watch" in res.output
