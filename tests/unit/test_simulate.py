"""`simulate`: an oracle loop through the real stages, resumable, with curves and AUC."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from labelloop.errors import ConfigError, InputError
from labelloop.imaging import encode_png
from labelloop.ingest.records import RecordAnnotation, SourceRecord
from labelloop.simulate import FULL, SimulationData, load_spec, simulate, spec_hash
from labelloop.simulate.loop import run_one
from labelloop.simulate.oracle import data_from_source
from labelloop.simulate.report import summarise
from labelloop.simulate.spec import SimulationSpec, SourceSpec
from tests.factories import small_export
from tests.unit.segmentation_fixtures import LABELS, draw, random_discs

TINY = {"epochs": 1, "batch_size": 2, "image_size": 64}


def _records(n: int, seed: int, prefix: str) -> list[SourceRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img, shapes = draw(random_discs(rng))
        data = encode_png(img)
        out.append(
            SourceRecord(
                source="sim",
                external_id=f"{prefix}{i}",
                uri=f"{prefix}{i}.png",
                file="memory",
                load=lambda d=data: d,
                annotations=[RecordAnnotation(external_id=f"{prefix}{i}", shapes=shapes)],
            )
        )
    return out


def _spec(**kw) -> SimulationSpec:
    base = {
        "name": "discs",
        "task": "segmentation",
        "labels": LABELS,
        "recipe": TINY,
        "strategies": ["random", "uncertainty", "hybrid"],
        "seeds": [0, 1],
        "sizes": [2, 4, 6],
        "metric": "mean_dice",
        "extra_metrics": ["per_class.Red.dice"],
        "samples_per_epoch": 8,
    }
    return SimulationSpec.model_validate({**base, **kw})


def test_simulation_reveals_only_what_each_strategy_selects(tmp_path):
    data = SimulationData(_records(10, 0, "p"), _records(3, 1, "t"))
    calls = []
    summary = simulate(_spec(), tmp_path / "out", data, on_run=lambda r, d, t: calls.append(d))
    assert calls == list(range(1, 9))  # 2 seeds x (3 strategies + the full reference)
    runs = {(r["strategy"], r["seed"]): r for r in summary["runs"]}
    for (strategy, _seed), run in runs.items():
        sizes = [p["labelled"] for p in run["points"]]
        assert sizes == ([10] if strategy == FULL else [2, 4, 6])
        picked = [i for p in run["points"] for i in p.get("selected", [])]
        assert len(picked) == len(set(picked)) == (0 if strategy == FULL else 4)
        assert all(0 <= p["metric"] <= 1 for p in run["points"])
    # The same seed starts every strategy from the same labelled images, trained once: the
    # seed's first strategy keeps its first step and the others start from a copy.
    first = {s: runs[(s, 0)]["points"][0] for s in ("random", "uncertainty", "hybrid")}
    assert len({json.dumps(p["metric"]) for p in first.values()}) == 1
    assert not first["random"].get("shared")
    assert first["uncertainty"]["shared"] and first["hybrid"]["shared"]
    assert not (tmp_path / "out" / "seed_sets").exists()  # every run finished
    # A run started from the kept seed set goes on exactly as one that trained it.
    alone = run_one(_spec(), data, "uncertainty", 0, tmp_path / "alone")
    shared = runs[("uncertainty", 0)]["points"]
    assert [p.get("selected") for p in alone["points"]] == [p.get("selected") for p in shared]
    assert [p["metric"] for p in alone["points"]] == [p["metric"] for p in shared]
    st = summary["strategies"]["uncertainty"]
    assert st["sizes"] == [2, 4, 6]
    assert all(0 <= v <= 1 for v in st["curves"]["per_class.Red.dice"]["mean"])
    assert np.isfinite(st["auc"]["mean"]) and "auc_gain_over_random" in st
    assert (tmp_path / "out" / "simulation.png").stat().st_size > 10_000
    # Resumed: finished runs are not run again.
    again = simulate(_spec(), tmp_path / "out", data, on_run=lambda r, d, t: calls.append(d))
    assert len(calls) == 8 and again["strategies"].keys() == summary["strategies"].keys()
    # A third seed asked for but nothing run: the summary covers the finished two.
    more = _spec(seeds=[0, 1, 2])
    partial = simulate(
        more, tmp_path / "out", data, on_run=lambda r, d, t: calls.append(d), run_missing=False
    )
    assert len(calls) == 8 and partial["strategies"]["uncertainty"]["seeds"] == 2
    # Another list of strategies reuses the runs it shares with the finished one.
    fewer = simulate(
        _spec(strategies=["random", "uncertainty"]),
        tmp_path / "out",
        data,
        on_run=lambda r, d, t: calls.append(d),
    )
    assert len(calls) == 8 and fewer["strategies"]["uncertainty"]["seeds"] == 2
    # Runs recorded under the hash of the whole spec (as runs were before) still count.
    log = tmp_path / "out" / "runs.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    legacy = [{**r, "spec": spec_hash(_spec())} if r["strategy"] != FULL else r for r in rows]
    log.write_text("".join(json.dumps(r) + "\n" for r in legacy))
    simulate(_spec(), tmp_path / "out", data, on_run=lambda r, d, t: calls.append(d))
    assert len(calls) == 8


def test_summary_labels_for_target_and_auc():
    def run(strategy, seed, ys, sizes=(2, 4, 8)):
        pts = [{"labelled": n, "metric": y} for n, y in zip(sizes, ys, strict=True)]
        return {"strategy": strategy, "seed": seed, "points": pts}

    runs = [
        run(FULL, 0, [1.0], (10,)),
        run(FULL, 1, [1.0], (10,)),
        run("random", 0, [0.5, 0.7, 0.9]),
        run("random", 1, [0.5, 0.7, 0.9]),
        run("smart", 0, [0.5, 0.96, 0.97]),
        run("smart", 1, [0.5, 0.94, 0.97]),
    ]
    s = summarise(runs, "metric", [])
    assert s["target"] == pytest.approx(0.95)
    assert s["strategies"]["random"]["labels_for_target"] is None
    assert s["strategies"]["smart"]["labels_for_target"] == 4  # mean 0.95 at 4 labels
    assert s["strategies"]["smart"]["labels_for_target_per_seed"] == {0: 4, 1: 8}
    # Area: (0.5 + 0.7) / 2 * 2 + (0.7 + 0.9) / 2 * 4 = 4.4 over 6 labels.
    assert s["strategies"]["random"]["auc"]["mean"] == pytest.approx(4.4 / 6)
    assert s["strategies"]["smart"]["auc_gain_over_random"]["mean"] > 0.1


def test_data_from_a_real_export_and_clear_errors(tmp_path):
    export = small_export(tmp_path / "src", n=5)
    data = data_from_source(SourceSpec(path=str(export), test_ids=["img0", "img1"]))
    assert (len(data.pool), len(data.test)) == (3, 2)
    with pytest.raises(InputError, match=r"1 test ids match no labelled record, e\.g\. 'nope'"):
        data_from_source(SourceSpec(path=str(export), test_ids=["img0", "nope"]))
    ids = tmp_path / "test.txt"
    ids.write_text("img4\n")
    data = data_from_source(SourceSpec(path=str(export), test_list=str(ids)))
    assert [(r.external_id, r.name) for r in data.test] == [("5", "task 5")]  # by file stem
    with pytest.raises(ValueError, match="exactly one of"):
        SourceSpec(path="x", test_ids=["a"], test_fraction=0.2)
    with pytest.raises(ConfigError, match="sizes must increase"):
        load_spec("task: segmentation\nlabels: [a]\nsizes: [4, 2]\nmetric: mean_dice\n")
    with pytest.raises(ConfigError, match="unknown strategies"):
        load_spec("task: detection\nlabels: [a]\nsizes: [1, 2]\nmetric: m\nstrategies: [bald]\n")


def test_cli_runs_a_spec_file(tmp_path, monkeypatch):
    from labelloop.cli.main import app

    monkeypatch.setenv("LABELLOOP_DATA_DIR", str(tmp_path / "data"))
    export = small_export(tmp_path / "src", n=6)
    spec = tmp_path / "sim.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "cli-sim",
                "task": "segmentation",
                "labels": ["RBC", "WBC", "Platelets"],
                "source": {"path": str(export), "test_ids": ["img0", "img1"]},
                "recipe": TINY,
                "strategies": ["random", "coreset"],
                "seeds": [0],
                "sizes": [1, 3],
                "metric": "mean_dice",
            }
        )
    )
    r = CliRunner().invoke(app, ["simulate", str(spec), "--out", str(tmp_path / "o"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert set(out["strategies"]) == {"random", "coreset"} and out["pool"] == 4
    bad = CliRunner().invoke(app, ["simulate", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "missing.yaml" in bad.output


def test_full_references_survive_a_change_of_strategies_or_sizes():
    a, b = _spec(), _spec(sizes=[2, 3], strategies=["random"], seeds=[0, 1, 2, 3])
    assert spec_hash(a, FULL) == spec_hash(b, FULL)
    assert spec_hash(a, "random") != spec_hash(b, "random")
    assert spec_hash(a, FULL) != spec_hash(_spec(recipe={**TINY, "epochs": 2}), FULL)


def test_a_strategy_run_keeps_its_hash_when_other_strategies_come_and_go():
    a = _spec(strategies=["random", "uncertainty"])
    b = _spec(strategies=["random", "uncertainty", "coreset"], methods={"coreset": "margin"})
    assert spec_hash(a, "random") == spec_hash(b, "random")
    assert spec_hash(a, "uncertainty") == spec_hash(b, "uncertainty")
    # What the run itself depends on still counts: its method, its sizes, the recipe.
    assert spec_hash(a, "uncertainty") != spec_hash(
        _spec(strategies=["random", "uncertainty"], methods={"uncertainty": "margin"}),
        "uncertainty",
    )
    assert spec_hash(a, "random") != spec_hash(_spec(strategies=["random"], sizes=[2, 3]), "random")
