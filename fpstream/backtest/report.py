"""The backtest's HTML report: one self-contained page (inline SVG, no external resource), so
it can be attached to a ticket or opened from CI artefacts offline.

It shows the result table, waste and violations per method and resource, the waste/violation
frontiers when the backtest has them (``--budgets``), a few series' usage against each method's
allocation, and the fleet's clusters as the flow last published them.
Figures are drawn with matplotlib's object API (``Figure``, no ``pyplot``): no global state and
no display backend.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["ReportData", "render_report", "write_report"]

PLOTTED_METHODS: tuple[str, ...] = ("fpstream", "vpa", "oracle", "manual")
COLORS: dict[str, str] = {"fpstream": "#d62728", "vpa": "#1f77b4", "crane": "#9467bd",
                          "peak": "#ff7f0e", "manual": "#7f7f7f", "oracle": "#2ca02c",
                          "usage": "#000000"}
UNITS: dict[str, tuple[str, float]] = {"cpu": ("cores", 1.0), "mem": ("GiB", 2.0**30)}
FIGURES: tuple[str, ...] = ("waste", "viol", "short")

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; }
figure { margin: 0 0 2em; } figcaption { font-size: 0.9em; color: #555; }
svg { max-width: 100%; height: auto; }
"""


@dataclass
class ReportData:
    """What ``report.write_report`` draws, kept small: the plotted series' usage and
    allocations, a few figures per series (for the cluster map), the latest clusters and each
    app's latest cluster."""

    fmt: str
    paths: list[str]
    plotted: dict[str, dict[str, Any]] = field(default_factory=dict)
    young: dict[str, dict[str, Any]] = field(default_factory=dict)
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    clusters: Any | None = None
    app_clusters: dict[str, int] = field(default_factory=dict)


def write_report(path: Path, result: dict[str, Any], data: ReportData) -> None:
    """Write the report of one backtest (``run_backtest``'s document and kept data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(result, data), encoding="utf-8")


def render_report(result: dict[str, Any], data: ReportData) -> str:
    """The report as one HTML document."""
    resources = [r for r in UNITS if r in result]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fpstream backtest: {esc(data.fmt)}</title><style>{_CSS}</style></head><body>",
        f"<h1>fpstream backtest: {esc(data.fmt)} trace</h1>",
        f"<p>{result['series']} series, {result['steps']} scored steps from day 2 on "
        f"(first day: {result['notes'].get('first_day_steps', 0)} steps); hourly decisions. "
        f"Trace: {esc(', '.join(data.paths))}.</p>",
        "<h2>Result</h2>",
        "<p>waste = sum(max(A - u, 0)) / sum(A); viol = share of steps with u &gt; A; "
        "short = sum(max(u - A, 0)) / sum(u). A resource the trace lacks is not shown.</p>",
        "<h3>Day 2 on</h3>", _table(result, resources),
        "<h3>First day (cold start)</h3>", _table(result["first_day"], resources),
        *([_age_table(result["first_day_by_age"], resources)]
          if result.get("first_day_by_age") else []),
        *([_frontier_section(result["first_day_frontier"], _FIRST_DAY_CAPTION)]
          if result.get("first_day_frontier") else []),
        _figure(_bars(result, resources), "Waste and violations per method and resource "
                "(day 2 on)."),
    ]
    if result.get("frontier"):
        parts += ["<h2>Frontiers</h2>", _frontier_section(result["frontier"])]
    parts.append("<h2>Series</h2>")
    if data.plotted:
        for name, kept in data.plotted.items():
            parts.append(_figure(_series(name, kept, resources),
                                 f"{esc(name)}: usage against each method's allocation."))
    else:
        parts.append("<p>No series had an allocation from the flow to plot.</p>")
    if data.young:
        parts.append("<h2>New instances: their first day</h2>")
        for name, kept in data.young.items():
            parts.append(_figure(_series(name, kept, resources),
                                 f"{esc(name)}, deployed after the trace's first day: usage "
                                 "against each method's allocation over its first day."))
    parts += ["<h2>Clusters</h2>", _clusters_section(data, resources),
              "<h2>Notes</h2>", _notes(result["notes"]), "</body></html>"]
    return "\n".join(parts)


def _table(doc: dict[str, Any], resources: Sequence[str]) -> str:
    methods = list(dict.fromkeys(m for r in resources for m in doc[r]))
    head = "".join(f"<th>{r} {k}</th>" for r in resources for k in FIGURES)
    rows = []
    for m in methods:
        cells = "".join(
            f"<td>{doc[r][m][k]:.4f}</td>" if m in doc[r] else "<td>-</td>"
            for r in resources for k in FIGURES)
        rows.append(f"<tr><td>{html.escape(m)}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _age_table(doc: dict[str, Any], resources: Sequence[str]) -> str:
    """The first day by the series' age: waste @ viol per method, resource and age ("-"
    where no step was scored)."""
    methods = list(dict.fromkeys(m for r in resources for m in doc[r]))
    spans = list(dict.fromkeys(a for r in resources for m in doc[r] for a in doc[r][m]))
    head = "".join(f"<th>{r} {html.escape(a)}</th>" for r in resources for a in spans)
    rows = []
    for m in methods:
        cells = "".join(
            f"<td>{doc[r][m][a]['waste']:.3f} @ {doc[r][m][a]['viol']:.4f}</td>"
            if m in doc[r] and doc[r][m].get(a, {}).get("steps") else "<td>-</td>"
            for r in resources for a in spans)
        rows.append(f"<tr><td>{html.escape(m)}</td>{cells}</tr>")
    return ("<p>The first day by the series' age (hours since its first sample): waste @ viol; "
            f"- where no step was scored.</p><table><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _notes(notes: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_plain(v))}</td></tr>"
                   for k, v in notes.items())
    return f"<table><tbody>{rows}</tbody></table>"


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _figure(fig: Figure, caption: str) -> str:
    return f"<figure>{_svg(fig)}<figcaption>{caption}</figcaption></figure>"


def _svg(fig: Figure) -> str:
    """The figure as inline SVG. The XML prolog, DOCTYPE, metadata and namespace declarations
    go: HTML5 gives inline ``<svg>`` its namespace, and they only name remote DTDs and
    vocabularies, which a page that must work offline should not mention."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)


