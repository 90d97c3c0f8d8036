"""Label-efficiency curves on real data: `labelloop.simulate` on ISBI 2012 and BCCD.

The oracle loop runs through the product's own stages (ingest, freeze, train, score,
select) on a private embedded database per run: labels of the pool images are withheld
and revealed as each strategy selects them; every step trains from scratch on what is
labelled and is measured on a fixed held-out test set.

- ISBI 2012 (segmentation, binary membrane mode): pool = images 0-24, test = 25-29;
  metric: membrane Dice on the test images at full resolution.
- BCCD (detection): pool = ImageSets/Main/train.txt (205 ids; the two files with
  zero-size boxes are left out), test = test.txt (72); metrics: mAP@0.5 and count MAE.
- smears (detection, synthetic, no shared data): a heterogeneous pool of generated smears,
  four "slides" of unequal size (50 / 25 / 15 / 10 %) each with its own stain cast and
  brightness, on top of the generator's own spread of density (8-40 RBCs), WBC presence
  (60 % of fields) and platelets (0-6); the test set is drawn the same way.

Each training gets the same compute whatever the labelled count (`samples_per_epoch`
samples per epoch for a fixed number of epochs), so a curve shows what more labels buy,
not what more optimiser steps buy. Runs go in parallel, one core each (`--jobs`).

Usage: .venv/bin/python benchmarks/label_efficiency.py isbi [--seeds 3] [--jobs 2]
       .venv/bin/python benchmarks/label_efficiency.py bccd
Writes benchmarks/results/label_efficiency_<dataset>.json and .png (and a resumable
runs.jsonl under benchmarks/.cache/).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import BCCD, BCCD_LABELS, ISBI, _require  # noqa: E402
from labelloop.geometry import mask_shape  # noqa: E402
from labelloop.ingest.readers.voc import read_voc  # noqa: E402
from labelloop.ingest.records import ReadOptions, RecordAnnotation, SourceRecord  # noqa: E402
from labelloop.simulate import SimulationData, SimulationSpec, simulate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache" / "label_efficiency"


def isbi_data() -> SimulationData:
    _require(ISBI)
    records = []
    for i in range(30):
        image_path = ISBI / "train" / "image" / f"{i}.png"
        label = np.asarray(Image.open(ISBI / "train" / "label" / f"{i}.png").convert("L"))
        membrane = mask_shape(label < 128, "membrane")  # 0 = membrane, 255 = cell interior
        records.append(
            SourceRecord(
                source="isbi2012",
                external_id=f"isbi-{i}",
                uri=str(image_path),
                file=str(image_path),
                load=image_path.read_bytes,
                annotations=[RecordAnnotation(external_id=f"isbi-{i}", shapes=[membrane])],
            )
        )
    return SimulationData(pool=records[:25], test=records[25:])


def bccd_data() -> SimulationData:
    _require(BCCD)
    lists = {
        s: set((BCCD / "ImageSets" / "Main" / f"{s}.txt").read_text().split())
        for s in ("train", "test")
    }
    pool, test = [], []
    for rec in read_voc(BCCD, ReadOptions(source="bccd")):
        stem = Path(rec.uri).stem
        if rec.error is not None:  # two labelImg click artefacts (zero-size boxes)
            continue
        for ann in rec.annotations:
            ann.shapes = [sh for sh in ann.shapes if sh.label in BCCD_LABELS]
        if stem in lists["test"]:
            test.append(rec)
        elif stem in lists["train"]:
            pool.append(rec)
    return SimulationData(pool=pool, test=test)


SLIDES = [  # (share of the pool, RGB gain, brightness)
    (0.50, (1.00, 1.00, 1.00), 1.00),
    (0.25, (0.85, 0.95, 1.15), 0.95),
    (0.15, (1.10, 0.85, 0.90), 0.85),
    (0.10, (0.80, 1.05, 0.80), 1.10),
]


def smears_data(
    n_pool: int = 80, n_test: int = 30, size: int = 192, regions: bool = False
) -> SimulationData:
    """Generated smears with a per-slide stain cast (see the module docstring): each cell's
    box, or with `regions` its polygon / mask."""
    from labelloop.domain import Box
    from labelloop.imaging import encode_png
    from labelloop.synthetic import generate_smear, instance_shapes, smear_seed

    shares = np.cumsum([sh for sh, _, _ in SLIDES])

    def record(i: int, prefix: str) -> SourceRecord:
        sample = generate_smear(smear_seed(11, i), size)
        slide = int(np.searchsorted(shares, (i * 0.618034) % 1.0, side="right"))
        _, gain, bright = SLIDES[min(slide, len(SLIDES) - 1)]
        img = np.clip(sample.image * np.array(gain) * bright, 0, 255).astype(np.uint8)
        data = encode_png(img)
        shapes = [sh for sh in instance_shapes(sample) if isinstance(sh, Box) != regions]
        return SourceRecord(
            source="smears",
            external_id=f"{prefix}{i}",
            uri=f"{prefix}{i}.png",
            file="generated",
            load=lambda d=data: d,
            annotations=[RecordAnnotation(external_id=f"{prefix}{i}", shapes=shapes)],
            meta={"slide": slide},
        )

    pool = [record(i, "p") for i in range(n_pool)]
    test = [record(10_000 + i, "t") for i in range(n_test)]
    return SimulationData(pool=pool, test=test)


SPECS = {
    "isbi": {
        "name": "ISBI 2012 membranes",
        "task": "segmentation",
        "labels": ["membrane"],
        "recipe": {
            "mode": "binary",
            "encoder": "resnet18",
            "encoder_depth": 4,
            "image_size": 256,
            "batch_size": 8,
            "epochs": 8,
            "lr": 3e-3,
            "distortion": 0.3,
            "augment": {"hue_shift": 0, "saturation_shift": 0, "scale": 0.15},
        },
        "strategies": ["random", "uncertainty", "hybrid"],
        "methods": {"uncertainty": "entropy_mean", "hybrid": "entropy_mean"},
        "sizes": [2, 4, 7, 12],
        "metric": "mean_dice",
        "extra_metrics": ["pixel_error"],
        "samples_per_epoch": 40,
    },
    "bccd": {
        "name": "BCCD detection",
        "task": "detection",
        "labels": BCCD_LABELS,
        "recipe": {"image_size": 320, "epochs": 8, "batch_size": 16},
        "strategies": ["random", "uncertainty", "class_balance"],
        "methods": {
            "uncertainty": "least_confidence_max",
            "class_balance": "least_confidence_max",
        },
        "sizes": [10, 25, 50, 100],
        "metric": "map50",
        "extra_metrics": ["map", "count_mae"],
        "samples_per_epoch": 112,
    },
}
SPECS["smears"] = {
    "name": "Heterogeneous synthetic smears (detection)",
    "task": "detection",
    "labels": BCCD_LABELS,
    "recipe": {"image_size": 192, "epochs": 6, "batch_size": 16},
    "strategies": ["random", "uncertainty", "badge", "detection_aware"],
    "methods": {},
    "sizes": [8, 16, 32],
    "metric": "map50",
    "extra_metrics": ["map", "count_mae"],
    "samples_per_epoch": 64,
}
SPECS["smears_seg"] = {
    "name": "Heterogeneous synthetic smears (instance segmentation, counts)",
    "task": "segmentation",
    "labels": BCCD_LABELS,
    "recipe": {"mode": "instance", "image_size": 192, "epochs": 15, "batch_size": 8},
    "strategies": ["random", "uncertainty", "hybrid", "count_uncertainty"],
    "methods": {},
    "sizes": [8, 16, 32],
    "metric": "mean_dice",
    "extra_metrics": ["mean_count_mae"],
    "samples_per_epoch": 64,
}
LOADERS = {
    "isbi": isbi_data,
    "bccd": bccd_data,
    "smears": smears_data,
    "smears_seg": lambda: smears_data(regions=True),
}


def markdown_table(summary: dict) -> str:
    """The BENCHMARKS.md table: labels needed for 95 % of the full-pool metric (when the
    full pool was trained), area under the curve and its paired gain over random (mean
    +/- sd over seeds, and in how many seeds it was ahead), final values."""
    pool = summary["pool"]
    full, target = summary["full"], summary["target"]
    has_full = bool(full.get("seeds"))
    extra = [k for k in next(iter(summary["strategies"].values()))["curves"] if k != "metric"]
    reference = summary["strategies"].get("random", {}).get("auc", {}).get("per_seed", {})
    head = [
        "strategy",
        *(
            ["labels for 95 % of full" + ("" if target is None else f" ({target:.3f})"), "per seed"]
            if has_full
            else []
        ),
        "AUC",
        "AUC gain over random (paired)",
        "seeds ahead of random",
        f"{summary['metric']} at the last size",
        *[f"{k} at the last size" for k in extra],
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, st in summary["strategies"].items():
        need = st["labels_for_target"]
        per_seed = ", ".join(
            "–" if v is None else str(v)
            for _, v in sorted(st["labels_for_target_per_seed"].items())
        )
        gain = st.get("auc_gain_over_random", {})
        paired = [k for k in st["auc"]["per_seed"] if k in reference]
        ahead = sum(st["auc"]["per_seed"][k] > reference[k] for k in paired)
        cells = [
            name,
            *(
                [
                    f"not reached by {st['sizes'][-1]}" if need is None else f"{need} of {pool}",
                    per_seed,
                ]
                if has_full
                else []
            ),
            f"{st['auc']['mean']:.4f} ± {st['auc']['sd']:.4f}",
            "–" if not gain else f"{gain['mean']:+.4f} ± {gain['sd']:.4f}",
            "–" if name == "random" or not paired else f"{ahead} of {len(paired)}",
            f"{st['curves']['metric']['mean'][-1]:.3f} ± {st['curves']['metric']['sd'][-1]:.3f}",
            *[f"{st['curves'][k]['mean'][-1]:.3f}" for k in extra],
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if has_full:
        rows.append(
            f"| full pool ({pool} images) | | | | | | {full['mean']:.3f} ± {full['sd']:.3f} |"
            + " |" * len(extra)
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(SPECS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--spec", type=Path, help="JSON overrides of the built-in spec")
    parser.add_argument("--fresh", action="store_true", help="ignore finished runs")
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    parser.add_argument(
        "--table", action="store_true", help="print the Markdown table of the last result"
    )
    parser.add_argument(
        "--finished-only",
        action="store_true",
        help="train nothing: summarise the runs finished so far (results say how many)",
    )
    args = parser.parse_args()
    name = args.dataset + (f"_{args.tag}" if args.tag else "")
    if args.table:
        print(markdown_table(json.loads((RESULTS / f"label_efficiency_{name}.json").read_text())))
        return
    spec_data = {**SPECS[args.dataset], "seeds": list(range(args.seeds)), "jobs": args.jobs}
    if args.spec:
        spec_data.update(json.loads(args.spec.read_text()))
    spec = SimulationSpec.model_validate(spec_data)
    cache = CACHE / name
    if args.fresh and cache.exists():
        shutil.rmtree(cache)
    data = LOADERS[args.dataset]()
    started = time.monotonic()

    def progress(run: dict, done: int, total: int) -> None:
        last = run["points"][-1]
        print(
            f"[{done}/{total}] {run['strategy']} seed {run['seed']}: "
            f"{spec.metric} {last['metric']:.3f} at {last['labelled']} labels "
            f"({time.monotonic() - started:.0f} s)",
            flush=True,
        )

    summary = simulate(spec, cache, data, on_run=progress, run_missing=not args.finished_only)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["machine"] = {
        "cpus": len(__import__("os").sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"label_efficiency_{name}"
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    shutil.copy(cache / "simulation.png", out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("runs", "spec")}, indent=1))
    print(markdown_table(summary))


if __name__ == "__main__":
    main()
