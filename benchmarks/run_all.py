"""Run every benchmark in this folder (each writes JSON + PNG under benchmarks/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "demo_round.py",  # ~2 min
    "ingest_labelstudio.py",  # ~15 min (a 761 MB export)
    "api_load.py",  # ~1 min
    "scoring_throughput.py",  # ~3 min
    "bccd_detection.py",  # 30 min budget x 2 side by side; needs .venv-bench (make bench-venv)
    "label_efficiency.py isbi",  # ~1.5 h on 2 cores
    "label_efficiency.py bccd",
]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        name, *args = script.split()
        subprocess.run([sys.executable, str(HERE / name), *args], check=True)
