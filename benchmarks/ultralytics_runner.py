"""Train and run ultralytics YOLOv8n from scratch: the reference for bccd_detection.py.

Runs only inside the benchmark venv (`make bench-venv`, `.venv-bench/bin/python`), never
in labelloop's own environment: ultralytics is AGPL and is not a labelloop dependency.
bccd_detection.py writes the YOLO-format data set, starts this script in a subprocess
and scores the predictions it writes with labelloop's own metric code.

Writes into --out: `predictions.json` (the test predictions ultralytics' own validation
scores, at conf 0.001: boxes xyxy in original pixels, scores, class indices; and under
`kept` those `predict` keeps at conf 0.05, for counts at its default 0.25 or at per-class
thresholds), `val_kept.json` (the same `predict` boxes on the validation images, where
per-class count thresholds are chosen),
`own_val.json` (ultralytics' own test-split metrics, for reference), `history.csv`
(ultralytics' per-epoch results.csv: val mAP vs time) and `summary.json` (epochs,
training time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from PIL import Image

COUNT_FLOOR = 0.05  # the lowest per-class count threshold the benchmark may choose


def predicted(best: object, path: Path, imgsz: int) -> dict[str, list]:
    """What `predict` keeps for one image at conf COUNT_FLOOR (NMS per class, so its boxes
    at or above 0.25 are exactly those predict keeps at its default 0.25)."""
    (r,) = best.predict(str(path), imgsz=imgsz, conf=COUNT_FLOOR, device="cpu", verbose=False)
    return {
        "boxes": r.boxes.xyxy.tolist(),
        "scores": r.boxes.conf.tolist(),
        "labels": [int(c) for c in r.boxes.cls.tolist()],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="data.yaml (train/val/test)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True, help="training budget, wall clock")
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1000, help="upper bound; the budget decides")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(out / "config"))
    os.environ.setdefault("YOLO_OFFLINE", "1")

    import torch
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")
    started = time.monotonic()
    model.train(
        data=str(args.data),
        imgsz=args.imgsz,
        batch=args.batch,
        epochs=args.epochs,
        time=args.minutes / 60,
        pretrained=False,
        device="cpu",
        workers=0,  # what ultralytics itself picks for CPU training
        cache="ram",
        amp=False,
        seed=args.seed,
        project=str(out),
        name="train",
        exist_ok=True,
        plots=False,
        verbose=False,
    )
    train_s = time.monotonic() - started
    run = out / "train"
    shutil.copy(run / "results.csv", out / "history.csv")
    best = YOLO(str(run / "weights" / "best.pt"))

    # The test predictions are those ultralytics' own validation scores (conf 0.001, NMS
    # IoU 0.7, a box per class above conf, letterboxed rectangles), saved as text files in
    # original-image coordinates; bccd_detection.py scores them with labelloop's code.
    t0 = time.monotonic()
    own = best.val(
        data=str(args.data),
        split="test",
        imgsz=args.imgsz,
        batch=args.batch,
        conf=0.001,
        iou=0.7,
        max_det=300,
        device="cpu",
        plots=False,
        verbose=False,
        save_txt=True,
        save_conf=True,
        project=str(out),
        name="val",
        exist_ok=True,
    )
    predict_s = time.monotonic() - t0
    names = [own.names[i] for i in sorted(own.names)]
    per_class = {
        names[int(c)]: float(ap50) for c, ap50 in zip(own.ap_class_index, own.box.ap50, strict=True)
    }
    (out / "own_val.json").write_text(
        json.dumps(
            {"map50": own.box.map50, "map": own.box.map, "per_class_ap50": per_class}, indent=2
        )
    )
    images = Path(args.data).parent / "images"
    predictions = {}
    for path in sorted((images / "test").glob("*.jpg")):
        with Image.open(path) as im:
            w, h = im.size
        txt = out / "val" / "labels" / f"{path.stem}.txt"
        rows = [ln.split() for ln in txt.read_text().splitlines()] if txt.exists() else []
        boxes, scores, labels = [], [], []
        for c, cx, cy, bw, bh, conf in ((float(v) for v in row) for row in rows):
            boxes.append(
                [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
            )
            scores.append(conf)
            labels.append(int(c))
        predictions[path.stem] = {"boxes": boxes, "scores": scores, "labels": labels}
        predictions[path.stem]["kept"] = predicted(best, path, args.imgsz)
    val = sorted((images / "val").glob("*.jpg"))
    val_kept = {path.stem: predicted(best, path, args.imgsz) for path in val}
    (out / "val_kept.json").write_text(json.dumps(val_kept))
    (out / "predictions.json").write_text(json.dumps(predictions))
    lines = (out / "history.csv").read_text().strip().splitlines()
    summary = {
        "ultralytics": __import__("ultralytics").__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "epochs": len(lines) - 1,
        "train_wall_s": round(train_s, 1),
        "test_val_s": round(predict_s, 2),
        "settings": {**vars(args), "data": str(args.data), "out": str(out)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
