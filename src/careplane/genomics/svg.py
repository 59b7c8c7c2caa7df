"""Small server-side SVG charts for the QC report (no script, so the page's CSP stays strict).

Why it exists: the QC report needs two pictures, the coverage histogram and the insert-size
distribution, and they must render without JavaScript and print cleanly. Drawing a bar chart
is a few lines of arithmetic; every label is escaped, every number formatted here.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["bar_chart"]


def _nice(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:g}"


def bar_chart(points: Sequence[tuple[float, float]], *, title: str, x_label: str,
              y_label: str, width: int = 640, height: int = 240, max_bars: int = 120,
              mark: float | None = None) -> Markup:
    """Bars of ``(x, y)`` (x ascending), merged into at most ``max_bars`` bins; ``mark`` draws
    a vertical line at that x (a mean, say)."""
    pts = [(float(x), float(y)) for x, y in points]
    if not pts:
        return Markup('<p class="muted">{}: no data</p>').format(title)
    if len(pts) > max_bars:
        step = -(-len(pts) // max_bars)
        pts = [(pts[i][0], sum(y for _, y in pts[i:i + step])) for i in range(0, len(pts), step)]
    left, bottom, top, right = 56, 36, 24, 12
    plot_w, plot_h = width - left - right, height - top - bottom
    x_min, x_max = pts[0][0], pts[-1][0]
    y_max = max(y for _, y in pts) or 1.0
    bar_w = plot_w / len(pts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="{escape(title)}" width="100%" '
             f'style="max-width:{width}px" font-family="system-ui, sans-serif" '
             'font-size="11" fill="#4a5568">',
             f'<title>{escape(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="600" fill="#1a202c">'
             f'{escape(title)}</text>']
    for i, (x, y) in enumerate(pts):
        h = plot_h * y / y_max
        parts.append(f'<rect x="{left + i * bar_w:.2f}" y="{top + plot_h - h:.2f}" '
                     f'width="{max(bar_w - 0.5, 0.5):.2f}" height="{h:.2f}" fill="#2b6cb0">'
                     f'<title>{escape(_nice(x))}: {escape(_nice(y))}</title></rect>')
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" '
                 'stroke="#8a94a6"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="#8a94a6"/>')
    for frac in (0.0, 0.5, 1.0):
        x = x_min + frac * (x_max - x_min)
        parts.append(f'<text x="{left + frac * plot_w:.1f}" y="{axis_y + 16}" '
                     f'text-anchor="middle">{escape(_nice(round(x)))}</text>')
    for frac in (0.5, 1.0):
        parts.append(f'<text x="{left - 6}" y="{axis_y - frac * plot_h + 4:.1f}" '
                     f'text-anchor="end">{escape(_nice(round(frac * y_max)))}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text x="12" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + plot_h / 2:.0f})">{escape(y_label)}</text>')
    if mark is not None and x_max > x_min and x_min <= mark <= x_max:
        mx = left + plot_w * (mark - x_min) / (x_max - x_min)
        parts.append(f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{axis_y}" '
                     'stroke="#c53030" stroke-dasharray="4 3"/>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - only numbers and escaped text went in
