"""Does the validation split pick the reading that counts the test slices best? Every reading
instance mode's rule choice tries (the watershed with a split depth, an opening or a seed
threshold, or connected components, each at minimum areas 8-64 px), applied to saved
outputs of ISBI instance networks (`cell_counts.py --part isbi --instance-only
--save-outputs NPZ`), scored on the validation slices (22-24, or those the file names:
count error summed over the slices, what the choice minimises, and instance F1@0.5) and
on the test slices (25-29: mean count error per slice, slices within 5 %, instance
F1@0.5), always against the annotated cells; `chosen_on_val` is the reading the choice
would pick among these (the lowest validation count error within the bound the annotated
areas set, ties as the choice breaks them).

    python benchmarks/isbi_readings.py NPZ [NPZ ...] [--name STEM]

writes benchmarks/results/STEM.json (default isbi_readings) and STEM.png: test count error
against validation count error, one point per reading and network, with the Spearman rank
correlation of the two per network (over all readings, and without the split depths,
which count every slice far off), and that of their validation and test F1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter, ScalarFormatter
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.cell_counts import cell_areas, score_slices
from labelloop.objects import area_allowed
from labelloop.training.segmentation.evaluate import annotated_area_cap
from labelloop.training.segmentation.instances import (
    OPENINGS,
    SEED_THRESHOLDS,
    SPLIT_DEPTHS,
    RuleKey,
    instances_from_probs,
    rule_key,
    seed_maps,
)

RESULTS = Path(__file__).resolve().parent / "results"
AREAS = (8, 16, 32, 64)
KEYS = ("val", "test", "val_maps", "test_maps", "val_counts", "test_counts")
FAMILIES = {
    "watershed": "o",
    "split depth": "x",
    "opening": "s",
    "threshold": "^",
    "components": "D",
}


def readings() -> list[tuple[str, str, dict]]:
    """(family, name, seed_maps keywords) for every reading the rule choice tries."""
    out = [("watershed", "watershed", {})]
    out += [("split depth", f"depth {d}", {"split_depth": d}) for d in SPLIT_DEPTHS if d > 0]
    out += [("opening", f"opening {r}", {"opening": r}) for r in OPENINGS]
    out += [("threshold", f"threshold {t}", {"seed_threshold": t}) for t in SEED_THRESHOLDS]
    return [*out, ("components", "components", {"components": True})]


def truth(maps: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(instance map, classes) pairs of the annotated cells, as `score_slices` reads them."""
    pairs = []
    for inst in maps:
        classes = np.ones(int(inst.max()) + 1, np.int32)
        classes[0] = 0
        pairs.append((inst, classes))
    return pairs


def choice_key(row: dict) -> RuleKey:
    """A reading's place in the order `choose_instance_rules` prefers readings in."""
    cut = row["cut"]
    return rule_key(
        row["val"]["count_error"],
        cut.get("components", False),
        cut.get("split_depth", 0.0),
        cut.get("opening", 0),
        cut.get("seed_threshold", 0.0),
        row["min_area"],
    )


def rank_correlation(rows: list[dict], metric: str = "count") -> float:
    """Spearman's rank correlation, over these readings, between the validation count
    error and the mean test count error per slice (`metric` "count"), or between the
    validation and test instance F1 ("f1")."""
    if metric == "f1":
        val = [r["val"]["f1_50"] for r in rows]
        test = [r["test"]["f1_50"] for r in rows]
    else:
        val = [r["val"]["count_error"] for r in rows]
        test = [r["test"]["mean_relative_error"] for r in rows]
    return round(float(spearmanr(val, test).statistic), 3)


