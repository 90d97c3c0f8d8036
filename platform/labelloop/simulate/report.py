"""Curves from simulated runs: mean and spread per strategy, area under each curve, and
how many labels each strategy needed to reach 95 % of the full-data metric."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.simulate.loop import FULL

TARGET_SHARE = 0.95


def _auc(xs: list[int], ys: list[float]) -> float:
    """Normalised area under the curve: the mean metric over the label range."""
    if len(xs) < 2:
        return float(ys[0]) if ys else float("nan")
    return float(np.trapezoid(ys, xs) / (xs[-1] - xs[0]))


def _first_reaching(sizes: list[int], values: list, target: float | None) -> int | None:
    if target is None:
        return None
    return next(
        (n for n, v in zip(sizes, values, strict=True) if v is not None and v >= target), None
    )


def _mean_sd(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], metric: str, extra: list[str]) -> dict[str, Any]:
    """Per strategy: labelled sizes, mean and sd of every metric per size, AUC mean and sd
    over seeds, the paired AUC gain over random, and labels needed for 95 % of full."""
    full_values = [
        p["metric"]
        for r in runs
        if r["strategy"] == FULL
        for p in r["points"]
        if p["metric"] is not None
    ]
    full_mean, full_sd = _mean_sd(full_values)
    target = TARGET_SHARE * full_mean if full_values else None
    by_strategy: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        if r["strategy"] != FULL:
            by_strategy[r["strategy"]].append(r)
    out: dict[str, Any] = {
        "metric": metric,
        "full": {"mean": full_mean, "sd": full_sd, "seeds": len(full_values)},
        "target_share": TARGET_SHARE,
        "target": target,
        "strategies": {},
    }
    aucs: dict[str, dict[int, float]] = {}
    for name, rs in sorted(by_strategy.items()):
        sizes = sorted({p["labelled"] for r in rs for p in r["points"]})
        curves: dict[str, dict[str, list[float]]] = {}
        for key in ["metric", *extra]:
            per_size = [
                [
                    p[key]
                    for r in rs
                    for p in r["points"]
                    if p["labelled"] == n and p.get(key) is not None
                ]
                for n in sizes
            ]
            means, sds = zip(*(_mean_sd(v) for v in per_size), strict=True) if sizes else ((), ())
            curves[key] = {"mean": list(means), "sd": list(sds)}
        aucs[name] = {
            r["seed"]: _auc(
                [p["labelled"] for p in r["points"]], [p["metric"] for p in r["points"]]
            )
            for r in rs
            if all(p["metric"] is not None for p in r["points"])
        }
        auc_mean, auc_sd = _mean_sd(list(aucs[name].values()))
        means = curves["metric"]["mean"]
        needed = _first_reaching(sizes, means, target)
        per_seed_needed = {
            r["seed"]: _first_reaching(
                [p["labelled"] for p in r["points"]], [p["metric"] for p in r["points"]], target
            )
            for r in rs
        }
        out["strategies"][name] = {
            "sizes": sizes,
            "curves": curves,
            "auc": {"mean": auc_mean, "sd": auc_sd, "per_seed": aucs[name]},
            "labels_for_target": needed,
            "labels_for_target_per_seed": per_seed_needed,
            "seeds": len(rs),
        }
    if "random" in aucs:
        for name, per_seed in aucs.items():
            common = sorted(set(per_seed) & set(aucs["random"]))
            gains = [per_seed[s] - aucs["random"][s] for s in common]
            g_mean, g_sd = _mean_sd(gains)
            out["strategies"][name]["auc_gain_over_random"] = {"mean": g_mean, "sd": g_sd}
    return out


def plot(summary: dict[str, Any], path: Path, title: str, extra: list[str]) -> None:
    """Metric vs labelled images with a band of +/- one sd over seeds; the full-data value
    and its 95 % line for reference. One panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["metric", *extra]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for name, st in summary["strategies"].items():
            xs = np.array(st["sizes"])
            m = np.array(st["curves"][key]["mean"], float)
            sd = np.array(st["curves"][key]["sd"], float)
            label = name
            if key == "metric" and np.isfinite(st["auc"]["mean"]):
                label = f"{name} (AUC {st['auc']['mean']:.3f} ± {st['auc']['sd']:.3f})"
            (line,) = ax.plot(xs, m, marker="o", label=label)
            ax.fill_between(xs, m - sd, m + sd, color=line.get_color(), alpha=0.18)
        if key == "metric" and summary["target"] is not None:
            ax.axhline(summary["full"]["mean"], color="k", lw=1, label="full pool")
            ax.axhline(summary["target"], color="k", lw=1, ls="--", label="95 % of full")
        ax.set_xlabel("labelled images")
        ax.set_ylabel(summary["metric"] if key == "metric" else key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
