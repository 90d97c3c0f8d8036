"""Detection runs compared pair by pair: one recipe change, the same seed on both sides.

Seeds move BCCD's test mAP@0.5 by about as much as most recipe changes do, so a change
is judged by its paired differences (same seed, same machine, run side by side), never
by two means. Each `--pair BASE:CHANGED` names two result stems that
benchmarks/bccd_detection.py wrote (`--name`), or two that detection_tta.py wrote for a
synthetic-smear detector (`--synthetic-minutes M [--set ...] --name`, the second dataset
a change is tried on); nothing is trained here. For a synthetic run, "best validation"
is the kept (best-validation) model scored again at the recipe's test-time views, and
the best epoch is not recorded.

Usage: .venv/bin/python benchmarks/bccd_pairs.py --pair bccd_det_s0:bccd_det_cm30_s0
       [--pair ...] [--label "close_mosaic 0.15 -> 0.3"] [--name bccd_pairs]
Writes benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = ("RBC", "WBC", "Platelets")


def side(stem: str, results: Path) -> dict[str, Any]:
    """The figures of one run that a pair compares."""
    run = json.loads((results / f"{stem}.json").read_text())
    if "contenders" not in run:
        return synthetic_side(stem, run)
    c = run["contenders"]["labelloop"]
    per_class = c["test"]["per_class"]
    return {
        "stem": stem,
        "dataset": "BCCD",
        "epochs": c["epochs"],
        "best_epoch": c["best_epoch"],
        "val_map50_best": round(max(e.get("val_map50") or 0.0 for e in c["history"]), 4),
        "test_map50": round(c["test"]["map50"], 4),
        "test_map": round(c["test"]["map"], 4),
        "ap50": {k: per_class[k]["ap50"] for k in CLASSES},
        "rbc_count_mae_tuned": c["test_tuned"]["per_class"]["RBC"]["count_mae"],
    }


def synthetic_side(stem: str, run: dict[str, Any]) -> dict[str, Any]:
    """The same figures from a detection_tta.py run with one synthetic-smear detector,
    read at the view count its recipe predicts with."""
    models = [m for name, m in run["models"].items() if name.startswith("synthetic")]
    if len(models) != 1 or "recipe_views" not in models[0]:
        raise SystemExit(f"{stem}.json: expected one synthetic detector with its recipe")
    model = models[0]
    views = model["recipe_views"]
    rows = [r for r in model["views"] if r["tta_views"] == views]
    if len(rows) != 1:
        raise SystemExit(f"{stem}.json: no single row at the recipe's {views} views")
    test, val = rows[0]["test"], rows[0]["val"]
    return {
        "stem": stem,
        "dataset": "synthetic smears",
        "epochs": model["epochs"],
        "best_epoch": None,
        "val_map50_best": round(val["map50"], 4),
        "test_map50": round(test["map50"], 4),
        "test_map": round(test["map"], 4),
        "ap50": {k: test["ap50"][k] for k in CLASSES},
        "rbc_count_mae_tuned": test["count_mae"]["RBC"],
    }


def compare(pairs: list[tuple[str, str]], results: Path) -> dict[str, Any]:
    rows = []
    for base, changed in pairs:
        a, b = side(base, results), side(changed, results)
        rows.append(
            {
                "base": a,
                "changed": b,
                "d_test_map50": round(b["test_map50"] - a["test_map50"], 4),
                "d_val_map50_best": round(b["val_map50_best"] - a["val_map50_best"], 4),
                "d_ap50_rbc": round(b["ap50"]["RBC"] - a["ap50"]["RBC"], 4),
            }
        )
    summary = {}
    for key in ("d_test_map50", "d_val_map50_best", "d_ap50_rbc"):
        values = [r[key] for r in rows]
        summary[key] = {
            "mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "lower": sum(v < 0 for v in values),
        }
    return {"pairs": rows, "differences": summary}


def spread(values: list[float], gap: float) -> list[float]:
    """Heights for labels of `values`, in their order and at least `gap` apart: end
    points a few thousandths apart would otherwise print their labels on one another."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = list(values)
    for below, above in itertools.pairwise(order):
        out[above] = max(out[above], out[below] + gap)
    return out


def plot(data: dict[str, Any], label: str, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r[s]["dataset"] for r in data["pairs"] for s in ("base", "changed")})
    val_title = "best validation" if datasets == ["BCCD"] else "kept model's val"
    panels = (("test_map50", "test mAP@0.5"), ("val_map50_best", f"{val_title} mAP@0.5"))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ends, names, colours = [], [], []
        for row in data["pairs"]:
            a, b = row["base"], row["changed"]
            (line,) = ax.plot([0, 1], [a[key], b[key]], marker="o")
            ends.append(b[key])
            names.append(f"{b['stem']} ({a['epochs']}/{b['epochs']} ep)")
            colours.append(line.get_color())
        low, high = ax.get_ylim()
        for end, y, name, colour in zip(
            ends, spread(ends, 0.045 * (high - low)), names, colours, strict=True
        ):
            ax.annotate(
                name,
                (1, end),
                xytext=(1.08, y),
                textcoords="data",
                va="center",
                fontsize=7,
                color=colour,
                arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.5},
            )
        d = data["differences"]["d_" + key]
        sd = f" ± {d['sd']:.4f}" if d["sd"] is not None else ""
        ax.set_title(f"{title}: paired change {d['mean']:+.4f}{sd}", fontsize=10)
        ax.set_xticks([0, 1], ["base", "changed"])
        ax.set_xlim(-0.2, 2.4)  # room for the longest run names beside the end points
        ax.grid(alpha=0.3)
    fig.suptitle(f"{' + '.join(datasets)}, same seed on both sides: {label}", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=130)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pair", action="append", required=True, help="BASE:CHANGED result stems")
    ap.add_argument("--label", default="recipe change", help="what the pairs change")
    ap.add_argument("--name", default="bccd_pairs")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    pairs = []
    for text in args.pair:
        base, sep, changed = text.partition(":")
        if not sep or not base or not changed:
            ap.error(f"--pair {text!r}: expected BASE:CHANGED result stems")
        for stem in (base, changed):
            if not (args.results / f"{stem}.json").is_file():
                ap.error(f"--pair {text!r}: no {stem}.json in {args.results}")
        pairs.append((base, changed))
    data = {"label": args.label, **compare(pairs, args.results)}
    png = args.results / f"{args.name}.png"
    data["png"] = png.name
    (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, args.label, png)
    for row in data["pairs"]:
        print(
            f"{row['base']['stem']:>22} -> {row['changed']['stem']:<24} test "
            f"{row['d_test_map50']:+.4f}  val {row['d_val_map50_best']:+.4f}  "
            f"RBC AP50 {row['d_ap50_rbc']:+.4f}"
        )
    print({k: v for k, v in data["differences"].items()})
    print(f"wrote {png.name} and {args.name}.json")


if __name__ == "__main__":
    main()
