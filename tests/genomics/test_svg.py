"""Server-side charts: valid SVG, labels escaped, many points binned."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from careplane.genomics.svg import bar_chart


def test_bar_chart_is_well_formed_and_escapes_labels() -> None:
    svg = bar_chart([(i, i * i) for i in range(1, 11)], title="a <b> & c", x_label="x",
                    y_label="y", mark=5)
    root = ET.fromstring(str(svg))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}rect")) == 10
    assert root.find(f"{ns}title").text == "a <b> & c"  # type: ignore[union-attr]
    assert "<b>" not in str(svg)


def test_many_points_are_merged_into_bins() -> None:
    svg = bar_chart([(i, 1) for i in range(1000)], title="t", x_label="x", y_label="y",
                    max_bars=100)
    root = ET.fromstring(str(svg))
    rects = root.findall("{http://www.w3.org/2000/svg}rect")
    assert len(rects) == 100


def test_no_data() -> None:
    assert "no data" in str(bar_chart([], title="<t>", x_label="x", y_label="y"))
    assert "&lt;t&gt;" in str(bar_chart([], title="<t>", x_label="x", y_label="y"))
