"""Self-contained HTML reports: headings, plain-language text, tables and figures in one file.

Every report section is written against this small builder, so the model, journey and policy
reports look alike and open anywhere (no network, no script, figures inlined as SVG).

    report = Report("Journey report", subtitle="data/lake, 2025-01-01 to 2025-12-31")
    report.section("Funnel")
    report.text("Most customers who reach consideration never buy.")
    report.table(funnel_frame, caption="Customers per stage")
    report.figure(fig, caption="Funnel by stage")   # a matplotlib Figure, closed after use
    report.write(path)                               # atomic: a temporary file, then rename
"""

from __future__ import annotations

import html
import io
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Tone = Literal["info", "good", "warning", "alert"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;
background:#f6f7f9;line-height:1.45}
header{background:#1d2330;color:#fff;padding:24px 40px}header h1{margin:0 0 4px;font-size:26px}
header p{margin:0;color:#c5cad6}main{max-width:1100px;margin:0 auto;padding:16px 40px 60px}
nav{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:12px 20px;margin:16px 0;
display:flex;flex-wrap:wrap;gap:6px 18px}nav a{color:#2a5bd7;text-decoration:none;
white-space:nowrap}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;padding:8px 24px 20px;
margin:16px 0}h2{border-bottom:1px solid #e1e4ea;padding-bottom:6px}h3{margin-top:22px}
.tw{max-width:100%;overflow-x:auto}table{border-collapse:collapse;margin:8px 0 4px;
font-size:13px}th,td{border-bottom:1px solid #e6e8ee;padding:4px 8px;text-align:right}
th{background:#f0f2f6;text-align:center;overflow-wrap:anywhere;min-width:3em}td.t{text-align:left}caption{caption-side:top;
text-align:left;font-weight:600;padding:4px 0;color:#3d4455}
figure{margin:12px 0}figure svg{max-width:100%;height:auto}figcaption{color:#59627a;
font-size:13px}.note{border-left:4px solid #8a93a6;background:#f4f5f8;padding:8px 14px;
margin:10px 0}.note.good{border-color:#2e9d5b;background:#eef8f1}.note.warning{
border-color:#d99a1e;background:#fdf6e7}.note.alert{border-color:#d2423b;background:#fcefee}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:10px 0}.kpi{border:1px solid #e1e4ea;
border-radius:8px;padding:8px 16px;min-width:140px}.kpi b{display:block;font-size:22px}
.kpi span{color:#59627a;font-size:13px}footer{color:#59627a;font-size:12px;margin-top:30px}
"""


@dataclass
class _Section:
    title: str
    anchor: str
    parts: list[str] = field(default_factory=list)


class Report:
    """An HTML report assembled part by part and written as one self-contained file."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self._sections: list[_Section] = []

    @property
    def figures(self) -> int:
        """How many figures the report holds (checked by the report tests)."""
        return sum(p.startswith("<figure") for s in self._sections for p in s.parts)

    def section(self, title: str) -> Report:
        """Start a new top-level section (listed in the table of contents)."""
        self._sections.append(_Section(title, f"s{len(self._sections) + 1}"))
        return self

    def _add(self, part: str) -> Report:
        if not self._sections:
            self.section("Summary")
        self._sections[-1].parts.append(part)
        return self

    def heading(self, text: str) -> Report:
        """A sub-heading inside the current section."""
        return self._add(f"<h3>{html.escape(text)}</h3>")

    def text(self, text: str) -> Report:
        """A paragraph of plain language (escaped; blank lines start new paragraphs)."""
        paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
        return self._add("".join(f"<p>{html.escape(p)}</p>" for p in paragraphs))

    def bullets(self, items: Sequence[str]) -> Report:
        """A bulleted list of plain-language lines."""
        lis = "".join(f"<li>{html.escape(i)}</li>" for i in items)
        return self._add(f"<ul>{lis}</ul>")

    def note(self, text: str, tone: Tone = "info") -> Report:
        """A highlighted remark: an alert, a warning, a target met."""
        return self._add(f'<div class="note {tone}">{html.escape(text)}</div>')

    def kpis(self, values: Sequence[tuple[str, str]]) -> Report:
        """A row of headline figures, each (label, formatted value)."""
        cells = "".join(
            f'<div class="kpi"><b>{html.escape(v)}</b><span>{html.escape(k)}</span></div>'
            for k, v in values
        )
        return self._add(f'<div class="kpis">{cells}</div>')

    def table(
        self, frame: pd.DataFrame, caption: str = "", max_rows: int = 50, digits: int = 3
    ) -> Report:
        """A table of a frame (first ``max_rows`` rows; numbers rounded to ``digits``)."""
        shown = frame.head(max_rows)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
        rows = []
        for record in shown.itertuples(index=False):
            cells = "".join(_cell(v, digits) for v in record)
            rows.append(f"<tr>{cells}</tr>")
        more = ""
        if len(frame) > max_rows:
            more = f"<p><small>{len(frame) - max_rows:,} more rows not shown.</small></p>"
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        body = "".join(rows)
        return self._add(
            f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
            f"</table></div>{more}"
        )

    def figure(self, fig: Any, caption: str = "") -> Report:
        """A matplotlib figure, inlined as SVG; the figure is closed afterwards."""
        import matplotlib.pyplot as plt

        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", bbox_inches="tight")
        plt.close(fig)
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return self._add(f"<figure>{svg}{cap}</figure>")

    def render(self) -> str:
        """The whole document as a string."""
        toc = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in self._sections)
        body = "".join(
            f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
            for s in self._sections
        )
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)}</p>"
            f"</header><main><nav>{toc}</nav>{body}"
            f"<footer>Written by journeyml on {stamp}.</footer></main></body></html>"
        )

    def write(self, path: Path) -> Path:
        """Write the report atomically (a crash never leaves a half-written file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.render())
            Path(tmp).chmod(0o644)  # mkstemp makes it private; a report is meant to be read
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no screen needed), for report figures."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


LegendEntry = tuple[str, str, str]
"""(label, colour, mark): mark ``bar`` (a filled box), ``line``, ``dotted``, ``point`` or
``pale`` (a box drawn at the transparency of a bar whose interval includes zero)."""


def legend(ax: Any, entries: Sequence[LegendEntry], **kwargs: Any) -> Any:
    """A legend for marks the plot does not label itself (colours by meaning, shading)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = []
    for label, colour, mark in entries:
        if mark == "bar":
            handles.append(Patch(color=colour, label=label))
        elif mark == "pale":
            handles.append(Patch(color=colour, alpha=0.35, label=label))
        elif mark == "point":
            handles.append(Line2D([], [], color=colour, marker="o", ls="", ms=4, label=label))
        else:
            ls = ":" if mark == "dotted" else "-"
            handles.append(Line2D([], [], color=colour, ls=ls, lw=1.2, label=label))
    kwargs.setdefault("fontsize", 7)
    kwargs.setdefault("frameon", False)
    return ax.legend(handles=handles, **kwargs)


def colorbar(fig: Any, image: Any, ax: Any, label: str) -> Any:
    """A heatmap's colour scale, labelled: the legend of a heatmap (its SVG group is named
    ``legend_colorbar``, which the browser test looks for as it does matplotlib's legends)."""
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label(label, fontsize=8)
    bar.ax.set_gid("legend_colorbar")
    return bar


def _cell(value: Any, digits: int) -> str:
    if isinstance(value, float | np.floating):
        number = float(value)
        if not np.isfinite(number):
            return "<td>–</td>"
        text = f"{number:,.{digits}f}" if abs(number) < 1e6 else f"{number:,.0f}"
        return f"<td>{text}</td>"
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return f"<td>{value:,}</td>"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<td>–</td>"
    return f'<td class="t">{html.escape(str(value))}</td>'
