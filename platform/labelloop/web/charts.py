"""Charts as inline SVG, rendered on the server: no JavaScript library to vendor, nothing
fetched at run time, and the same markup works in the offline HTML reports.

Every chart carries `data-*` attributes with the numbers it plots, so a browser test can
compare what is drawn with the database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 220, 48, 28, 14, 34


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _range(values: Sequence[float], zero: bool) -> tuple[float, float]:
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if zero:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        hi = lo + (abs(lo) or 1.0)
    return lo, hi


def _empty(title: str, kind: str) -> Markup:
    return Markup(
        f'<svg class="chart empty" data-chart="{kind}" data-points="[]" viewBox="0 0 {W} 60" '
        f'role="img" aria-label="{escape(title)}"><text x="{W / 2}" y="34" '
        f'text-anchor="middle" class="muted">no data yet</text></svg>'
    )


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    x_ticks: Sequence[tuple[float, str]] | None = None,
    zero: bool = True,
    kind: str = "line",
    step: bool = False,
) -> Markup:
    """One or more lines (with dots) over shared axes; `step` draws a cumulative count."""
    points = [p for pts in series.values() for p in pts]
    if not points:
        return _empty(title, kind)
    x0, x1 = _range([p[0] for p in points], zero=False)
    if len({p[0] for p in points}) == 1:  # one x value: centre it
        x0, x1 = points[0][0] - 1, points[0][0] + 1
    y0, y1 = _range([p[1] for p in points], zero=zero)
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def sx(x: float) -> float:
        return PAD_L + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return PAD_T + ph - (y - y0) / (y1 - y0) * ph

    out = [_axes(title, kind, series, x_label, y_label)]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(
            f'<line class="grid" x1="{PAD_L}" x2="{W - PAD_R}" y1="{sy(yv):.1f}" '
            f'y2="{sy(yv):.1f}"/><text class="tick" x="{PAD_L - 4}" y="{sy(yv) + 3:.1f}" '
            f'text-anchor="end">{_fmt(yv)}</text>'
        )
    ticks = x_ticks if x_ticks is not None else _auto_ticks(x0, x1)
    for xv, label in ticks:
        out.append(
            f'<text class="tick" x="{sx(xv):.1f}" y="{H - PAD_B + 14}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(pts)
        coords: list[str] = []
        for j, (x, y) in enumerate(pts):
            if step and j:
                coords.append(f"{sx(x):.1f},{sy(pts[j - 1][1]):.1f}")
            coords.append(f"{sx(x):.1f},{sy(y):.1f}")
        out.append(
            f'<polyline fill="none" stroke="{color}" stroke-width="2" '
            f'points="{" ".join(coords)}"><title>{escape(name)}</title></polyline>'
        )
        if len(pts) <= 200:
            for x, y in pts:
                out.append(
                    f'<circle class="dot" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                    f'fill="{color}"><title>{escape(name)}: {_fmt(y)}</title></circle>'
                )
    out.append(_legend(list(series)))
    out.append("</svg>")
    return Markup("".join(out))


def _auto_ticks(x0: float, x1: float) -> list[tuple[float, str]]:
    return [(x0 + (x1 - x0) * i / 4, _fmt(x0 + (x1 - x0) * i / 4)) for i in range(5)]


def _axes(title: str, kind: str, data: object, x_label: str, y_label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{kind}" data-points="{escape(json.dumps(data))}" '
        f'viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">'
        f'<line class="axis" x1="{PAD_L}" y1="{H - PAD_B}" x2="{W - PAD_R}" y2="{H - PAD_B}"/>'
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}"/>'
        f'<text class="label" x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text class="label" x="12" y="{(H - PAD_B) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {(H - PAD_B) / 2})">{escape(y_label)}</text>'
    )


def _legend(names: list[str]) -> str:
    if len(names) < 2:
        return ""
    parts = []
    for i, name in enumerate(names):
        x = PAD_L + 8 + i * 110
        parts.append(
            f'<rect x="{x}" y="{PAD_T}" width="10" height="10" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text class="tick" x="{x + 14}" '
            f'y="{PAD_T + 9}">{escape(name)}</text>'
        )
    return "".join(parts)


def scatter(
    points: Sequence[tuple[float, float, str]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    diagonal: bool = True,
    kind: str = "scatter",
) -> Markup:
    """(x, y, series) points with the y = x line: predicted against true counts, or a
    reliability diagram (confidence against accuracy)."""
    if not points:
        return _empty(title, kind)
    vals = [p[0] for p in points] + [p[1] for p in points]
    lo, hi = _range(vals, zero=True)
    side = H - PAD_T - PAD_B
    names = list(dict.fromkeys(p[2] for p in points))
    legend_w = 20 + 8 * max(len(n) for n in names) if len(names) > 1 else 0
    size = side + PAD_L + PAD_R + legend_w

    def sx(v: float) -> float:
        return PAD_L + (v - lo) / (hi - lo) * side

    def sy(v: float) -> float:
        return PAD_T + side - (v - lo) / (hi - lo) * side

    data = [[x, y, s] for x, y, s in points]
    out = [
        f'<svg class="chart square" data-chart="{kind}" data-points="{escape(json.dumps(data))}" '
        f'viewBox="0 0 {size} {H}" role="img" aria-label="{escape(title)}">',
        f'<line class="axis" x1="{PAD_L}" y1="{H - PAD_B}" x2="{PAD_L + side}" y2="{H - PAD_B}"/>',
        f'<line class="axis" x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{H - PAD_B}"/>',
        f'<text class="label" x="{PAD_L + side / 2}" y="{H - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text class="label" x="12" y="{(H - PAD_B) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {(H - PAD_B) / 2})">{escape(y_label)}</text>',
    ]
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(
            f'<text class="tick" x="{PAD_L - 4}" y="{sy(v) + 3:.1f}" text-anchor="end">'
            f'{_fmt(v)}</text><text class="tick" x="{sx(v):.1f}" y="{H - PAD_B + 14}" '
            f'text-anchor="middle">{_fmt(v)}</text>'
        )
    if diagonal:
        out.append(
            f'<line class="diag" x1="{sx(lo):.1f}" y1="{sy(lo):.1f}" x2="{sx(hi):.1f}" '
            f'y2="{sy(hi):.1f}"/>'
        )
    for x, y, name in points:
        color = PALETTE[names.index(name) % len(PALETTE)]
        out.append(
            f'<circle class="dot" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{color}" '
            f'fill-opacity="0.75"><title>{escape(name)}: {_fmt(x)} → {_fmt(y)}</title></circle>'
        )
    for i, name in enumerate(names if legend_w else []):
        x, y = PAD_L + side + 12, PAD_T + 4 + i * 16
        out.append(
            f'<rect x="{x}" y="{y}" width="10" height="10" '
            f'fill="{PALETTE[i % len(PALETTE)]}"/><text class="tick" x="{x + 14}" '
            f'y="{y + 9}">{escape(name)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def time_ticks(t0: float, t1: float, n: int = 4) -> list[tuple[float, str]]:
    """Ticks for a time axis in epoch seconds: clock time within a day, else dates."""
    from datetime import UTC, datetime

    fmt = "%H:%M:%S" if t1 - t0 < 600 else "%H:%M" if t1 - t0 < 86400 else "%Y-%m-%d"
    span = (t1 - t0) or 1.0
    return [
        (t0 + span * i / n, datetime.fromtimestamp(t0 + span * i / n, UTC).strftime(fmt))
        for i in range(n + 1)
    ]


def int_ticks(x0: float, x1: float, n: int = 5) -> list[tuple[float, str]]:
    """Whole-number ticks (version numbers, image counts)."""
    step = max(1, round((x1 - x0) / n))
    first = int(x0)
    return [(float(v), str(v)) for v in range(first, int(x1) + 1, step)]


def heatmap(matrix: Sequence[Sequence[float]], labels: Sequence[str], *, title: str) -> Markup:
    """A confusion matrix: rows are the truth, columns the prediction."""
    n = len(labels)
    if not n or not matrix:
        return _empty(title, "confusion")
    cell = max(28, min(64, 320 // n))
    left, top = 90, 70
    size_w, size_h = left + cell * n + 10, top + cell * n + 10
    peak = max((max(r) for r in matrix if r), default=1) or 1
    out = [
        f'<svg class="chart confusion" data-chart="confusion" '
        f'data-points="{escape(json.dumps([list(r) for r in matrix]))}" '
        f'viewBox="0 0 {size_w} {size_h}" role="img" aria-label="{escape(title)}">',
        f'<text class="label" x="{left + cell * n / 2}" y="12" text-anchor="middle">'
        "predicted</text>",
        f'<text class="label" x="10" y="{top + cell * n / 2}" text-anchor="middle" '
        f'transform="rotate(-90 10 {top + cell * n / 2})">true</text>',
    ]
    for j, name in enumerate(labels):
        out.append(
            f'<text class="tick" x="{left + j * cell + cell / 2}" y="{top - 6}" '
            f'text-anchor="end" transform="rotate(-40 {left + j * cell + cell / 2} {top - 6})">'
            f"{escape(name)}</text>"
            f'<text class="tick" x="{left - 4}" y="{top + j * cell + cell / 2 + 3}" '
            f'text-anchor="end">{escape(name)}</text>'
        )
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            a = v / peak
            fg = "#fff" if a > 0.55 else "#111"
            out.append(
                f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell}" '
                f'height="{cell}" fill="rgba(37,99,235,{0.08 + 0.92 * a:.3f})"/>'
                f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell / 2 + 4}" '
                f'text-anchor="middle" fill="{fg}" class="cellv">{_fmt(v)}</text>'
            )
    out.append("</svg>")
    return Markup("".join(out))


def sparkline(points: Sequence[Sequence[float]], width: int = 120, height: int = 28) -> Markup:
    """A small loss curve (epoch, loss) for a table cell; live.js redraws it the same way."""
    pts = [(float(x), float(y)) for x, y in points]
    if len(pts) < 2:
        return Markup(f'<svg class="spark" data-points="{escape(json.dumps(pts))}"></svg>')
    x0, x1 = _range([p[0] for p in pts], zero=False)
    y0, y1 = _range([p[1] for p in pts], zero=False)
    coords = " ".join(
        f"{2 + (x - x0) / (x1 - x0) * (width - 4):.1f},"
        f"{2 + (1 - (y - y0) / (y1 - y0)) * (height - 4):.1f}"
        for x, y in pts
    )
    return Markup(
        f'<svg class="spark" width="{width}" height="{height}" '
        f'data-points="{escape(json.dumps(pts))}" viewBox="0 0 {width} {height}">'
        f'<polyline fill="none" stroke="#2563eb" stroke-width="1.5" points="{coords}"/></svg>'
    )
