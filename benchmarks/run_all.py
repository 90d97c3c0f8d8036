"""Run every benchmark in this folder (each writes JSON + PNG under benchmarks/results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "demo_round.py",
    "ingest_labelstudio.py",
    "bccd_detection.py",  # needs .venv-bench (make bench-venv)
]

if __name__ == "__main__":
    for script in SCRIPTS:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
