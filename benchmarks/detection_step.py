"""Where a detection training step's time goes on one CPU thread, and how two checkouts compare.

A step of the default detection recipe on BCCD training images in its mosaic phase
(batch 16, inputs at `mosaic_image_size`, 320 px by default and recorded per side, bf16
autocast where the CPU runs bfloat16 natively, as training's `precision: auto` does)
is cut into its parts: preparing the batch (decode-free: images are in memory, so
mosaic, warps, colour jitter, normalisation and collation), the network's forward pass,
the loss (assignment included) and its backward pass through the network, and the
optimiser step. Each part's median over the measured steps is reported.

`--against DIR` measures a second checkout the same way (DIR is its repository root, e.g.
`git worktree add /tmp/base <commit>`), each `--variant FIELD=VALUE` the default
recipe with that one override (e.g. `encoder=regnety_002`), and `--channels-last` the
default recipe with the network and its inputs in channels-last memory (the layout the
segmentation U-Net trains in on CPU), alternating the sides
`--repeats` times in child processes, so that machine noise reaches all alike; the figures
to read are the ratios of each side's medians to the first side's. Pin it to one core
(`taskset -c 1`) and set `OMP_NUM_THREADS=1` to measure the one-thread budget the BCCD
benchmark trains under.

Usage: OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/detection_step.py
           [--against /tmp/base] [--variant FIELD=VALUE ...] [--channels-last]
           [--steps 8] [--repeats 3]
           [--name detection_step]
Writes benchmarks/results/<name>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.overrides import field_value, parse_overrides  # noqa: E402

RESULTS = HERE.parent / "results"
PARTS = ("data", "forward", "loss", "backward", "optimizer")


def measure(
    steps: int, warmup: int, seed: int, overrides: dict[str, Any], channels_last: bool = False
) -> dict[str, Any]:
    """Per-part seconds of `steps` training steps (after `warmup`) of the default recipe
    with `overrides`, in this process."""
    import torch

    from benchmarks.datasets import bccd_manifest
    from labelloop.training.detection.data import DetectionDataModule, collate
    from labelloop.training.detection.loss import DetectionLoss
    from labelloop.training.detection.network import build_detector
    from labelloop.training.harness import native_bf16
    from labelloop.training.kind import get_kind
    from labelloop.training.segmentation.network import channels_last_on_cpu

    torch.manual_seed(seed)
    recipe = get_kind("detection").recipe_cls.from_dict({"seed": seed, **overrides})
    manifest, fetch = bccd_manifest("detection")
    dm = DetectionDataModule(manifest, recipe, fetch)
    dm.setup()
    data = dm.train_set
    assert data is not None
    net = build_detector(recipe, dm.num_classes)
    # The segmentation U-Net's own switch, so the side measures the layout it trains in.
    converted = channels_last and channels_last_on_cpu(net, torch.device("cpu"))
    memory = torch.channels_last if converted else torch.contiguous_format
    loss_fn = DetectionLoss(recipe)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr)
    bf16 = native_bf16("cpu")
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    boxes = []
    batch = recipe.batch_size
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        images, gt_boxes, gt_classes, mask = collate(
            [data[(step * batch + k) % len(data)] for k in range(batch)]
        )
        images = images.contiguous(memory_format=memory)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(images)
            t2 = time.perf_counter()
            loss = loss_fn(out, gt_classes, gt_boxes, mask)["loss"]
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t5 = time.perf_counter()
        if step >= warmup:
            for part, s in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                times[part].append(s)
            boxes.append(int(mask.sum()))
    import labelloop

    return {
        "checkout": str(Path(labelloop.__file__).resolve().parents[2]),
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "boxes_per_batch": statistics.median(boxes),
        "input_px": int(images.shape[-1]),
        "median_s": {p: statistics.median(v) for p, v in times.items()},
    }


def run_side(
    root: Path, sets: list[str], channels_last: bool, args: argparse.Namespace
) -> dict[str, Any]:
    """Measure in a child process that imports labelloop from `root`'s platform folder."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "platform"), str(ROOT)]))
    cmd = [sys.executable, str(HERE), "--child", "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup), "--seed", str(args.seed)]
    cmd += ["--channels-last"] if channels_last else []
    for pair in sets:
        cmd += ["--set", pair]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def describe(root: Path) -> str:
    """The checkout's commit, with "+ changes" where its working tree differs from it."""
    git = ["git", "-C", str(root)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    return (commit.stdout.strip() or str(root)) + (" + changes" if dirty else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = result["sides"]
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.7 * len(sides)))
    colours = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974"]
    for row, side in enumerate(sides.values()):
        left = 0.0
        for part, colour in zip(PARTS, colours, strict=True):
            ms = side["median_ms"][part]
            ax.barh(row, ms, left=left, color=colour, label=part if row == 0 else None)
            if ms > 40:
                ax.text(left + ms / 2, row, f"{ms:.0f}", ha="center", va="center", fontsize=8)
            left += ms
        ax.text(left + 10, row, f"{left:.0f} ms", va="center", fontsize=9)
    ax.set_yticks(range(len(sides)), [f"{k}\n{s['input_px']} px" for k, s in sides.items()])
    ax.invert_yaxis()
    ax.set_xlabel("median ms per training step (batch 16, mosaic phase, one thread)")
    total = max(sum(s["median_ms"].values()) for s in sides.values())
    ax.set_xlim(0, total * 1.18)
    ax.legend(ncol=5, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout's repository root")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=field_value,
        metavar="FIELD=VALUE",
        help="a further side: this checkout's default recipe with this override (repeatable)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="a further side: the default recipe with network and inputs in channels-last memory",
    )
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=8, help="measured steps per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="detection_step")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sets = parse_overrides(args.set)
        print(json.dumps(measure(args.steps, args.warmup, args.seed, sets, args.channels_last)))
        return

    roots: dict[str, tuple[Path, list[str], bool]] = {
        f"this checkout ({describe(ROOT)})": (ROOT, [], False)
    }
    if args.against is not None:
        roots[f"--against ({describe(args.against)})"] = (args.against.resolve(), [], False)
    for pair in args.variant:
        roots[pair] = (ROOT, [pair], False)
    if args.channels_last:
        roots["channels-last memory"] = (ROOT, [], True)
    this_label = next(iter(roots))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in roots}
    for r in range(args.repeats):
        for label, (root, sets, channels_last) in roots.items():
            runs[label].append(run_side(root, sets, channels_last, args))
            total = sum(runs[label][-1]["median_s"].values())
            print(f"repeat {r + 1}/{args.repeats}  {label}: {total * 1000:.0f} ms/step", flush=True)
    sides = {}
    for label, rs in runs.items():
        sides[label] = {
            "checkout": rs[0]["checkout"],
            "input_px": rs[0]["input_px"],
            "median_ms": {p: 1000 * statistics.median(x["median_s"][p] for x in rs) for p in PARTS},
            "step_ms_per_repeat": [round(1000 * sum(x["median_s"].values()), 1) for x in rs],
        }
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/detection_step.py", *sys.argv[1:]]),
        "cpu": cpu_model(),
        "bf16": runs[this_label][0]["bf16"],
        "threads": runs[this_label][0]["threads"],
        "boxes_per_batch": runs[this_label][0]["boxes_per_batch"],
        "steps": args.steps,
        "repeats": args.repeats,
        "sides": sides,
    }
    # Each further side's time over the first side's: above 1, the first side is faster.
    this = sides[this_label]
    result["speedup"] = {}
    for label, other in list(sides.items())[1:]:
        per_repeat = [
            a / b
            for a, b in zip(other["step_ms_per_repeat"], this["step_ms_per_repeat"], strict=True)
        ]
        result["speedup"][label] = {
            "step_per_repeat": [round(x, 3) for x in per_repeat],
            "step_median": round(statistics.median(per_repeat), 3),
            **{p: round(other["median_ms"][p] / this["median_ms"][p], 2) for p in PARTS},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / f"{args.name}.png")
    print(json.dumps({k: result[k] for k in ("sides", "speedup") if result.get(k)}, indent=2))


if __name__ == "__main__":
    main()
