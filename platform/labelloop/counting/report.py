"""What `labelloop count` reports: per image and class the predicted count, its interval,
the true count where the image is annotated, and the error; per class the MAE per image,
the relative error of the totals, how often the interval held the truth and, beside the
MAE, that of the plain baseline: a constant count per image, the training images' median
(`objects.add_count_baseline`, stored with the model version's evaluation).

The per-class figures are measured on held-out images only: an annotated image the model
version trained on, or chose its rules and interval margins on (its dataset version's
`train` and `val` splits), would flatter it. Only when every annotated image counted is one
of those are they compared, and the report says the figures are optimistic.

The same dict is printed by `--json`, written as `counts.json`, flattened into
`counts.csv` and drawn as a predicted-vs-true plot (`counts.png`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labelloop.objects import counts_not_beaten, interval_basis, total_interval

# Splits a model version learnt from (train) or chose its rules and margins on (val).
SEEN_SPLITS = ("train", "val")


@dataclass
class ImageCount:
    file: str
    counts: dict[str, int]
    truth: dict[str, int] | None = None
    overlay: str | None = None
    # Per label {"expected", "low", "high", "sd"} (`objects.count_intervals`).
    intervals: dict[str, dict[str, float]] = field(default_factory=dict)
    # The split the image held in the model version's dataset version; None when it was
    # not in it (annotated since, or not annotated).
    split: str | None = None

    @property
    def seen(self) -> bool:
        """Whether the model version trained or tuned on this image."""
        return self.split in SEEN_SPLITS

    def errors(self) -> dict[str, int] | None:
        if self.truth is None:
            return None
        return {k: self.counts.get(k, 0) - self.truth.get(k, 0) for k in self.counts}


@dataclass
class CountReport:
    model: str
    labels: list[str]
    out_dir: Path
    images: list[ImageCount] = field(default_factory=list)
    # What a reader of the counts must know (e.g. a semantic model merges touching cells).
    warnings: list[str] = field(default_factory=list)
    plot: str | None = None
    # Per label the constant count a model must beat (the training images' median).
    constant: dict[str, float] = field(default_factory=dict)
    # Per label the cells each interval was widened by (chosen on validation), or None:
    # intervals from the objects' confidences alone.
    interval_margin: dict[str, float] | None = None

    def totals(self) -> dict[str, int]:
        return {lb: sum(im.counts.get(lb, 0) for im in self.images) for lb in self.labels}

    def interval_totals(self) -> dict[str, dict[str, float]]:
        """Per label with intervals, the interval of its total over every image counted
        (`objects.total_interval`)."""
        out = {}
        for lb in self.labels:
            ivs = [iv for im in self.images if (iv := im.intervals.get(lb))]
            margin = float((self.interval_margin or {}).get(lb, 0.0))
            if (total := total_interval(ivs, margin)) is not None:
                out[lb] = total
        return out

    def compared(self) -> tuple[list[ImageCount], bool]:
        """The annotated images the figures are measured on, and whether they are held out:
        those the model version did not train or tune on, or, when there are none, every
        annotated image (False: the figures flatter the model)."""
        known = [im for im in self.images if im.truth is not None]
        held_out = [im for im in known if not im.seen]
        return (held_out, True) if held_out else (known, False)

    def comparison(self) -> dict[str, Any]:
        """How many annotated images the figures rest on, whether they are held out, and
        how many annotated images were left out because the model saw them."""
        known = sum(im.truth is not None for im in self.images)
        compared, held_out = self.compared()
        return {
            "images": len(compared),
            "held_out": held_out if compared else None,
            "left_out_seen": known - len(compared),
        }

    def accuracy(self) -> dict[str, dict[str, Any]] | None:
        """Per class over the compared images (`compared`): MAE per image (and the
        constant's, where the model version stored one), relative error of the total, and
        the share of images whose true count lies in the predicted interval."""
        known, _ = self.compared()
        if not known:
            return None
        out: dict[str, dict[str, Any]] = {}
        for lb in self.labels:
            pred = np.array([im.counts.get(lb, 0) for im in known], dtype=float)
            true = np.array([im.truth.get(lb, 0) for im in known], dtype=float)  # type: ignore[union-attr]
            inside = [
                iv["low"] <= t <= iv["high"]
                for im, t in zip(known, true, strict=True)
                if (iv := im.intervals.get(lb))
            ]
            total = true.sum()
            out[lb] = {
                "mae": round(float(np.abs(pred - true).mean()), 4),
                "relative_error": round(float(abs(pred.sum() - total) / total), 4)
                if total
                else None,
                "predicted": int(pred.sum()),
                "true": int(total),
                "interval_coverage": round(float(np.mean(inside)), 4) if inside else None,
                "images": len(known),
            }
            if lb in self.constant:
                base = float(np.abs(self.constant[lb] - true).mean())
                out[lb]["mae_constant"] = round(base, 4)
        return out

    def not_beaten(self) -> dict[str, tuple[float, float, float]]:
        """The classes these annotated images count no better than the constant."""
        rows = [
            (lb, a["mae"], a.get("mae_constant"), a["true"])
            for lb, a in (self.accuracy() or {}).items()
        ]
        return counts_not_beaten(rows, self.constant)

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "images": len(self.images),
            "annotated_images": sum(im.truth is not None for im in self.images),
            "compared": self.comparison(),
            "totals": self.totals(),
            "interval_totals": self.interval_totals(),
            "accuracy": self.accuracy(),
            "plot": self.plot,
            "interval_margin": self.interval_margin,
            "interval_basis": interval_basis(self.interval_margin),
            "warnings": self.warnings,
        }

    def to_json(self) -> dict:
        return {
            **self.summary(),
            "labels": self.labels,
            "out_dir": str(self.out_dir),
            "images": [
                {
                    "file": im.file,
                    "split": im.split,
                    "counts": im.counts,
                    "intervals": im.intervals,
                    "truth": im.truth,
                    "errors": im.errors(),
                    "overlay": im.overlay,
                }
                for im in self.images
            ],
        }


def write_csv(report: CountReport, path: Path) -> None:
    """One row per image and class: predicted, interval, true (blank when unknown), error,
    and the split the image held in the model's dataset version (blank when none)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "predicted", "low", "high", "true", "error", "split"])
        for im in report.images:
            errors = im.errors() or {}
            for lb in report.labels:
                iv = im.intervals.get(lb) or {}
                true = im.truth.get(lb, 0) if im.truth is not None else ""
                w.writerow(
                    [
                        im.file,
                        lb,
                        im.counts.get(lb, 0),
                        iv.get("low", ""),
                        iv.get("high", ""),
                        true,
                        errors.get(lb, ""),
                        im.split or "",
                    ]
                )


def plot_predicted_vs_true(report: CountReport, path: Path) -> bool:
    """Predicted against true count per compared image (`CountReport.compared`), one panel
    per class, with the intervals as error bars and the identity line; False when no image
    is annotated."""
    known, held_out = report.compared()
    if not known:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = report.accuracy() or {}
    n = len(report.labels)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.6), squeeze=False)
    for ax, lb in zip(axes[0], report.labels, strict=True):
        true = np.array([im.truth.get(lb, 0) for im in known], float)  # type: ignore[union-attr]
        pred = np.array([im.counts.get(lb, 0) for im in known], float)
        ivs = [im.intervals.get(lb) for im in known]
        if all(ivs):
            lo = pred - np.array([iv["low"] for iv in ivs])  # type: ignore[index]
            hi = np.array([iv["high"] for iv in ivs]) - pred  # type: ignore[index]
            ax.errorbar(
                true,
                pred,
                yerr=np.clip(np.vstack([lo, hi]), 0, None),
                fmt="o",
                ms=4,
                alpha=0.7,
                elinewidth=0.8,
            )
        else:
            ax.plot(true, pred, "o", ms=4, alpha=0.7)
        top = max(float(true.max(initial=0)), float(pred.max(initial=0)), 1.0) * 1.05
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        a = acc.get(lb) or {}
        rel = a.get("relative_error")
        title = f"{lb}: MAE {a.get('mae', 0):.2f}, rel. err " + (
            "-" if rel is None else f"{rel:.1%}"
        )
        if "mae_constant" in a:
            # The plain baseline: what a constant count per image scores on these images.
            const = report.constant[lb]
            top = max(top, const * 1.05)
            ax.axhline(const, color="grey", ls=":", lw=1.0, label=f"constant {const:g}")
            ax.legend(fontsize=7, loc="upper left")
            title += f"\nconstant {const:g}/image: MAE {a['mae_constant']:.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("true count (annotated objects)")
        ax.set_ylabel("predicted count")
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
    which = "held-out" if held_out else "training/validation (optimistic)"
    fig.suptitle(f"{report.model}: {len(known)} {which} annotated images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