def _new_figure(width: float, height: float) -> Figure:
    import matplotlib
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "fpstream"
    return Figure(figsize=(width, height), layout="constrained")


def _bars(result: dict[str, Any], resources: Sequence[str]) -> Figure:
    fig = _new_figure(4.2 * len(resources), 5.5)
    axes = fig.subplots(2, len(resources), squeeze=False)
    for col, res in enumerate(resources):
        methods = list(result[res])
        for row, figure in enumerate(("waste", "viol")):
            ax = axes[row][col]
            values = [result[res][m][figure] for m in methods]
            ax.bar(methods, values, color=[COLORS.get(m, "#333333") for m in methods])
            ax.set_title(f"{res} {figure}")
            ax.set_ylim(0, max(1e-3, max(values) * 1.15))
            ax.tick_params(axis="x", labelrotation=30)
            for i, v in enumerate(values):
                ax.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8)
    return fig


_DAY2_CAPTION = ("Waste against the realised violation rate, day 2 on. Baselines are tuned "
                 "in-sample per budget (the label of a point is its budget; dotted lines mark "
                 "the budgets); a hollow point is a family with no setting within its budget "
                 "(its lowest violation rate).")
_FIRST_DAY_CAPTION = ("fpstream's first day at each budget: waste against the realised "
                      "violation rate of every instance's first day (its proactive reserve, "
                      "then its peers' and its own young decisions); a hollow point is over "
                      "its budget.")


def _frontier_section(frontier: dict[str, Any], text: str = _DAY2_CAPTION) -> str:
    """The frontiers: per resource, waste against the realised violation rate (log x) of
    each method's points, each marked with the budget it was tuned for (or run at), the
    budgets as vertical guides; then the points as a table."""
    resources = [r for r in UNITS if frontier.get(r)]
    if not resources:
        return "<p>No frontier: no resource with budgets.</p>"
    fig, floors = _frontiers(frontier, resources)
    caption = (f"{text} A violation rate of 0 is drawn at the left edge "
               f"({', '.join(f'{f:.2g}' for f in floors)}).")
    return _figure(fig, caption) + _frontier_table(frontier, resources)


