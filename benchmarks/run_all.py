"""Run every benchmark in this folder (each writes JSON + PNG under benchmarks/results/).

Durations on the 2-core development machine are beside each script. Pass names to run
only those, e.g. `python benchmarks/run_all.py bccd_classifier "label_efficiency isbi"`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "demo_round.py",  # ~2 min
    "ingest_labelstudio.py",  # ~15 min (a 761 MB export)
    "api_load.py",  # ~1 min
    "dashboard_load.py",  # ~2 min (a 10,000-image project on PostgreSQL)
    "watch_latency.py",  # ~3 min
    "scoring_throughput.py",  # ~3 min
    "isbi_segmentation.py",  # ~22 min (20 of them training)
    "bccd_classifier.py",  # ~7 min
    "malaria_classifier.py",  # ~6 CPU-minutes (30 epochs, one thread)
    "training_overhead.py",  # ~5 min
    # ~1 min: this checkout alone (`--against DIR` compares another, as in BENCHMARKS.md).
    "detection_step.py --name detection_step_this",
    "inference_throughput.py",  # ~2 min
    "bccd_detection.py",  # ~35 min: 30 min budget, both contenders side by side
    # ~12 min: the model bccd_detection.py left, scored again at 1-8 views, and 8 min of
    # training on synthetic smears.
    "detection_tta.py --bccd bccd_detection --synthetic-minutes 8",
    "detection_errors.py --bccd bccd_detection",  # ~1 min: where its AP@0.5 is lost
    "label_efficiency.py isbi",  # ~41 min with --jobs 2
    "label_efficiency.py bccd",  # ~80 min with --jobs 2
]


def _key(script: str) -> str:
    """The name a script is picked by: its file stem, and its first argument when several
    entries run one script ("label_efficiency isbi")."""
    name, *args = script.split()
    stem = name.removesuffix(".py")
    return f"{stem} {args[0]}" if args and not args[0].startswith("-") else stem


if __name__ == "__main__":
    wanted = {_key(name) for name in sys.argv[1:]}
    unknown = wanted - {_key(s) for s in SCRIPTS}
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {SCRIPTS}")
    for script in SCRIPTS:
        if wanted and _key(script) not in wanted:
            continue
        print(f"== {script}", flush=True)
        started = time.monotonic()
        name, *args = script.split()
        subprocess.run([sys.executable, str(HERE / name), *args], check=True)
        print(f"== {script} took {time.monotonic() - started:.0f} s", flush=True)
