"""Run every benchmark in this folder (each writes JSON + PNG under benchmarks/results/).

Durations on the 2-core development machine: demo_round ~2 min, ingest_labelstudio
several minutes (100,000 tasks), isbi_segmentation ~22 min (20 of them training),
bccd_classifier ~7 min, training_overhead ~5 min, inference_throughput ~2 min. Pass
script names to run only those, e.g. `python benchmarks/run_all.py bccd_classifier`.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "demo_round.py",
    "ingest_labelstudio.py",
    "isbi_segmentation.py",
    "bccd_classifier.py",
    "training_overhead.py",
    "inference_throughput.py",
]

if __name__ == "__main__":
    wanted = {name.removesuffix(".py") for name in sys.argv[1:]}
    unknown = wanted - {s.removesuffix(".py") for s in SCRIPTS}
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {SCRIPTS}")
    for script in SCRIPTS:
        if wanted and script.removesuffix(".py") not in wanted:
            continue
        print(f"== {script}", flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, str(HERE / script)], check=True)
        print(f"== {script} took {time.monotonic() - started:.0f} s", flush=True)