def _frontiers(frontier: dict[str, Any], resources: Sequence[str]) -> tuple[Figure, list[float]]:
    """The frontier figure, and per resource where a violation rate of 0 is drawn."""
    fig = _new_figure(5.5 * len(resources), 4.2)
    axes = fig.subplots(1, len(resources), squeeze=False)[0]
    floors = []
    for ax, res in zip(axes, resources, strict=True):
        doc = frontier[res]
        budgets = sorted({p["budget"] for points in doc.values() for p in points})
        positive = [v for v in budgets + [p["viol"] for ps in doc.values() for p in ps] if v > 0]
        floor = min(positive, default=1e-4) / 3
        floors.append(floor)
        for b in budgets:
            ax.axvline(max(b, floor), color="#999999", lw=0.8, ls=":")
        for method, points in doc.items():
            color = COLORS.get(method, "#333333")
            x = [max(p["viol"], floor) for p in points]
            y = [p["waste"] for p in points]
            ax.plot(x, y, color=color, lw=1.2, label=method)
            ok = [p.get("within_budget", True) for p in points]
            ax.scatter([v for v, k in zip(x, ok, strict=True) if k],
                       [v for v, k in zip(y, ok, strict=True) if k], color=color, s=22, zorder=3)
            ax.scatter([v for v, k in zip(x, ok, strict=True) if not k],
                       [v for v, k in zip(y, ok, strict=True) if not k], facecolors="none",
                       edgecolors=color, s=22, zorder=3)
            labels: dict[tuple[float, float], list[str]] = {}  # one label per place
            for xi, yi, p in zip(x, y, points, strict=True):
                labels.setdefault((xi, yi), []).append(f"{p['budget']:g}")
            for xy, text in labels.items():
                ax.annotate(", ".join(text), xy, textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=color)
        ax.set_xscale("log")
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.set_xlabel("violation rate (share of steps with u > A)")
        ax.set_ylabel("waste")
        ax.set_title(f"{res}: least waste within each budget", fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
    return fig, floors


def _frontier_table(frontier: dict[str, Any], resources: Sequence[str]) -> str:
    methods = list(dict.fromkeys(m for r in resources for m in frontier[r]))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    rows = []
    for res in resources:
        doc = frontier[res]
        for b in sorted({p["budget"] for points in doc.values() for p in points}):
            cells = []
            for m in methods:
                p = next((p for p in doc.get(m, []) if p["budget"] == b), None)
                if p is None:
                    cells.append("<td>-</td>")
                    continue
                params = ", ".join(f"{k} {v:g}" for k, v in p.get("params", {}).items())
                mark = "" if p.get("within_budget", True) else " (over budget)"
                cells.append(f"<td>{p['waste']:.3f} / {p['viol']:.4f} / {p['changes']:.3f}"
                             f"{mark}<br><small>{html.escape(params)}</small></td>")
            rows.append(f"<tr><td>{res}</td><td>{b:g}</td>{''.join(cells)}</tr>")
    return ("<p>Per budget: waste / viol / changes (share of decision periods whose "
            "reservation moved by more than 10 %), and the parameters chosen.</p>"
            f"<table><thead><tr><th>resource</th><th>budget</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _hours(ts: np.ndarray) -> np.ndarray:
    """Hours since the first step, with NaN rows where the trace has a gap (so lines break)."""
    return (ts - ts[0]) / 3600.0


def _with_gaps(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(x) < 3:
        return x, y
    step = float(np.median(np.diff(x)))
    cut = np.flatnonzero(np.diff(x) > 3 * step) + 1
    return np.insert(x, cut, np.nan), np.insert(y.astype(np.float64), cut, np.nan)


def _series(name: str, kept: dict[str, Any], resources: Sequence[str]) -> Figure:
    shown = [r for r in resources if r in kept]
    fig = _new_figure(11, 2.6 * max(1, len(shown)))
    axes = fig.subplots(max(1, len(shown)), 1, squeeze=False)
    x = _hours(np.asarray(kept["ts"], dtype=np.float64))
    for ax_row, res in zip(axes, shown, strict=False):
        ax: Axes = ax_row[0]
        unit, scale = UNITS[res]
        data = kept[res]
        ax.plot(*_with_gaps(x, data["usage"] / scale), color=COLORS["usage"], lw=0.7,
                label="usage")
        for m in PLOTTED_METHODS:
            if m in data:
                ax.step(*_with_gaps(x, data[m] / scale), where="post", color=COLORS[m],
                        lw=1.1, label=m)
        ax.set_ylabel(f"{res} ({unit})")
        ax.set_title(name if res == shown[0] else "", fontsize=10, loc="left")
        ax.legend(loc="upper right", fontsize=7, ncols=5)
    axes[-1][0].set_xlabel("hours since the first sample")
    return fig


def _clusters_section(data: ReportData, resources: Sequence[str]) -> str:
    snap = data.clusters
    if snap is None or not getattr(snap, "clusters", None):
        return "<p>The flow published no cluster snapshot.</p>"
    fig = _new_figure(11, 4.5)
    left, right = fig.subplots(1, 2)
    cmap = _cluster_colors(sorted({c.id for c in snap.clusters} | set(data.app_clusters.values())))
    use_mem = "mem" in resources and all(a["mem_mean"] is not None for a in data.apps.values())
    for a in data.apps.values():
        cid = data.app_clusters.get(a["app"])
        y = a["mem_mean"] / 2.0**30 if use_mem else a["cpu_p95"]
        left.scatter(a["cpu_mean"], y, s=18, color=cmap.get(cid, "#bbbbbb"),
                     edgecolors="none", alpha=0.85)
    left.set_xlabel("mean CPU (cores)")
    left.set_ylabel("mean memory (GiB)" if use_mem else "p95 CPU (cores)")
    left.set_title("series, coloured by their app's latest cluster (grey: none)", fontsize=10)
    right.margins(0.15)
    for c in snap.clusters:
        xy = (list(c.centroid) + [0.0, 0.0])[:2]
        right.scatter(*xy, s=30 + 15 * c.members, color=cmap[c.id], alpha=0.7,
                      edgecolors="black")
        right.annotate(f"{c.id} ({c.members})", xy, fontsize=8, ha="center", va="center")
    right.set_xlabel("centroid coordinate 1")
    right.set_ylabel("centroid coordinate 2")
    right.set_title("cluster centroids, first two fingerprint coordinates (size: members)",
                    fontsize=10)
    sizes = ", ".join(f"{c.id}: {c.members}" for c in snap.clusters)
    caption = (f"Clusters of the latest snapshot, version {snap.version} (members per "
               f"cluster: {html.escape(sizes)}); an app is coloured by its cluster in the "
               "latest snapshot that held it (a snapshot holds the apps still active).")
    return _figure(fig, caption) + _membership(data)


def _cluster_colors(ids: Sequence[int]) -> dict[int | None, str]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return {cid: _hex(cmap(i % 20)) for i, cid in enumerate(ids)}


def _hex(rgba: tuple[float, float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in rgba[:3])


def _membership(data: ReportData) -> str:
    """Per cluster, its series' slices (when the trace labels them) or names, a few each."""
    members: dict[int, list[str]] = {}
    for name, a in data.apps.items():
        cid = data.app_clusters.get(a["app"])
        if cid is not None:
            members.setdefault(cid, []).append(a["slice"] or name)
    if not members:
        return ""
    rows = []
    for cid in sorted(members):
        names = members[cid]
        shown = ", ".join(sorted(set(names))[:8]) + (" ..." if len(set(names)) > 8 else "")
        rows.append(f"<tr><td>{cid}</td><td>{len(names)}</td><td>{html.escape(shown)}</td></tr>")
    return ("<table><thead><tr><th>cluster</th><th>series</th><th>apps (slices)</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")
