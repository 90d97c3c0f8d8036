"""Temperature scaling per kind: ECE before and after, on validation (where T is fitted)
and on the held-out test split (where it is not).

Each kind trains once through the product's stages (ingest, freeze with a 60/20/20 split,
train) on generated smears; the model version's `metrics.val.calibration` is the fit on
validation. The same collection code then reads the test split, and ECE is computed there
with T = 1 and with the fitted T: the honest figure, since T never saw those images.

Usage: .venv/bin/python benchmarks/calibration.py [--images 60]
Writes benchmarks/results/calibration.json and calibration.png (reliability diagrams).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelloop.config import Settings  # noqa: E402
from labelloop.context import Context, set_context  # noqa: E402
from labelloop.datasets.freeze import freeze, load_manifest  # noqa: E402
from labelloop.db import migrate  # noqa: E402
from labelloop.db.models import ModelVersion  # noqa: E402
from labelloop.domain import Box  # noqa: E402
from labelloop.imaging import encode_png  # noqa: E402
from labelloop.ingest.core import ingest_records  # noqa: E402
from labelloop.ingest.records import RecordAnnotation, SourceRecord  # noqa: E402
from labelloop.projects import create_project, get_project  # noqa: E402
from labelloop.registry import load_model_version  # noqa: E402
from labelloop.runs import execute_run, request_run  # noqa: E402
from labelloop.synthetic import LABELS, generate_smear, instance_shapes, smear_seed  # noqa: E402
from labelloop.training.calibration import apply_temperature, ece, reliability  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
KINDS = {
    "segmentation": {
        "recipe": {
            "encoder_depth": 3,
            "decoder_channels": [32, 16, 8],
            "image_size": 128,
            "batch_size": 8,
            "epochs": 12,
        },
        "shapes": lambda shapes: [s for s in shapes if not isinstance(s, Box)],
    },
    "detection": {
        "recipe": {"image_size": 192, "batch_size": 8, "epochs": 12},
        "shapes": lambda shapes: [s for s in shapes if isinstance(s, Box)],
    },
    "classification": {  # each annotated cell's crop: RBC, WBC or platelet
        "recipe": {"source": "crops", "image_size": 48, "batch_size": 32, "epochs": 8},
        "shapes": lambda shapes: [s for s in shapes if isinstance(s, Box)],
    },
}


def _records(n: int, size: int, pick) -> list[SourceRecord]:
    out = []
    for i in range(n):
        sample = generate_smear(smear_seed(5, i), size)
        data = encode_png(sample.image)
        out.append(
            SourceRecord(
                source="smears",
                external_id=f"s{i}",
                uri=f"s{i}.png",
                file="generated",
                load=lambda d=data: d,
                annotations=[
                    RecordAnnotation(external_id=f"s{i}", shapes=pick(instance_shapes(sample)))
                ],
            )
        )
    return out


def run_kind(task: str, n: int, size: int, workdir: Path) -> dict:
    spec = KINDS[task]
    settings = Settings.embedded_at(workdir, split_fractions=(0.6, 0.2, 0.2), split_seed=0)
    migrate.upgrade(settings.database_url)
    ctx = Context(settings)
    set_context(ctx)
    try:
        with ctx.db.session() as s:
            create_project(s, task, task, list(LABELS))
        with ctx.db.session() as s:
            ingest_records(s, ctx.blobs, get_project(s, task), _records(n, size, spec["shapes"]))
        dv = freeze(ctx, task).dataset_version_id
        cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
        t0 = time.monotonic()
        mv_id = execute_run(ctx, request_run(ctx, dv, overrides=spec["recipe"]).run_id)
        train_s, cpu_s = (
            time.monotonic() - t0,
            resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0,
        )
        with ctx.db.session() as s:
            metrics = s.get(ModelVersion, mv_id).metrics
        fit = metrics["val"]["calibration"]
        loaded = load_model_version(ctx, mv_id)
        manifest = load_manifest(ctx, dv)
        # The kind's own DataModule over train + (test relabelled val): the collection code
        # that fitted T on validation now reads images T never saw.
        items = [
            {**it, "split": "val"} if it["split"] == "test" else it
            for it in manifest["items"]
            if it["split"] in ("train", "test")
        ]
        dm = loaded.kind.training.build_datamodule(
            {**manifest, "items": items}, loaded.recipe, ctx.blobs.get_bytes
        )
        dm.setup("fit")
        cal = loaded.kind.training.calibration
        probs, labels = cal.collect(loaded.model, dm, loaded.recipe)
        t = fit["temperature"]
        after = apply_temperature(probs, t, cal.mode, axis=1)
        return {
            "task": task,
            "mode": cal.mode,
            "temperature": t,
            "val": {k: fit[k] for k in ("n", "ece_before", "ece_after", "nll_before", "nll_after")},
            "test": {
                "n": len(labels),
                "ece_before": round(ece(probs, labels, cal.mode), 6),
                "ece_after": round(ece(after, labels, cal.mode), 6),
                "reliability_before": reliability(probs, labels, cal.mode),
                "reliability_after": reliability(after, labels, cal.mode),
            },
            "primary_metric": {
                metrics["primary_metric"]: metrics["test"].get(metrics["primary_metric"])
            },
            "train_seconds": round(train_s, 1),
            "train_cpu_seconds": round(cpu_s, 1),
            "images": {"total": n, "size": size},
        }
    finally:
        set_context(None)
        ctx.close()


def plot(results: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        for key, colour, label in (
            ("reliability_before", "tab:red", f"T = 1 (ECE {r['test']['ece_before']:.3f})"),
            (
                "reliability_after",
                "tab:blue",
                f"T = {r['temperature']:.2f} (ECE {r['test']['ece_after']:.3f})",
            ),
        ):
            bins = r["test"][key]
            ax.plot(
                [b["confidence"] for b in bins],
                [b["accuracy"] for b in bins],
                "o-",
                color=colour,
                label=label,
            )
        ax.set_title(f"{r['task']} ({r['mode']}), test split, n = {r['test']['n']}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy" if r["mode"] == "softmax" else "fraction correct")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.kinds:
            results.append(run_kind(task, args.images, args.size, Path(tmp) / task))
            print(
                json.dumps(
                    {k: v for k, v in results[-1].items() if k != "test"}
                    | {
                        "test_ece": [
                            results[-1]["test"]["ece_before"],
                            results[-1]["test"]["ece_after"],
                        ]
                    }
                ),
                flush=True,
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = RESULTS / "calibration.json"
    if previous.exists():  # kinds not run this time keep their last figures
        ran = {r["task"] for r in results}
        kept = [r for r in json.loads(previous.read_text())["kinds"] if r["task"] not in ran]
        results = sorted(kept + results, key=lambda r: list(KINDS).index(r["task"]))
    out = {"kinds": results, "machine": {"python": platform.python_version()}}
    (RESULTS / "calibration.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / "calibration.png")


if __name__ == "__main__":
    main()
