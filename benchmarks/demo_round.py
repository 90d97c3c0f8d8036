"""One full embedded round (`labelloop demo`): wall time, training time, epochs, and the
test split's counts per class against its annotated objects, for each training budget
(`--train-seconds`) on an idle machine and beside busy processes (`--load`), in one run.

The demo trains 45 epochs with a wall-clock cap; its learning rate follows whichever of
epochs and the cap is further along. A cap that binds (a slow or busy machine) means fewer,
shorter-scheduled epochs and a different network: this shows what that costs.

Usage: .venv/bin/python benchmarks/demo_round.py [--train-seconds S ...] [--load N ...]
       [--repeats R]
Writes benchmarks/results/demo_round.json and demo_round.png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parent / "results"
BUSY = "while True: pass"


def run_once(workdir: Path, train_seconds: float, load: int) -> dict:
    """One demo in `workdir` with `load` busy Python processes beside it."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
    try:
        started = time.monotonic()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "labelloop.cli",
                "demo",
                "--json",
                "--train-seconds",
                str(train_seconds),
                "--data-dir",
                str(workdir / "demo"),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=workdir,
        )
        wall = time.monotonic() - started
    finally:
        for p in busy:
            p.kill()
            p.wait()
    data = json.loads(out.stdout)
    mv = data["status"]["model_versions"][-1]
    per = mv["metrics"]["per_class"]
    return {
        "train_seconds_cap": train_seconds,
        "busy_processes": load,
        "process_wall_s": round(wall, 1),
        "demo_wall_s": data["wall_seconds"],
        "train_s": mv["train_seconds"],
        "epochs": mv["epochs"],
        "test_mean_dice": mv["metrics"]["mean_dice"],
        "test_dice": {k: v["dice"] for k, v in per.items()},
        # Against the test split's annotated objects (one per polygon).
        "test_counts": {k: [v["pred_count"], v["true_count"]] for k, v in per.items()},
        "test_count_mae": {k: v["count_mae"] for k, v in per.items()},
        "scored_images": mv["scored_images"],
        "images_per_s": data["pipeline"]["score"]["images_per_s"],
    }


def plot(runs: list[dict], path: Path) -> None:
    names = [f"cap {r['train_seconds_cap']:g} s\n{r['busy_processes']} busy" for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = range(len(runs))
    a.bar([i - 0.2 for i in x], [r["demo_wall_s"] for r in runs], 0.4, label="demo wall")
    a.bar([i + 0.2 for i in x], [r["train_s"] for r in runs], 0.4, label="training")
    for i, r in zip(x, runs, strict=True):
        a.text(i + 0.2, r["train_s"], f"{r['epochs']} ep", ha="center", va="bottom", fontsize=7)
    a.axhline(300, color="r", ls="--", lw=1, label="5-minute target")
    a.set_xticks(list(x), names, fontsize=8)
    a.set_ylabel("seconds (2 CPU cores)")
    a.legend(fontsize=7)
    labels = list(runs[0]["test_counts"])
    w = 0.8 / len(labels)
    for j, lb in enumerate(labels):
        err = [100 * abs(p - t) / t if t else 0.0 for p, t in (r["test_counts"][lb] for r in runs)]
        b.bar([i + (j - (len(labels) - 1) / 2) * w for i in x], err, w, label=lb)
    b.axhline(5, color="r", ls="--", lw=1, label="5 % target")
    b.set_xticks(list(x), names, fontsize=8)
    b.set_ylabel("test count error, % of annotated objects")
    b.set_title("test split counts against annotated objects", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-seconds", type=float, nargs="+", default=[240.0])
    ap.add_argument("--load", type=int, nargs="+", default=[0], help="busy processes beside it")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    runs = []
    for load in args.load:
        for cap in args.train_seconds:
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    runs.append(run_once(Path(tmp), cap, load))
                print(json.dumps(runs[-1]), flush=True)
    summary = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "benchmarks/demo_round.py " + " ".join(sys.argv[1:]),
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo_round.json").write_text(json.dumps(summary, indent=2))
    plot(runs, RESULTS / "demo_round.png")


if __name__ == "__main__":
    main()
