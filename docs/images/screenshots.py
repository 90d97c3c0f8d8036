"""Regenerate the dashboard screenshots in this folder: a synthetic blood-smear project
(two dataset versions, two model versions, a scored pool, a pushed round) on an embedded
database, `labelloop serve`'s app on loopback, and headless Chromium (Debian's `chromium`).

Usage: .venv/bin/python docs/images/screenshots.py [--train-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

TOKEN = "screenshots-" + "x" * 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-seconds", type=float, default=60)
    args = ap.parse_args()
    import uvicorn
    from playwright.sync_api import sync_playwright

    from labelloop.config import Settings
    from labelloop.context import Context, set_context
    from labelloop.datasets.freeze import freeze
    from labelloop.db import migrate
    from labelloop.db.models import ModelVersion
    from labelloop.ingest import ingest_path
    from labelloop.projects import create_project
    from labelloop.push.stage import push_round
    from labelloop.runs import execute_run, request_run
    from labelloop.scoring.stage import score_pool
    from labelloop.selection import select_round
    from labelloop.synthetic import LABELS, generate_dataset
    from labelloop.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="labelloop-shots-"))
    settings = Settings(
        data_dir=tmp / "data",
        database_url="",
        blob_url="",
        broker_url="memory://",
        result_backend="",
        redis_url="",
        api_tokens={"lab": TOKEN},
    )
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    with ctx.db.session() as s:
        create_project(s, "smears", "segmentation", list(LABELS))
    recipe = {"max_time_s": args.train_seconds, "epochs": 40}
    src = generate_dataset(tmp / "src", n_labeled=28, n_pool=24).out_dir
    tasks = json.loads((src / "export.json").read_text())
    ingest_path(ctx, "smears", src / "pool")
    for n in (12, 28):  # annotators label 12 images, then 16 more
        (src / f"export-{n}.json").write_text(json.dumps(tasks[:n]))
        ingest_path(ctx, "smears", src / f"export-{n}.json")
        dv = freeze(ctx, "smears").dataset_version_id
        mv = execute_run(ctx, request_run(ctx, dv, overrides=recipe).run_id)
    score_pool(ctx, mv)
    rnd = select_round(ctx, "smears", budget=8, model_version_id=mv)
    push_round(ctx, rnd.round_id, "file", out_dir=tmp / "out")
    with ctx.db.session() as s:
        name = s.get(ModelVersion, mv).name

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{url}/login")
        page.fill("#token", TOKEN)
        page.click("#login")
        page.wait_for_url(f"{url}/")
        shots = {
            "dashboard-projects": "/",
            "dashboard-project": "/p/smears",
            "dashboard-model-version": f"/models/{name}",
            "dashboard-round": f"/rounds/{rnd.round_id}",
        }
        for file, path in shots.items():
            page.goto(f"{url}{path}")
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function(
                "() => Array.from(document.images).every(i => i.complete)", timeout=120_000
            )
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(HERE / f"{file}.png"))
            print("wrote", HERE / f"{file}.png")
        browser.close()
    server.should_exit = True


if __name__ == "__main__":
    main()
