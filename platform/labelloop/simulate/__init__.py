"""`labelloop simulate`: label-efficiency curves with an oracle (see `spec.py`).

Runs are (strategy, seed) pairs plus one full-pool reference per seed. Each finished run
is appended to `runs.jsonl` under the output folder with the spec's hash, so an
interrupted simulation resumes where it stopped; the summary (`simulation.json`) and the
plot (`simulation.png`) are rewritten from all finished runs at the end. The first step
of each seed is trained once for all strategies (`seed_sets/`, see `loop`), and removed
when every run is finished.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from labelloop.simulate.loop import FULL, run_one
from labelloop.simulate.oracle import SimulationData, data_from_source
from labelloop.simulate.report import plot, summarise
from labelloop.simulate.spec import SimulationSpec, load_spec

__all__ = ["FULL", "SimulationData", "SimulationSpec", "load_spec", "simulate", "spec_hash"]

_DATA: SimulationData | None = None  # set before forking workers: they inherit it


_BASE_SKIP = {"jobs", "name", "seeds"}
_LISTS = {"strategies", "methods", "params", "include_full"}
_STRATEGY_FIELDS = _LISTS | {"sizes"}
# Added later: unset, runs recorded before them still count.
_LATER = ("warm_start", "warm_epochs", "control_fraction")


def _digest(spec: SimulationSpec, skip: set[str], **extra: Any) -> str:
    core = {**spec.model_dump(mode="json", exclude=skip), **extra}
    for key in _LATER:
        if not core.get(key):
            core.pop(key, None)
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def spec_hash(spec: SimulationSpec, strategy: str | None = None) -> str:
    """What a finished run depends on. The full-pool reference ignores the strategies and
    label sizes, so changing those keeps the (expensive) references already trained; a
    strategy's run depends on its own scoring method and parameters, not on which other
    strategies the spec lists, so adding one to a finished simulation runs only it."""
    if strategy == FULL:
        # A warm loop's reference trains as long as the loop's steps together.
        steps = {"steps": len(spec.sizes)} if spec.warm_start else {}
        return _digest(spec, _BASE_SKIP | _STRATEGY_FIELDS, **steps)
    if strategy is None:
        return _digest(spec, _BASE_SKIP)
    run = {
        "strategy": strategy,
        "method": spec.methods.get(strategy),
        "params": spec.params.get(strategy),
    }
    return _digest(spec, _BASE_SKIP | _LISTS, run=run)


def seed_set_hash(spec: SimulationSpec) -> str:
    """What a seed's first step depends on: not the strategies, the later sizes or how
    later rounds are trained and chosen."""
    return _digest(spec, _BASE_SKIP | _STRATEGY_FIELDS | set(_LATER), first=spec.sizes[0])


def _jobs(spec: SimulationSpec) -> list[tuple[str, int]]:
    # Every seed's first strategy goes first: it leaves the seed set the others start from.
    jobs = [(FULL, seed) for seed in spec.seeds] if spec.include_full else []
    first, rest = spec.strategies[:1], spec.strategies[1:]
    jobs += [(s, seed) for s in first for seed in spec.seeds]
    return jobs + [(s, seed) for seed in spec.seeds for s in rest]


def _work(args: tuple) -> dict[str, Any]:
    spec_json, strategy, seed, workdir, label_map, seed_set, core = args
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})  # one core per run: training uses one thread
    spec = SimulationSpec.model_validate_json(spec_json)
    assert _DATA is not None
    return run_one(spec, _DATA, strategy, seed, Path(workdir), label_map, seed_set=Path(seed_set))


def simulate(
    spec: SimulationSpec,
    out_dir: Path,
    data: SimulationData | None = None,
    *,
    on_run: Callable[[dict[str, Any], int, int], None] | None = None,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Run (or resume) every run of `spec`; returns the summary. `data` defaults to the
    spec's source. With `run_missing=False` nothing is trained: the summary and plot are
    rewritten from the runs finished so far (a look at a simulation still under way)."""
    global _DATA
    out_dir.mkdir(parents=True, exist_ok=True)
    if data is None:
        if spec.source is None:
            raise ValueError("the spec has no source and no data was given")
        data = data_from_source(spec.source)
    label_map = spec.source.label_map if spec.source else {}
    log = out_dir / "runs.jsonl"
    done: list[dict] = []
    wanted = set(_jobs(spec))
    if log.exists():
        # Runs recorded under the hash of the whole spec (before strategies were hashed
        # one by one) still count while the spec is unchanged.
        whole = spec_hash(spec)
        hashes = {s: (spec_hash(spec, s), whole) for s, _ in wanted}
        for line in log.read_text().splitlines():
            row = json.loads(line)
            key = (row["strategy"], row["seed"])
            if key in wanted and row.get("spec") in hashes[row["strategy"]]:
                done.append(row)
                wanted.discard(key)  # one row per run, the first one written
    finished = {(r["strategy"], r["seed"]) for r in done}
    todo = [j for j in _jobs(spec) if j not in finished] if run_missing else []
    total = len(_jobs(spec))
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    seed_sets = out_dir / "seed_sets"
    seed_sets.mkdir(exist_ok=True)
    first = seed_set_hash(spec)
    args = [
        (
            spec.model_dump_json(),
            strategy,
            seed,
            str(out_dir / "work" / f"{strategy}-{seed}"),
            label_map,
            str(seed_sets / f"{first}-{seed}"),
            cores[i % len(cores)] if spec.jobs > 1 and cores else None,
        )
        for i, (strategy, seed) in enumerate(todo)
    ]
    _DATA = data

    def record(run: dict[str, Any]) -> None:
        row = {**run, "spec": spec_hash(spec, run["strategy"])}
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        if on_run:
            on_run(run, len(done), total)

    try:
        if spec.jobs > 1 and len(args) > 1:
            with mp.get_context("fork").Pool(spec.jobs, maxtasksperchild=1) as pool:
                for run in pool.imap_unordered(_work, args):
                    record(run)
        else:
            for a in args:
                record(_work((*a[:6], None)))
    finally:
        _DATA = None
    if len(done) == total:  # nothing left to start from a seed set
        shutil.rmtree(seed_sets, ignore_errors=True)
    summary = summarise(done, spec.metric, spec.extra_metrics)
    summary.update(
        {
            "name": spec.name,
            "spec": spec.model_dump(mode="json"),
            "pool": len(data.pool),
            "test": len(data.test),
            "runs": sorted(done, key=lambda r: (r["strategy"], r["seed"])),
        }
    )
    (out_dir / "simulation.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out_dir / "simulation.png", spec.name, spec.extra_metrics)
    return summary
