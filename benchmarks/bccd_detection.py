"""BCCD detection: labelloop's detector beside ultralytics YOLOv8n, both from scratch.

Both contenders get the same data (BCCD read by labelloop's VOC reader, its own
ImageSets/Main train/val/test split, the two images whose files hold zero-size boxes left
out, as `ingest --skip-invalid` leaves them), the same 416 px input, batch 16, the same
wall-clock training budget (validation every epoch included) and the same test scoring:
labelloop's `detection_metrics` (torchmetrics / pycocotools COCO mAP) over each model's
test predictions at conf 0.001 (a box per class above it, as both frameworks rank boxes
for mAP), in original image pixels; count MAE over the boxes each framework's predict
keeps at conf 0.25 ("test") and at per-class thresholds each framework's predictions on
the validation split choose ("test_tuned": labelloop's `choose_count_thresholds`, what a
labelloop training run stores with the model version).

- labelloop: `get_kind("detection")` train -> load -> evaluate on the frozen manifest,
  recipe defaults unless `--set field=value` overrides them.
- YOLOv8n: `yolov8n.yaml`, pretrained=False, ultralytics' own defaults and its `time=`
  budget, run by benchmarks/ultralytics_runner.py in `.venv-bench` (`make bench-venv`);
  ultralytics is never imported here. Its own test-split mAP is recorded for reference.

By default the two train at the same time, each pinned to its own core (taskset) with
one thread: equal conditions on a shared machine, and ultralytics' own CPU setting (it
trains on one thread, without loader workers, on a 2-core machine). `--sequential` runs
them one after the other instead, labelloop then using every core.

Counts are also set beside the plain baseline every count metric is shown with
(`objects.add_count_baseline`): a constant count per image, the median of the training
list's annotated boxes per image ("count_baseline"). `--baseline` adds it to the last
result JSON and redraws its PNG without training. labelloop's count intervals are scored
on the test list from box scores alone ("intervals") and widened by the margins a
training run chooses on validation ("intervals_calibrated", `training.intervals`).

`--keep-epochs F` keeps the weights of each epoch that ends after the fraction F of the
budget and scores every one on test, with averages of the last few: what any rule for
choosing the kept epoch would score, compared by benchmarks/bccd_checkpoints.py.

Usage: .venv/bin/python benchmarks/bccd_detection.py [--minutes 30] [--only labelloop]
Writes benchmarks/results/bccd_detection.json and bccd_detection.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import bccd_manifest  # noqa: E402
from benchmarks.intervals import interval_figures  # noqa: E402
from benchmarks.overrides import add_set_argument, parse_overrides  # noqa: E402
from labelloop.objects import add_count_baseline  # noqa: E402
from labelloop.training.common import split_items  # noqa: E402
from labelloop.training.detection.data import item_boxes, load_sample  # noqa: E402
from labelloop.training.detection.evaluate import (  # noqa: E402
    boxes_per_class,
    choose_count_thresholds,
    detection_metrics,
)
from labelloop.training.detection.predict import (  # noqa: E402
    Detections,
    detect,
    keep_counted,
)
from labelloop.training.harness import network_state, save_weights  # noqa: E402
from labelloop.training.kind import get_kind  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
RUNNER = ROOT / "benchmarks" / "ultralytics_runner.py"
COUNT_THRESHOLD = 0.25  # both: labelloop's recipe default and ultralytics' predict default


def write_yolo_dataset(manifest: dict[str, Any], fetch: Any, root: Path) -> Path:
    """The manifest's images and boxes as an ultralytics data set (labels: class cx cy w h,
    normalised); returns its data.yaml."""
    labels = manifest["labels"]
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for item in split_items(manifest, split):
            (root / "images" / split / f"{item['name']}.jpg").write_bytes(fetch(item["blob_key"]))
            boxes, classes = item_boxes(item, labels)
            w, h = item["width"], item["height"]
            rows = [
                f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
                f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
                for b, c in zip(boxes, classes, strict=True)
            ]
            (root / "labels" / split / f"{item['name']}.txt").write_text("\n".join(rows) + "\n")
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "test": "images/test",
        "names": dict(enumerate(labels)),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "data.yaml"


def train_labelloop(args: argparse.Namespace) -> None:
    """Child process: train labelloop's detector under the budget, evaluate on test."""
    kind = get_kind("detection")
    manifest, fetch = bccd_manifest("detection")
    fields = {
        "image_size": args.image_size,
        "batch_size": args.batch,
        "epochs": 1000,
        "max_time_s": args.minutes * 60,
        "seed": args.seed,
        **parse_overrides(args.set),
    }
    recipe = kind.recipe_cls.from_dict(fields)
    history: list[dict[str, Any]] = []
    started = time.monotonic()

    kept = Path(args.child_out).parent / "epochs"
    if args.keep_epochs is not None:
        shutil.rmtree(kept, ignore_errors=True)
        kept.mkdir(parents=True)

    def report(event: dict[str, Any]) -> None:
        if event.get("final"):
            elapsed = time.monotonic() - started
            history.append(
                {
                    "epoch": event["epoch"],
                    "time_s": round(elapsed, 1),
                    "loss": event.get("loss"),
                    "val_map50": event.get("val_map50"),
                    "val_map": event.get("val_map"),
                }
            )
            keep = args.keep_epochs is not None and elapsed >= args.keep_epochs * args.minutes * 60
            if keep and event.get("checkpoint"):
                state = network_state(Path(event["checkpoint"]))[0]
                save_weights(state, kept / f"{event['epoch']:04d}.pt")
            print(
                f"[labelloop] epoch {event['epoch']:3d}  {history[-1]['time_s']:6.0f} s  "
                f"loss {event['loss']:.3f}  val mAP50 {event.get('val_map50', float('nan')):.3f}",
                flush=True,
            )

    with tempfile.TemporaryDirectory() as tmp:
        outcome = kind.train(manifest, recipe, fetch, Path(tmp), on_progress=report)
        train_s = time.monotonic() - started
        shutil.copy(outcome.weights_path, Path(args.child_out).with_suffix(".pt"))
    result = {
        "recipe": recipe.model_dump(mode="json"),
        "epochs": outcome.epochs_completed,
        "best_epoch": outcome.best_epoch,
        "train_wall_s": round(train_s, 1),
        "train_loop_s": round(outcome.duration_s, 1),
        "history": history,
    }
    Path(args.child_out).write_text(json.dumps(result, indent=2))
    score_labelloop(Path(args.child_out), manifest, fetch)
    if args.keep_epochs is not None:
        score_epochs(Path(args.child_out), kept, manifest, fetch)


