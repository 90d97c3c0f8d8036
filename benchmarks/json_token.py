"""One huge JSON string token (an embedded base64 image) through ijson: its default
64 KiB read buffer against the buffer labelloop sizes to the file (ingest.streaming).

yajl appends every read to a token that spans reads, so the default costs O(N² / 64 KiB).
Each case is a Label Studio export with one task whose `data.image` is an N MB string;
CPU seconds of this process are reported (wall time is inflated by a shared machine).

Usage: .venv/bin/python benchmarks/json_token.py [--sizes 20 40 200] [--default-up-to 40]
Writes benchmarks/results/json_token.json."""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

import ijson

from labelloop.ingest.streaming import json_buffer

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _parse(path: Path, buf: int) -> float:
    t0 = _cpu()
    with open(path, "rb") as f:
        tasks = list(ijson.items(f, "item", buf_size=buf))
    assert len(tasks) == 1
    return round(_cpu() - t0, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20, 40, 200])
    ap.add_argument("--default-up-to", type=int, default=40, help="MB; beyond: minutes")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.sizes:
            path = Path(tmp) / f"export-{mb}.json"
            with open(path, "wb") as f:
                f.write(b'[{"id": 1, "annotations": [], "data": {"image": "data:image/png;base64,')
                f.write(b"A" * (mb << 20))
                f.write(b'"}}]')
            row = {"token_mb": mb, "labelloop_buffer": json_buffer(path)}
            row["labelloop_cpu_s"] = _parse(path, json_buffer(path))
            if mb <= args.default_up_to:
                row["ijson_default_cpu_s"] = _parse(path, 64 << 10)
            rows.append(row)
            print(row, flush=True)
            path.unlink()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "json_token.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
