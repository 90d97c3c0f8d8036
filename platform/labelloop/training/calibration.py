"""Temperature scaling: one number per model version that makes its probabilities honest.

Networks trained on few labels are over-confident, and every uncertainty score (entropy,
margin, least confidence) reads probabilities: an over-confident model ranks images by
noise. Temperature scaling (Guo et al., 2017) divides the logits by one T > 0 fitted to
minimise the negative log-likelihood on the validation split; it changes no argmax, so
accuracy, masks and boxes stay as they were, only the confidences move.

It works on probabilities as stored, so it needs no hook into a network's forward pass:
softmax(z / T) == normalise(p ** (1 / T)) for p = softmax(z), and for independent
sigmoids sigmoid(logit(p) / T). A kind declares how (`Calibration`): which mode, how to
collect (probabilities, labels) on the validation split, and which prediction arrays to
rescale. The fit (temperature, ECE and reliability diagram before and after) is stored
in the model version's validation metrics and applied whenever that version predicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Mode = Literal["softmax", "sigmoid"]
_EPS = 1e-7
BINS = 15
# log T is searched in [-LOG_T_RANGE, LOG_T_RANGE]: T in [0.05, 20].
LOG_T_RANGE = 3.0
MAX_FIT_SAMPLES = 200_000


def softmax_temperature(probs: np.ndarray, t: float, axis: int = -1) -> np.ndarray:
    """Probabilities of softmax(z / t) from probabilities of softmax(z), along `axis`."""
    p = np.asarray(probs, dtype=np.float64)
    if t == 1.0 or p.size == 0:
        return np.asarray(probs)
    logp = np.log(np.clip(p, _EPS, 1.0)) / t
    logp -= logp.max(axis=axis, keepdims=True)
    e = np.exp(logp)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.asarray(probs).dtype)


def sigmoid_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """Probabilities of sigmoid(z / t) from probabilities of sigmoid(z), elementwise."""
    p = np.asarray(probs, dtype=np.float64)
    if t == 1.0 or p.size == 0:
        return np.asarray(probs)
    q = np.clip(p, _EPS, 1 - _EPS)
    z = np.log(q) - np.log1p(-q)
    return (1.0 / (1.0 + np.exp(-z / t))).astype(np.asarray(probs).dtype)


def apply_temperature(probs: np.ndarray, t: float, mode: Mode, axis: int = -1) -> np.ndarray:
    if mode == "softmax":
        return softmax_temperature(probs, t, axis=axis)
    return sigmoid_temperature(probs, t)


def _confidence_correct(probs: np.ndarray, labels: np.ndarray, mode: Mode):
    """(confidence, outcome) pairs a reliability diagram bins: top-1 probability and
    whether it was right (softmax), or the probability and the 0/1 label (sigmoid)."""
    if mode == "softmax":
        return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    return probs, labels.astype(np.float64)


def reliability(
    probs: np.ndarray, labels: np.ndarray, mode: Mode, bins: int = BINS
) -> list[dict[str, float]]:
    """Equal-width confidence bins: count, mean confidence and observed accuracy
    (softmax: top-1 right; sigmoid: fraction positive) of each non-empty bin."""
    conf, hit = _confidence_correct(np.asarray(probs, np.float64), np.asarray(labels), mode)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append(
                {
                    "lo": round(float(edges[b]), 4),
                    "hi": round(float(edges[b + 1]), 4),
                    "count": int(sel.sum()),
                    "confidence": round(float(conf[sel].mean()), 6),
                    "accuracy": round(float(hit[sel].mean()), 6),
                }
            )
    return out


def ece(probs: np.ndarray, labels: np.ndarray, mode: Mode, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over
    the reliability diagram's bins (0 = perfectly calibrated)."""
    rows = reliability(probs, labels, mode, bins)
    n = sum(r["count"] for r in rows)
    if not n:
        return 0.0
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows) / n)


def nll(probs: np.ndarray, labels: np.ndarray, mode: Mode) -> float:
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels)
    if mode == "softmax":
        return float(-np.log(np.clip(p[np.arange(len(y)), y.astype(np.int64)], _EPS, 1)).mean())
    q = np.clip(p, _EPS, 1 - _EPS)
    return float(-(y * np.log(q) + (1 - y) * np.log1p(-q)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, mode: Mode) -> float:
    """The T minimising NLL of the temperature-scaled probabilities: golden-section search
    over log T (the NLL is convex in 1/T, so unimodal in log T). 1.0 with no data."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    if len(y) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        return nll(apply_temperature(p, float(np.exp(log_t)), mode, axis=1), y, mode)

    lo, hi = -LOG_T_RANGE, LOG_T_RANGE
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2))


def _subsample(probs: np.ndarray, labels: np.ndarray, limit: int, seed: int = 0):
    if len(labels) <= limit:
        return probs, labels
    idx = np.sort(np.random.default_rng(seed).choice(len(labels), limit, replace=False))
    return probs[idx], labels[idx]


def calibrate(probs: np.ndarray, labels: np.ndarray, mode: Mode) -> dict[str, Any]:
    """Fit T on (probs, labels) and describe it for the model version's metrics:
    temperature, ECE and NLL before and after, and both reliability diagrams.
    `probs` is (N, C) with class-index labels (softmax) or (N,) with 0/1 labels (sigmoid)."""
    p, y = _subsample(np.asarray(probs, np.float64), np.asarray(labels), MAX_FIT_SAMPLES)
    t = fit_temperature(p, y, mode)
    after = apply_temperature(p, t, mode, axis=1)
    return {
        "temperature": round(t, 6),
        "mode": mode,
        "n": len(y),
        "ece_before": round(ece(p, y, mode), 6),
        "ece_after": round(ece(after, y, mode), 6),
        "nll_before": round(nll(p, y, mode), 6),
        "nll_after": round(nll(after, y, mode), 6),
        "reliability_before": reliability(p, y, mode),
        "reliability_after": reliability(after, y, mode),
    }


@dataclass(frozen=True)
class Calibration:
    """How a kind calibrates. `collect(network, datamodule, recipe)` returns validation
    (probs, labels) in the mode's layout, or None when the recipe has nothing to calibrate;
    `arrays` maps a `Prediction.arrays` key to the class axis to rescale along (softmax)
    or to None (sigmoid: elementwise)."""

    mode: Mode
    collect: Callable[[Any, Any, Any], tuple[np.ndarray, np.ndarray] | None]
    arrays: dict[str, int | None]

    def apply(self, arrays: dict[str, np.ndarray], t: float) -> dict[str, np.ndarray]:
        """The prediction arrays with the calibrated ones replaced (others untouched)."""
        if t == 1.0:
            return arrays
        out = dict(arrays)
        for key, axis in self.arrays.items():
            if key in out and np.asarray(out[key]).size:
                out[key] = apply_temperature(out[key], t, self.mode, axis=axis or 0)
        return out


def temperature_of(metrics: dict[str, Any] | None) -> float:
    """The temperature a model version's metrics record (1.0: none fitted)."""
    cal = ((metrics or {}).get("val") or {}).get("calibration") or {}
    return float(cal.get("temperature", 1.0))


def stack(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-image (probs, labels) pairs."""
    return np.concatenate([p for p, _ in pairs]), np.concatenate([y for _, y in pairs])