# Recipe fields that change what a trained model predicts without training it again.
INFERENCE_FIELDS = frozenset(
    {"tta_views", "nms_iou", "score_threshold", "eval_score_threshold", "max_detections"}
)


def score_labelloop(
    out: Path, manifest: dict[str, Any], fetch: Any, overrides: dict[str, Any] | None = None
) -> None:
    """The trained model's test metrics added to its result file `out` (weights beside it,
    `.pt`): counts at the recipe's 0.25 ("test") and at per-class thresholds chosen on the
    validation split ("test_tuned"), what a training run stores, with each test image's
    tuned counts. `overrides` change inference fields of the trained recipe for this
    scoring only (`--rescore --set tta_views=8`): the result names them apart
    (`rescored_with`), and its recipe stays the one trained."""
    kind = get_kind("detection")
    labels = manifest["labels"]
    result = json.loads(out.read_text())
    overrides = overrides or {}
    training = set(overrides) - INFERENCE_FIELDS
    if training:
        raise SystemExit(
            f"--rescore --set changes inference only ({', '.join(sorted(INFERENCE_FIELDS))}); "
            f"{', '.join(sorted(training))} would need training again"
        )
    result["rescored_with"] = overrides
    recipe = kind.recipe_cls.from_dict({**result["recipe"], **overrides})
    model = kind.load(out.with_suffix(".pt").read_bytes(), recipe, labels)
    t0 = time.monotonic()
    test = kind.evaluate(model, manifest, fetch, split="test", labels=labels, recipe=recipe)
    result["test_eval_s"] = round(time.monotonic() - t0, 1)
    tuned = kind.calibrate(model, manifest, fetch, labels=labels, recipe=recipe)
    result["test"] = test
    result["test_tuned"] = kind.evaluate(
        model, manifest, fetch, split="test", labels=labels, recipe=tuned
    )
    # Count intervals as `count` prints them: from the boxes' scores alone, and widened by
    # the margins a training run chooses on the validation split (`training.intervals`).
    result.update(interval_figures(kind, model, manifest, fetch, labels, tuned))
    images = [load_sample(it, labels, fetch)[0] for it in split_items(manifest, "test")]
    counted = detect(model, images, tuned, labels=labels)
    result["test_counts_tuned"] = per_image_counts(counted, len(labels))
    result["test_boxes_tuned"] = [  # for the overlay: xyxy and class index of each box
        [[*map(float, b), int(c)] for b, c in zip(d.boxes, d.labels, strict=True)] for d in counted
    ]
    out.write_text(json.dumps(result, indent=2))


