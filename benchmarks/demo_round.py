"""One full embedded round (`labelloop demo`): wall time, training time, test Dice per class.

Usage: .venv/bin/python benchmarks/demo_round.py [--repeats N]
Writes benchmarks/results/demo_round.json and demo_round.png."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"


def run_once(workdir: Path) -> dict:
    started = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "labelloop.cli",
            "demo",
            "--json",
            "--data-dir",
            str(workdir / "demo"),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=workdir,
    )
    wall = time.monotonic() - started
    data = json.loads(out.stdout)
    mv = data["status"]["model_versions"][-1]
    return {
        "process_wall_s": round(wall, 1),
        "demo_wall_s": data["wall_seconds"],
        "train_s": mv["train_seconds"],
        "epochs": mv["epochs"],
        "test_mean_dice": mv["metrics"]["mean_dice"],
        "test_dice": {k: v["dice"] for k, v in mv["metrics"]["per_class"].items()},
        "test_count_mae": {k: v["count_mae"] for k, v in mv["metrics"]["per_class"].items()},
        "scored_images": mv["scored_images"],
        "images_per_s": data["pipeline"]["score"]["images_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run_once(Path(tmp)))
    summary = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "runs": runs,
        "median_demo_wall_s": statistics.median(r["demo_wall_s"] for r in runs),
        "median_train_s": statistics.median(r["train_s"] for r in runs),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_round.json").write_text(json.dumps(summary, indent=2))
    last = runs[-1]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.bar(
        ["demo wall", "training"],
        [summary["median_demo_wall_s"], summary["median_train_s"]],
        color=["#546e7a", "#1e88e5"],
    )
    a.axhline(300, color="r", ls="--", lw=1, label="5-minute target")
    a.set_ylabel("seconds (2 CPU cores)")
    a.legend()
    names = list(last["test_dice"])
    b.bar(
        names,
        [last["test_dice"][n] or 0 for n in names],
        color=["#e53935", "#8e24aa", "#fb8c00"][: len(names)],
    )
    b.set_ylim(0, 1)
    b.set_title(f"test Dice (mean {last['test_mean_dice']:.3f})")
    fig.tight_layout()
    fig.savefig(RESULTS / "demo_round.png", dpi=110)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