def score_network(path: Path) -> dict:
    """Every reading of one network's saved outputs, on validation and test."""
    with np.load(path) as saved:
        probs = {s: [p.astype(np.float32) for p in saved[s]] for s in ("val", "test")}
        maps = {s: truth(saved[f"{s}_maps"]) for s in ("val", "test")}
        counts = {s: [int(c) for c in saved[f"{s}_counts"]] for s in ("val", "test")}
        # Saved since --val-spread; before it the validation slices were always 22-24.
        val_slices = [int(i) for i in saved["val_slices"]] if "val_slices" in saved else None
    areas = {s: cell_areas(maps[s]) for s in ("val", "test")}
    cap = annotated_area_cap(areas["val"])
    rows = []
    for family, name, kw in readings():
        seeded = {s: [seed_maps(p, 1, **kw) for p in probs[s]] for s in probs}
        for area in AREAS:
            row: dict = {"family": family, "reading": name, "min_area": area, "cut": kw}
            for s in ("val", "test"):
                found = [
                    instances_from_probs(p, 1, min_area=area, seeded=q)[0]
                    for p, q in zip(probs[s], seeded[s], strict=True)
                ]
                scored = score_slices(found, maps[s], counts[s])
                row[s] = {
                    "counted": [x["predicted"] for x in scored["slices"]],
                    "count_error": sum(abs(x["predicted"] - x["true"]) for x in scored["slices"]),
                    "mean_relative_error": scored["mean_relative_error"],
                    "within_5": sum(x["relative_error"] <= 0.05 for x in scored["slices"]),
                    "f1_50": scored["f1_50"],
                }
            rows.append(row)
    plausible = [r for r in rows if r["family"] != "split depth"]
    # As `choose_instance_rules` chooses: within the bound the annotated areas set, the
    # lowest count error; ties to the watershed, the milder cut, the larger minimum area.
    allowed = [r for r in rows if area_allowed(r["min_area"], cap, AREAS)]
    chosen = min(allowed, key=choice_key)
    return {
        "outputs": str(path),
        "val_slices": val_slices or [22, 23, 24],
        "annotated": counts,
        "spearman_val_test_count_error": rank_correlation(rows),
        # Split depths count every slice far off (ISBI cells have many distance maxima):
        # without them, whether validation ranks the plausible readings as test does.
        "spearman_without_split_depths": rank_correlation(plausible),
        "spearman_f1_without_split_depths": rank_correlation(plausible, "f1"),
        "area_cap": cap,
        # The same quantile on test: whether the test slices hold more small cells.
        "area_cap_test": annotated_area_cap(areas["test"]),
        # Per split and minimum area, the annotated cells smaller than it: what that
        # minimum area costs the count even if every other cell were found.
        "annotated_below": {
            s: {str(a): sum(x < a for x in found) for a in AREAS} for s, found in areas.items()
        },
        "chosen_on_val": {k: chosen[k] for k in ("reading", "min_area", "val", "test")},
        "best_on_test": min(rows, key=lambda r: r["test"]["mean_relative_error"]),
        "best_f1_on_test": max(rows, key=lambda r: r["test"]["f1_50"]),
        "readings": rows,
    }


def plot(result: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for i, net in enumerate(result["networks"]):
        colour = plt.cm.tab10(i)
        for family, marker in FAMILIES.items():
            pts = [r for r in net["readings"] if r["family"] == family]
            ax.scatter(
                [r["val"]["count_error"] for r in pts],
                [100 * r["test"]["mean_relative_error"] for r in pts],
                marker=marker,
                color=colour,
                alpha=0.7,
                label=family if i == 0 else None,
            )
        c = net["chosen_on_val"]
        ax.scatter(
            [c["val"]["count_error"]],
            [100 * c["test"]["mean_relative_error"]],
            s=160,
            facecolors="none",
            edgecolors=colour,
            lw=2,
            label=f"network {i + 1}: chosen on val "
            f"(rank corr. {net['spearman_val_test_count_error']}, "
            f"{net['spearman_without_split_depths']} without split depths)",
        )
    ax.axhline(5, color="k", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([2, 5, 10, 20, 50, 100, 200])
    ax.set_yticks([1, 2, 3, 5, 10, 20, 50])
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    slices = {tuple(net["val_slices"]) for net in result["networks"]}
    named = ", ".join(map(str, next(iter(slices)))) if len(slices) == 1 else "of each network"
    ax.set_xlabel(
        f"validation: count error, cells summed over slices {named} (what the choice minimises)"
    )
    ax.set_ylabel("test: mean count error per slice, % (25-29)")
    ax.set_title("ISBI cells: every reading of each network (dotted: the 5 % target)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("outputs", nargs="+", type=Path, help="NPZ files from cell_counts.py")
    ap.add_argument("--name", default="isbi_readings", help="stem of the result files")
    args = ap.parse_args()
    for path in args.outputs:
        if not path.is_file():
            ap.error(f"{path}: saved outputs not found")
        try:
            with np.load(path) as saved:
                lacking = sorted(set(KEYS) - set(saved.files))
        except (OSError, ValueError) as exc:
            ap.error(f"{path}: not an .npz archive ({exc})")
        if lacking:
            ap.error(
                f"{path}: not saved by cell_counts.py --save-outputs (no {', '.join(lacking)})"
            )
    result = {"networks": [score_network(p) for p in args.outputs]}
    result["command"] = "python benchmarks/isbi_readings.py " + " ".join(
        [str(p) for p in args.outputs]
        + (["--name", args.name] if args.name != "isbi_readings" else [])
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / args.name
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    plot(result, stem.with_suffix(".png"))
    for i, net in enumerate(result["networks"], 1):
        c, b = net["chosen_on_val"], net["best_on_test"]
        print(
            f"network {i}: chosen on val {c['reading']}, {c['min_area']} px: test error "
            f"{c['test']['mean_relative_error']:.3f}, F1 {c['test']['f1_50']:.3f}; best on test "
            f"{b['reading']}, {b['min_area']} px: {b['test']['mean_relative_error']:.3f}; "
            f"rank corr. {net['spearman_val_test_count_error']} "
            f"({net['spearman_without_split_depths']} without split depths; F1: "
            f"{net['spearman_f1_without_split_depths']})"
        )


if __name__ == "__main__":
    main()
