"""Which epoch a BCCD detection run should keep: rules compared within the same runs.

A rule for choosing the kept weights (the best validation epoch, the last epoch, an
average of the last few epochs' weights) changes nothing about training, so
every rule can be scored on the same run: benchmarks/bccd_detection.py `--keep-epochs`
keeps each late epoch's weights and scores it on test. The differences between rules are
then free of seed and machine noise; only the validation split's own noise remains, which
is what the rules differ in. The best test epoch is shown as a ceiling, not a rule.

Usage: .venv/bin/python benchmarks/bccd_checkpoints.py RUN [RUN ...] [--name bccd_checkpoints]
(RUN: a result stem written with --keep-epochs). Writes benchmarks/results/<name>.json/.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
BASE_RULE = "best validation epoch"
CEILING = "best test epoch (a ceiling)"


def mosaic_epochs(c: dict[str, Any]) -> list[int]:
    """Epochs that started before the recipe switched mosaic off, from their end times
    (the detector switches once `close_mosaic` of the budget is left; the times here also
    hold a few seconds of set-up, so the epoch at the switch may fall either side)."""
    r = c["recipe"]
    if not r["mosaic"]:
        return []
    switch = (1.0 - r["close_mosaic"]) * r["max_time_s"]
    ends = [0.0] + [h["time_s"] for h in c["history"]]
    return [h["epoch"] for h, start in zip(c["history"], ends, strict=False) if start < switch]


def picks(run: dict[str, Any]) -> tuple[dict[str, tuple[int | None, float]], dict[str, Any]]:
    """Each rule's kept epoch (None for a weight average) and its test mAP@0.5."""
    c = run["contenders"]["labelloop"]
    scored = {e["epoch"]: e["map50"] for e in c["epochs_scored"]}
    out: dict[str, tuple[int | None, float]] = {
        BASE_RULE: (c["best_epoch"], c["test"]["map50"]),
        "last epoch": (max(scored), scored[max(scored)]),
    }
    for soup in c["soups"]:
        out[f"mean of last {soup['last']}"] = (None, soup["map50"])
    ceiling = max(scored, key=scored.__getitem__)
    out[CEILING] = (ceiling, scored[ceiling])
    return out, {"epochs": c["epochs"], "mosaic_epochs": mosaic_epochs(c)}


def load_runs(stems: list[str], results: Path) -> dict[str, dict[str, Any]]:
    """Each run's result file, read once for the comparison and the plot."""
    return {stem: json.loads((results / f"{stem}.json").read_text()) for stem in stems}


def compare(loaded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    runs = []
    for stem, run in loaded.items():
        if "epochs_scored" not in run["contenders"].get("labelloop", {}):
            raise SystemExit(f"{stem}.json holds no scored epochs: run it with --keep-epochs")
        rules, info = picks(run)
        base = rules[BASE_RULE][1]
        runs.append(
            {
                "stem": stem,
                "close_mosaic": run["contenders"]["labelloop"]["recipe"]["close_mosaic"],
                **info,
                "rules": {
                    name: {"epoch": e, "test_map50": round(v, 4), "d": round(v - base, 4)}
                    for name, (e, v) in rules.items()
                },
            }
        )
    names = list(runs[0]["rules"])
    summary = {}
    for name in names:
        d = [r["rules"][name]["d"] for r in runs if name in r["rules"]]
        summary[name] = {
            "mean_d": round(statistics.fmean(d), 4),
            "sd_d": round(statistics.stdev(d), 4) if len(d) > 1 else None,
            "n": len(d),
            "lower": sum(x < 0 for x in d),
        }
    return {"base_rule": BASE_RULE, "runs": runs, "summary": summary}


def plot(data: dict[str, Any], loaded: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    cols = min(2, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.0 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.set_visible(False)
    marks = {BASE_RULE: "o", "last epoch": "^", CEILING: "*"}
    for ax, r in zip(axes.flat, runs, strict=False):
        c = loaded[r["stem"]]["contenders"]["labelloop"]
        hist = [h for h in c["history"] if h.get("val_map50") is not None]
        scored = c["epochs_scored"]
        first = scored[0]["epoch"]
        late = [h for h in hist if h["epoch"] >= first - 5]
        curves = [(late, "val_map50", "0.55", "validation"), (scored, "map50", "C0", "test")]
        for points, key, color, label in curves:
            xs, ys = [p["epoch"] for p in points], [p[key] for p in points]
            ax.plot(xs, ys, color=color, lw=1.1, label=label)
        mosaic = [e for e in r["mosaic_epochs"] if e >= first - 5]
        if mosaic:
            ax.axvspan(
                min(mosaic) - 0.5,
                max(mosaic) + 0.5,
                color="0.92",
                zorder=0,
                label="mosaic on (from the budget)",
            )
        for name, m in marks.items():
            pick = r["rules"][name]
            if pick["epoch"] is not None:
                ax.plot(
                    pick["epoch"],
                    pick["test_map50"],
                    m,
                    ms=7,
                    mfc="none",
                    mew=1.5,
                    label=f"{name} ({pick['test_map50']:.3f})",
                )
        for name, pick in r["rules"].items():
            if name.startswith("mean of last"):
                ax.axhline(pick["test_map50"], ls=":", lw=0.8, color="C3")
        soups = ", ".join(
            f"{k.split()[-1]}: {v['test_map50']:.3f}"
            for k, v in r["rules"].items()
            if k.startswith("mean of last")
        )
        ax.set_title(
            f"{r['stem']}\nclose_mosaic {r['close_mosaic']}; means of last {soups}", fontsize=8
        )
        ax.set_xlabel("epoch")
        ax.set_ylabel("mAP@0.5")
        ax.legend(fontsize=6.5, loc="lower right")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "BCCD: test mAP@0.5 of each late epoch, and each rule's pick (dotted: averages)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", help="result stems written with --keep-epochs")
    ap.add_argument("--name", default="bccd_checkpoints")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args()
    loaded = load_runs(args.runs, args.results)
    data = compare(loaded)
    (args.results / f"{args.name}.json").write_text(json.dumps(data, indent=2) + "\n")
    plot(data, loaded, args.results / f"{args.name}.png")
    for name, s in data["summary"].items():
        sd = f" ± {s['sd_d']:.4f}" if s["sd_d"] is not None else ""
        print(f"{name:26s} {s['mean_d']:+.4f}{sd}  (lower in {s['lower']} of {s['n']})")
    print(f"wrote {args.name}.json and {args.name}.png")


if __name__ == "__main__":
    main()