SOUPS = (2, 4, 8)  # how many of the last kept epochs each weight average takes


def score_epochs(out: Path, kept: Path, manifest: dict[str, Any], fetch: Any) -> None:
    """Test mAP of every kept epoch's weights and of averages of the last few ("soups"),
    added to the result file `out`: what any rule for choosing the kept epoch would have
    scored, from one run (benchmarks/bccd_checkpoints.py compares the rules)."""
    kind = get_kind("detection")
    labels = manifest["labels"]
    result = json.loads(out.read_text())
    recipe = kind.recipe_cls.from_dict(result["recipe"])
    files = sorted(kept.glob("[0-9]*.pt"))

    def test_scores(weights: Path) -> dict[str, Any]:
        model = kind.load(weights, recipe, labels)
        test = kind.evaluate(model, manifest, fetch, split="test", labels=labels, recipe=recipe)
        return {k: test[k] for k in ("map50", "map", "per_class")}

    result["epochs_scored"] = []
    for f in files:
        scored = {"epoch": int(f.stem), **test_scores(f)}
        result["epochs_scored"].append(scored)
        print(f"[labelloop] epoch {scored['epoch']:3d}  test mAP50 {scored['map50']:.4f}")
    result["soups"] = []
    for k in (k for k in SOUPS if k <= len(files)):
        states = [torch.load(f, map_location="cpu", weights_only=True) for f in files[-k:]]
        soup = save_weights(average_states(states), kept / f"soup_{k}.pt")
        epochs = [int(f.stem) for f in files[-k:]]
        result["soups"].append({"last": k, "epochs": epochs, **test_scores(soup)})
    out.write_text(json.dumps(result, indent=2))


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of floating-point tensors over `states`; other tensors (BatchNorm's batch
    counts) from the last."""
    return {
        k: torch.stack([s[k] for s in states]).mean(0) if v.dtype.is_floating_point else v
        for k, v in states[-1].items()
    }


def per_image_counts(counted: list[Detections], classes: int) -> list[list[int]]:
    return [boxes_per_class(d.labels, classes).tolist() for d in counted]


class LoadSampler:
    """1-minute load average every `every` seconds while contenders run: the machine is
    shared, so the report says how busy it was."""

    def __init__(self, every: float = 30.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        s = self.samples
        return {
            "mean": round(float(np.mean(s)), 2) if s else None,
            "max": round(float(np.max(s)), 2) if s else None,
        }


def _pinned(cmd: list[str], core: int | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if core is None:
        return cmd, env
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return ["taskset", "-c", str(core), *cmd], env


def run_mode(sequential: bool) -> str:
    """How the contenders ran, for the JSON and the plot's title. A `--sequential` run
    that the caller pinned with taskset (two seeds side by side, one core each) says so:
    its contenders did not have the machine to themselves."""
    if not sequential:
        return "side by side, one core each"
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < (os.cpu_count() or 1):
        threads = os.environ.get("OMP_NUM_THREADS", "all")
        return f"pinned by the caller to core {','.join(map(str, cores))}, threads {threads}"
    return "one after the other"


def labelloop_cmd(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--child-out", str(out)]
    cmd += ["--minutes", str(args.minutes), "--image-size", str(args.image_size)]
    cmd += ["--batch", str(args.batch), "--seed", str(args.seed)]
    for pair in args.set:
        cmd += ["--set", pair]
    if args.keep_epochs is not None:
        cmd += ["--keep-epochs", str(args.keep_epochs)]
    return cmd


def yolo_cmd(args: argparse.Namespace, data_yaml: Path, out: Path) -> list[str]:
    return [
        str(BENCH_PYTHON),
        str(RUNNER),
        "--data",
        str(data_yaml),
        "--out",
        str(out),
        "--minutes",
        str(args.minutes),
        "--imgsz",
        str(args.image_size),
        "--batch",
        str(args.batch),
        "--seed",
        str(args.seed),
    ]


def run_contenders(jobs: list[tuple[str, list[str], int | None]], log_dir: Path) -> dict:
    """Run (name, cmd, core) jobs: all at once when pinned to cores, else one by one."""
    phases: dict[str, Any] = {}
    concurrent = all(core is not None for _, _, core in jobs)

    def start(name: str, cmd: list[str], core: int | None) -> subprocess.Popen:
        full, env = _pinned(cmd, core)
        log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed by the child's exit
        print(f"== {name}: {' '.join(full)}  (log {log.name})", flush=True)
        return subprocess.Popen(full, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait(name: str, proc: subprocess.Popen) -> None:
        if proc.wait() != 0:
            tail = (log_dir / f"{name}.log").read_text()[-3000:]
            raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")

    if concurrent:
        with LoadSampler() as load:
            t0 = time.monotonic()
            procs = [(name, start(name, cmd, core)) for name, cmd, core in jobs]
            try:
                for name, proc in procs:
                    wait(name, proc)
            finally:  # one failed: do not leave the other training alone on the machine
                for _, proc in procs:
                    if proc.poll() is None:
                        proc.terminate()
        for name, _, core in jobs:
            phases[name] = {"core": core, "wall_s": round(time.monotonic() - t0, 1)}
            phases[name]["loadavg_1m"] = load.summary()
    else:
        for name, cmd, core in jobs:
            with LoadSampler() as load:
                t0 = time.monotonic()
                wait(name, start(name, cmd, core))
            phases[name] = {"core": core, "wall_s": round(time.monotonic() - t0, 1)}
            phases[name]["loadavg_1m"] = load.summary()
    return phases


def score_yolo(out: Path, manifest: dict[str, Any], fetch: Any) -> dict[str, dict[str, Any]]:
    """YOLOv8n's test predictions scored by labelloop's metric code: "test" counts at
    ultralytics' default conf 0.25, "test_tuned" at per-class thresholds chosen on its
    validation predictions by the same code as labelloop's."""
    labels = manifest["labels"]
    preds = json.loads((out / "predictions.json").read_text())
    val_kept = json.loads((out / "val_kept.json").read_text())

    def dets(p: dict[str, Any]) -> Detections:
        return Detections(
            boxes=np.asarray(p["boxes"], np.float32).reshape(-1, 4),
            scores=np.asarray(p["scores"], np.float32),
            labels=np.asarray(p["labels"], np.int64),
            class_probs=np.zeros((len(p["scores"]), len(labels)), np.float32),
        )

    val = split_items(manifest, "val")
    chosen = choose_count_thresholds(
        [dets(val_kept[it["name"]]) for it in val],
        [item_boxes(it, labels)[1] for it in val],
        labels,
        default=COUNT_THRESHOLD,
    )
    tuned = get_kind("detection").recipe_cls.from_dict({"count_thresholds": chosen})
    ranked, kept, truths = [], [], []
    for item in split_items(manifest, "test"):
        _, boxes, classes = load_sample(item, labels, fetch)
        ranked.append(dets(preds[item["name"]]))
        kept.append(dets(preds[item["name"]]["kept"]))
        truths.append((boxes, classes))
    tuned_kept = [keep_counted(d, tuned, labels) for d in kept]
    test_tuned = detection_metrics(ranked, truths, labels, score_threshold=0.0, counted=tuned_kept)
    return {
        "test": detection_metrics(
            ranked, truths, labels, score_threshold=COUNT_THRESHOLD, counted=kept
        ),
        "test_tuned": {**test_tuned, "count_thresholds": chosen},
        "test_counts_tuned": per_image_counts(tuned_kept, len(labels)),
    }


