"""Train and run ultralytics YOLOv8n from scratch: the reference for bccd_detection.py.

Runs only inside the benchmark venv (`make bench-venv`, `.venv-bench/bin/python`), never
in labelloop's own environment: ultralytics is AGPL and is not a labelloop dependency.
bccd_detection.py writes the YOLO-format data set, starts this script in a subprocess
and scores the predictions it writes with labelloop's own metric code.

Writes into --out: `predictions.json` (test images at conf 0.001: boxes xyxy in original
pixels, scores, class indices), `own_val.json` (ultralytics' own test-split metrics, for
reference), `history.csv` (ultralytics' per-epoch results.csv: val mAP vs time) and
`summary.json` (epochs, training time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="data.yaml (train/val/test)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, required=True, help="training budget, wall clock")
    ap.add_argument("--imgsz", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=1000, help="upper bound; the budget decides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
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
        workers=args.workers,
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

    own = best.val(
        data=str(args.data),
        split="test",
        imgsz=args.imgsz,
        batch=args.batch,
        conf=0.001,
        iou=0.7,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(out),
        name="val",
        exist_ok=True,
    )
    names = [own.names[i] for i in sorted(own.names)]
    per_class = {
        names[int(c)]: float(ap50) for c, ap50 in zip(own.ap_class_index, own.box.ap50, strict=True)
    }
    (out / "own_val.json").write_text(
        json.dumps(
            {"map50": own.box.map50, "map": own.box.map, "per_class_ap50": per_class}, indent=2
        )
    )

    test_dir = Path(args.data).parent / "images" / "test"
    predictions = {}
    t0 = time.monotonic()
    for path in sorted(test_dir.glob("*.jpg")):
        (r,) = best.predict(
            str(path),
            imgsz=args.imgsz,
            conf=0.001,
            iou=0.7,
            max_det=300,
            device="cpu",
            verbose=False,
        )
        predictions[path.stem] = {
            "boxes": r.boxes.xyxy.tolist(),
            "scores": r.boxes.conf.tolist(),
            "labels": [int(c) for c in r.boxes.cls.tolist()],
        }
    predict_s = time.monotonic() - t0
    (out / "predictions.json").write_text(json.dumps(predictions))
    lines = (out / "history.csv").read_text().strip().splitlines()
    summary = {
        "ultralytics": __import__("ultralytics").__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "epochs": len(lines) - 1,
        "train_wall_s": round(train_s, 1),
        "predict_s": round(predict_s, 2),
        "settings": {**vars(args), "data": str(args.data), "out": str(out)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
