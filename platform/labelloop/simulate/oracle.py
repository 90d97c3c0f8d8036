"""The oracle's data: labelled records split into a pool (labels withheld until selected)
and a fixed, held-out test set."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from labelloop.errors import InputError
from labelloop.ingest.formats import detect_format, formats
from labelloop.ingest.records import ReadOptions, SourceRecord
from labelloop.simulate.spec import SourceSpec


@dataclass
class SimulationData:
    pool: list[SourceRecord]
    test: list[SourceRecord]

    def __post_init__(self) -> None:
        keys = [r.external_id for r in self.pool + self.test]
        if len(set(keys)) != len(keys):
            raise InputError("simulation records need unique external ids")
        if not self.pool or not self.test:
            raise InputError(
                f"a simulation needs pool and test images (got {len(self.pool)} pool, "
                f"{len(self.test)} test)"
            )


def _keys(rec: SourceRecord) -> set[str]:
    """What a user may call a record in a test list: its id, name, file name or stem."""
    uri = Path(rec.uri.split("?d=")[-1])
    return {rec.external_id, rec.name, uri.name, uri.stem}


def _read_list(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InputError(f"cannot read id list: {exc}", file=path) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def data_from_source(src: SourceSpec, seed: int = 0) -> SimulationData:
    """Read every record of the source; only labelled ones take part. A bad record stops
    here, with the reader's file / record / reason."""
    path = Path(src.path)
    if not path.exists():
        raise InputError("no such file or folder", file=str(path))
    fmt = detect_format(path) if src.format == "auto" else src.format
    if fmt not in formats():
        raise InputError(f"unknown format {src.format!r}; choose one of: {', '.join(formats())}")
    records = []
    for rec in formats()[fmt].read(path, ReadOptions()):
        if rec.error is not None:
            raise rec.error
        if any(a.shapes and not a.cancelled for a in rec.annotations):
            records.append(rec)
    if src.test_fraction:
        order = sorted(records, key=lambda r: r.external_id)
        random.Random(seed).shuffle(order)
        n = max(1, round(len(order) * src.test_fraction))
        test_ids = {r.external_id for r in order[:n]}
        test = [r for r in records if r.external_id in test_ids]
        pool = [r for r in records if r.external_id not in test_ids]
        return SimulationData(pool, test)
    wanted = set(src.test_ids or _read_list(src.test_list or ""))
    test = [r for r in records if _keys(r) & wanted]
    found = set().union(*(_keys(r) for r in test)) if test else set()
    missing = sorted(wanted - found)
    if missing:
        raise InputError(
            f"{len(missing)} test ids match no labelled record, e.g. {missing[0]!r}",
            file=src.test_list or src.path,
        )
    rest = [r for r in records if not (_keys(r) & wanted)]
    if src.pool_list:
        allowed = set(_read_list(src.pool_list))
        rest = [r for r in rest if _keys(r) & allowed]
    return SimulationData(rest, test)