def yolo_history(out: Path) -> list[dict[str, Any]]:
    lines = (out / "history.csv").read_text().strip().splitlines()
    keys = [k.strip() for k in lines[0].split(",")]
    rows = [dict(zip(keys, (float(v) for v in ln.split(",")), strict=True)) for ln in lines[1:]]
    return [
        {
            "epoch": int(r["epoch"]),
            "time_s": round(r["time"], 1),
            "val_map50": r.get("metrics/mAP50(B)"),
            "val_map": r.get("metrics/mAP50-95(B)"),
        }
        for r in rows
    ]


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["contenders"])
    labels = summary["labels"]
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(17, 4.8))
    groups = [*labels, "mAP@0.5", "mAP@0.5:0.95"]
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        test = summary["contenders"][name]["test"]
        vals = [test["per_class"][c]["ap50"] or 0.0 for c in labels] + [test["map50"], test["map"]]
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        hist = summary["contenders"][name]["history"]
        bx.plot(
            [h["time_s"] / 60 for h in hist],
            [h["val_map50"] for h in hist],
            marker=".",
            label=f"{name} ({len(hist)} epochs)",
        )
    ax.set_xticks(x, [f"AP50 {g}" if g in labels else g for g in groups], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("BCCD test split (72 images), same metric code")
    ax.legend(loc="lower left")
    bx.set_xlabel("training time (min)")
    bx.set_ylabel("val mAP@0.5 (each framework's own per-epoch validation)")
    bx.set_ylim(0, 1.0)
    bx.grid(alpha=0.3)
    bx.legend(loc="lower right")
    bx.set_title(f"budget {summary['budget_min']} min each, {summary['mode']}")
    # RBC counts per test image at the thresholds chosen on validation: the truth is the
    # annotated boxes, and some BCCD images leave most red cells unboxed.
    true = np.asarray(summary["test_true_counts"])[:, 0]
    top = 1
    for i, name in enumerate(names):
        c = summary["contenders"][name]
        pred = np.asarray(c["test_counts_tuned"])[:, 0]
        mae = c["test_tuned"]["per_class"][labels[0]]["count_mae"]
        jitter = (i - (len(names) - 1) / 2) * 0.25
        cx.scatter(true + jitter, pred, s=14, alpha=0.7, label=f"{name} (MAE {mae:.2f})")
        top = max(top, int(pred.max()), int(true.max()))
    cx.plot([0, top], [0, top], color="grey", lw=1, ls="--")
    base = summary.get("count_baseline")
    if base:
        const = base["count_constant"][labels[0]]
        mae = base["per_class"][labels[0]]["count_mae_constant"]
        cx.axhline(const, color="black", lw=1, ls=":", label=f"constant {const:g} (MAE {mae:.2f})")
    cx.set_xlabel(f"annotated {labels[0]} boxes per test image")
    cx.set_ylabel(f"{labels[0]} counted (thresholds chosen on val)")
    cx.set_title(f"{labels[0]} count per test image")
    cx.grid(alpha=0.3)
    cx.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def overlay(
    summary: dict[str, Any], manifest: dict[str, Any], fetch: Any, boxes: list, path: Path
) -> None:
    """The two test images labelloop's first-class count most exceeds and the two it most
    falls short of the annotated boxes: annotated boxes green, counted boxes red, at half
    size."""
    from PIL import Image, ImageDraw

    items = split_items(manifest, "test")
    true = np.asarray(summary["test_true_counts"])[:, 0]
    pred = np.asarray(summary["contenders"]["labelloop"]["test_counts_tuned"])[:, 0]
    order = np.argsort(pred - true, kind="stable")
    tiles = []
    for i in [*order[:2], *order[-2:]]:
        image, truth, classes = load_sample(items[i], manifest["labels"], fetch)
        tile = Image.fromarray(image).convert("RGB")
        draw = ImageDraw.Draw(tile)
        for b in truth[classes == 0]:
            draw.rectangle([float(v) for v in b], outline=(0, 200, 0), width=3)
        for *b, c in boxes[i]:
            if c == 0:
                draw.rectangle([v + 3 for v in b], outline=(230, 0, 0), width=2)
        tile = tile.resize((tile.width // 2, tile.height // 2))  # a light file to open
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, tile.width, 22], fill=(255, 255, 255))
        draw.text(
            (6, 5),
            f"{items[i]['name']}: {true[i]} annotated, {pred[i]} counted",
            fill=(0, 0, 0),
        )
        tiles.append(tile)
    sheet = Image.new("RGB", (sum(t.width for t in tiles), max(t.height for t in tiles)), "white")
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width
    sheet.save(path)


def _table(summary: dict[str, Any]) -> str:
    labels = summary["labels"]
    rows = []
    for name, c in summary["contenders"].items():
        t, tt = c["test"], c["test_tuned"]
        ap = " / ".join(f"{t['per_class'][n]['ap50'] or 0.0:.3f}" for n in labels)
        mae = " / ".join(f"{t['per_class'][n]['count_mae']:.2f}" for n in labels)
        tuned = " / ".join(
            f"{tt['per_class'][n]['count_mae']:.2f} at {tt['count_thresholds'][n]:.2f}"
            for n in labels
        )
        rows.append(
            f"{name:10s} epochs {c['epochs']:3d}  train {c['train_wall_s']:6.0f} s  "
            f"mAP50 {t['map50']:.3f}  mAP {t['map']:.3f}  AP50 {ap}  count MAE {mae}  "
            f"tuned on val {tuned}"
        )
    base = summary.get("count_baseline")
    if base:
        mae = " / ".join(f"{base['per_class'][n]['count_mae_constant']:.2f}" for n in labels)
        const = " / ".join(f"{base['count_constant'][n]:g}" for n in labels)
        rows.append(f"constant   {const} per image (training median)  count MAE {mae}")
    return "\n".join(rows)


def annotated_boxes(manifest: dict[str, Any], labels: list[str], split: str) -> list[list[int]]:
    """Annotated boxes per class of each image of a split."""
    return [
        boxes_per_class(item_boxes(it, labels)[1], len(labels)).tolist()
        for it in split_items(manifest, split)
    ]


def count_baseline(
    manifest: dict[str, Any], labels: list[str], test_counts: list[list[int]]
) -> dict[str, Any]:
    """The constant count per image a counter must beat, as a training run stores it: per
    class the median of the training list's boxes per image, and its MAE on the test
    list's (`test_counts`, boxes per class of each test image)."""
    train = annotated_boxes(manifest, labels, "train")
    return add_count_baseline({"per_class": {}}, labels, train, test_counts)


def count_agreement(summary: dict[str, Any]) -> dict[str, Any]:
    """Per class, how each contender's tuned counts per test image follow the annotated
    counts (Pearson r) and, with two contenders, how far they are from each other (MAE):
    two detectors that agree with each other and not with the truth point at the truth."""
    true = np.asarray(summary["test_true_counts"], float)
    contenders = summary["contenders"]
    counts = {n: np.asarray(c["test_counts_tuned"], float) for n, c in contenders.items()}
    out: dict[str, Any] = {}
    for k, label in enumerate(summary["labels"]):
        row: dict[str, Any] = {
            f"r_{n}_vs_annotated": round(float(np.corrcoef(c[:, k], true[:, k])[0, 1]), 3)
            for n, c in counts.items()
        }
        if len(counts) == 2:
            a, b = counts.values()
            row["mae_between_contenders"] = round(float(np.abs(a[:, k] - b[:, k]).mean()), 3)
        out[label] = row
    return out


def train_contenders(
    args: argparse.Namespace, want: list[str], work: Path, manifest: dict[str, Any], fetch: Any
) -> dict[str, Any]:
    """Train (and, for labelloop, score) the contenders; what the run was like is kept in
    `work/run.json` for `--rescore`."""
    jobs: list[tuple[str, list[str], int | None]] = []
    cores = {} if args.sequential else {"labelloop": 0, "yolov8n": 1}
    if "labelloop" in want:
        jobs.append(
            ("labelloop", labelloop_cmd(args, work / "labelloop.json"), cores.get("labelloop"))
        )
    if "yolov8n" in want:
        data_yaml = write_yolo_dataset(manifest, fetch, CACHE / "bccd_yolo")
        yolo_out = work / "yolov8n"
        shutil.rmtree(yolo_out, ignore_errors=True)
        jobs.append(("yolov8n", yolo_cmd(args, data_yaml, yolo_out), cores.get("yolov8n")))
    load_start = os.getloadavg()
    run = {
        "phases": run_contenders(jobs, work),
        "loadavg_1m_start": round(load_start[0], 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    (work / "run.json").write_text(json.dumps(run, indent=2))
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget per contender")
    ap.add_argument("--image-size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["labelloop", "yolov8n"], default=None)
    ap.add_argument(
        "--sequential", action="store_true", help="one after the other, not one core each"
    )
    add_set_argument(ap, "; with --rescore, inference fields only (tta_views=8)")
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the models and predictions of the last run again, without training",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="add the constant count baseline to the last result and redraw it, no training",
    )
    ap.add_argument(
        "--keep-epochs",
        type=float,
        default=None,
        metavar="FRACTION",
        help="keep the weights of every epoch ending after this fraction of the budget and "
        "score each on test (with averages of the last few): for bccd_checkpoints.py",
    )
    ap.add_argument("--name", default="bccd_detection", help="stem of the result files")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder for JSON and PNG")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        train_labelloop(args)
        return

    manifest, fetch = bccd_manifest("detection")
    labels = manifest["labels"]
    if args.baseline:
        path = args.results.resolve() / f"{args.name}.json"
        summary = json.loads(path.read_text())
        summary["count_baseline"] = count_baseline(manifest, labels, summary["test_true_counts"])
        path.write_text(json.dumps(summary, indent=2) + "\n")
        plot(summary, path.with_suffix(".png"))
        print(_table(summary))
        return
    want = [args.only] if args.only else ["labelloop", "yolov8n"]
    if "yolov8n" in want and not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} not found: run `make bench-venv` first")
    work = CACHE / args.name
    work.mkdir(parents=True, exist_ok=True)
    if args.rescore:  # the models and predictions of the last run, scored again
        trained = json.loads((work / "run.json").read_text())
        if "labelloop" in want:
            score_labelloop(work / "labelloop.json", manifest, fetch, parse_overrides(args.set))
    else:
        trained = train_contenders(args, want, work, manifest, fetch)
    phases = trained["phases"]
    contenders: dict[str, Any] = {}
    boxes = None
    if "labelloop" in want:
        ours = json.loads((work / "labelloop.json").read_text())
        boxes = ours.pop("test_boxes_tuned")
        contenders["labelloop"] = {**ours, **phases["labelloop"]}
    if "yolov8n" in want:
        yolo_out = work / "yolov8n"
        own = json.loads((yolo_out / "own_val.json").read_text())
        run = json.loads((yolo_out / "summary.json").read_text())
        contenders["yolov8n"] = {
            "model": "yolov8n.yaml, pretrained=False, ultralytics defaults",
            "ultralytics": run["ultralytics"],
            "epochs": run["epochs"],
            "train_wall_s": run["train_wall_s"],
            "history": yolo_history(yolo_out),
            **score_yolo(yolo_out, manifest, fetch),
            "own_test_metrics": own,
            **phases["yolov8n"],
        }
    summary = {
        "dataset": "BCCD (VOC), its own ImageSets/Main split; 2 images with zero-size boxes "
        "left out (as ingest --skip-invalid)",
        "images": {s: len(split_items(manifest, s)) for s in ("train", "val", "test")},
        "labels": labels,
        "budget_min": args.minutes,
        "image_size": args.image_size,
        "batch_size": args.batch,
        "mode": run_mode(args.sequential),
        "metric": "labelloop detection_metrics (torchmetrics/pycocotools) on test predictions "
        f"at conf 0.001; counts at conf {COUNT_THRESHOLD} (test) and at per-class thresholds "
        "chosen on validation (test_tuned)",
        "contenders": contenders,
        "test_true_counts": annotated_boxes(manifest, labels, "test"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_1m_start": trained["loadavg_1m_start"],
            "loadavg_1m_end": trained["loadavg_1m_end"],
        },
    }
    summary["count_agreement"] = count_agreement(summary)
    summary["count_baseline"] = count_baseline(manifest, labels, summary["test_true_counts"])
    out_dir = args.results.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{args.name}.png"
    summary["png"] = png.name
    (out_dir / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, png)
    if boxes is not None:
        overlay(summary, manifest, fetch, boxes, out_dir / f"{args.name}_rbc_overlay.png")
    print(_table(summary))
    print(f"wrote {png.name} and {args.name}.json")


if __name__ == "__main__":
    main()
