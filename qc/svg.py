"""Small inline SVG charts for the HTML report: no library, no script, nothing fetched."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from html import escape

from pydantic import BaseModel

FONT = "font-family=\"-apple-system, 'Segoe UI', 'PingFang SC', 'Microsoft YaHei', 'Noto Sans CJK SC', sans-serif\""
ROW = 24
COLORS = ("#2e7d32", "#c62828", "#f9a825", "#1565c0")


class Bar(BaseModel):
    label: str
    value: float  # 0..1
    low: float | None = None  # interval whisker
    high: float | None = None
    note: str = ""  # printed right of the bar


def _text_width(text: str, size: int = 12) -> int:
    """Rough pixel width: wide (CJK) characters count double."""
    return int(sum(size if unicodedata.east_asian_width(ch) in "WF" else size * 0.6 for ch in text))


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def interval_bars(bars: Sequence[Bar], *, width: int = 720) -> str:
    """Horizontal bars on a 0-100% axis, each with its confidence interval as a whisker."""
    label_w = min(280, max((_text_width(_clip(b.label)) for b in bars), default=40) + 12)
    note_w = 190
    plot_w = width - label_w - note_w
    height = ROW * len(bars) + 30
    x = lambda v: label_w + v * plot_w
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" {FONT} font-size="12">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{x(tick):.1f}" y1="0" x2="{x(tick):.1f}" y2="{height - 20}" stroke="#ddd"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{height - 6}" text-anchor="middle" fill="#666">{tick:.0%}</text>')
    for i, bar in enumerate(bars):
        y = i * ROW + 4
        out.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(_clip(bar.label))}</text>')
        out.append(f'<rect x="{x(0):.1f}" y="{y}" width="{bar.value * plot_w:.1f}" height="{ROW - 8}" fill="#90caf9"/>')
        if bar.low is not None and bar.high is not None:
            mid = y + (ROW - 8) / 2
            out.append(f'<line x1="{x(bar.low):.1f}" y1="{mid}" x2="{x(bar.high):.1f}" y2="{mid}" stroke="#0d47a1" stroke-width="2"/>')
            for end in (bar.low, bar.high):
                out.append(f'<line x1="{x(end):.1f}" y1="{y + 2}" x2="{x(end):.1f}" y2="{y + ROW - 10}" stroke="#0d47a1" stroke-width="2"/>')
        out.append(f'<text x="{x(1) + 8:.1f}" y="{y + 13}" fill="#333">{escape(bar.note)}</text>')
    out.append("</svg>")
    return "".join(out)


def stacked_counts(rows: Sequence[tuple[str, Sequence[int]]], series: Sequence[str], *, width: int = 720) -> str:
    """Horizontal stacked count bars (e.g. rejected / fixed per reason) with a legend."""
    label_w = min(320, max((_text_width(_clip(label)) for label, _ in rows), default=40) + 12)
    plot_w = width - label_w - 60
    top = max((sum(counts) for _, counts in rows), default=1) or 1
    height = ROW * len(rows) + 28
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" {FONT} font-size="12">']
    for i, (label, counts) in enumerate(rows):
        y = i * ROW + 4
        out.append(f'<text x="{label_w - 8}" y="{y + 13}" text-anchor="end">{escape(_clip(label))}</text>')
        left = float(label_w)
        for j, count in enumerate(counts):
            w = count / top * plot_w
            out.append(f'<rect x="{left:.1f}" y="{y}" width="{w:.1f}" height="{ROW - 8}" fill="{COLORS[(j + 1) % len(COLORS)]}"/>')
            left += w
        out.append(f'<text x="{left + 6:.1f}" y="{y + 13}">{sum(counts)}</text>')
    legend_y = height - 8
    for j, name in enumerate(series):
        lx = label_w + j * 110
        out.append(f'<rect x="{lx}" y="{legend_y - 10}" width="10" height="10" fill="{COLORS[(j + 1) % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 14}" y="{legend_y}">{escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart(points: Sequence[tuple[float, float]], markers: Sequence[tuple[float, str]], *, x_label: str,
               y_label: str, width: int = 720, height: int = 300) -> str:
    """A 0-1 by 0-1 (x scaled to the data) line with labelled vertical markers: the OC curve."""
    left, bottom, right, top_pad = 56, 40, 20, 12
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    x_max = max((p[0] for p in points), default=1.0) or 1.0
    x = lambda v: left + v / x_max * plot_w
    y = lambda v: top_pad + (1 - v) * plot_h
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" {FONT} font-size="12">']
    for i in range(6):
        gy, gx = i / 5, x_max * i / 5
        out.append(f'<line x1="{left}" y1="{y(gy):.1f}" x2="{width - right}" y2="{y(gy):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(gy) + 4:.1f}" text-anchor="end" fill="#666">{gy:.0%}</text>')
        out.append(f'<text x="{x(gx):.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#666">{gx:.1%}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(px):.1f},{y(py):.1f}" for i, (px, py) in enumerate(points))
    out.append(f'<path d="{path}" fill="none" stroke="#1565c0" stroke-width="2"/>')
    for i, (mx, label) in enumerate(markers):
        if 0 <= mx <= x_max:
            out.append(f'<line x1="{x(mx):.1f}" y1="{top_pad}" x2="{x(mx):.1f}" y2="{y(0):.1f}" stroke="{COLORS[i % len(COLORS)]}" stroke-dasharray="4 3"/>')
            out.append(f'<text x="{x(mx) + 4:.1f}" y="{top_pad + 12 + 14 * i}" fill="{COLORS[i % len(COLORS)]}">{escape(label)}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="14" y="{top_pad + plot_h / 2:.1f}" text-anchor="middle" transform="rotate(-90 14 {top_pad + plot_h / 2:.1f})">{escape(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)
