"""The bench's PNG chart (matplotlib, optional: without it the chart is skipped with a note).

One row of panels per setting, and per dtype of its module and step rows where some ran under
autocast (``--amp``: each row titled with its dtype, so that a bf16 bar is never read as fp32):
median time per call of the module and step variants (log scale; the figure on each bar is the
speed-up over the reference, and for ResNet-32 steps with RSG the overhead over the step without
RSG, both within the dtype), peak memory of one call (with the reduction over the reference), and,
when the run timed the fused ops, their median time per call (with the share of the copy bandwidth
on CUDA, the speed-up over the plain reference on the CPU; in the setting's first row). Whiskers
are the p25..p75 spread of the per-call times. A figure too wide for its bar is written a word a
line, or upright, and each panel leaves room above its bars for the figures and the legend, so that
none of them overlap (``fit_bar_labels``). Below the panels: every skipped or failed variant, and why.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from rsg_fast.bench.report import row_case, row_dtype

PHASE_COLOURS = {"contrastive": "#4c72b0", "generation": "#dd8452", "-": "#55a868"}
OP_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
WHISKERS = "whiskers: p25..p75 (interquartile range) of the per-call times"
BAR_LABEL = "bar-label"   # the gid of the figures printed on the bars (``fit_bar_labels`` places them)
LABEL_FONT, LABEL_FONT_MIN = 7, 5
DPI = 110


def _label_bar(ax, x, y, text, log: bool, width: float):
    """The figure above one bar of ``width`` (data units); ``fit_bar_labels`` later fits it to that width."""
    if not text:
        return None
    label = ax.text(x, y * (1.12 if log else 1.02), text, ha="center", va="bottom", fontsize=LABEL_FONT,
                    gid=BAR_LABEL)
    return label, text, width


def fit_bar_labels(fig, labels: list) -> None:
    """Keep the bar figures apart: a figure wider than its bar is written a word a line, or, still too
    wide, on one line turned upright (smaller, down to 5 points, where even that is too wide). Bars do
    not overlap, so neither do figures that each stay within their bar's width. Each panel's y range
    then grows until a strip as tall as its legend is left free above bars and figures. Call once the
    panels have their final size."""
    renderer = fig.canvas.get_renderer()
    for label, text, width in labels:
        ax = label.axes
        x0, x1 = ax.transData.transform([(0, 1), (width, 1)])[:, 0]
        room = 0.95 * abs(x1 - x0)
        words = text.split()
        if _fits(label, text, room, renderer) or _fits(label, "\n".join(words), room, renderer):
            continue
        label.set(text=" ".join(words), rotation=90, rotation_mode="anchor", ha="left", va="center")
        size = LABEL_FONT
        while label.get_window_extent(renderer).width > room and size > LABEL_FONT_MIN:
            size -= 0.5
            label.set_fontsize(size)
    for ax in {label.axes for label, _, _ in labels}:
        _make_room_above(ax, [label for label, _, _ in labels if label.axes is ax], renderer)


def _fits(label, text: str, room: float, renderer) -> bool:
    """Write ``text`` level above its bar; whether it is at most ``room`` pixels wide."""
    label.set(text=text, rotation=0, rotation_mode="default", ha="center", va="bottom", fontsize=LABEL_FONT)
    return label.get_window_extent(renderer).width <= room


def _make_room_above(ax, labels: list, renderer, pad: float = 0.03) -> None:
    """Raise the panel's upper y limit until its bars and figures end below a strip as tall as its
    legend, so that the legend's "best" place, which avoids them, is there and covers nothing."""
    scale = ax.yaxis.get_transform()          # data -> the axis' linear space (log10 on a log axis)
    legend = ax.get_legend()
    box = ax.get_window_extent(renderer)
    lo, hi = (float(v) for v in scale.transform(ax.get_ylim()))
    top = 1 - pad - (legend.get_window_extent(renderer).height / box.height if legend else 0)
    if top < 0.2:   # a legend nearly as tall as the panel: no room to make above the bars
        return
    need = lo + (float(scale.transform(ax.dataLim.y1)) - lo) / top     # the bars and whiskers
    for label in labels:   # a label keeps its height in pixels and its start in data units
        extent = label.get_window_extent(renderer)
        start = lo + (extent.y0 - box.y0) / box.height * (hi - lo)     # in the axis' linear space
        height = extent.height / box.height
        if height < top - 0.05:
            need = max(need, lo + (start - lo) / (top - height))
    if need > hi + 1e-9 * abs(hi):
        ax.set_ylim(top=float(scale.inverted().transform(need)))


def _time_figure(row: dict) -> str:
    """The figure printed on a module/step bar: speed-up over the reference, overhead over no RSG."""
    parts = []
    if row.get("speedup_vs_reference") is not None and not row["variant"].startswith("reference") \
            and row["variant"] != "resnet32+reference":
        parts.append(f"{row['speedup_vs_reference']:.1f}x")
    if row.get("overhead_vs_no_rsg_pct") is not None and "+rsg" in row["variant"]:
        parts.append(f"{row['overhead_vs_no_rsg_pct']:+.0f}%")
    return "\n".join(parts)


def _phase_bars(ax, rows: list[dict], metric: str, figure) -> list:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.38
    log = metric == "median_ms"
    labels = []
    for k, phase in enumerate(("contrastive", "generation", "-")):
        picked = [(x, r) for x, v in enumerate(variants) for r in rows
                  if r["variant"] == v and r["phase"] == phase and r.get(metric) is not None]
        if not picked:
            continue
        xs = [x + (0 if phase == "-" else (k - 0.5) * width) for x, _ in picked]
        ys = [r[metric] for _, r in picked]
        yerr = [[r[metric] - r["p25_ms"] for _, r in picked], [r["p75_ms"] - r[metric] for _, r in picked]] \
            if log else None
        ax.bar(xs, ys, width, color=PHASE_COLOURS[phase], label=phase if phase != "-" else "no phase",
               yerr=yerr, capsize=3)
        for x, (_, r) in zip(xs, picked):
            labels.append(_label_bar(ax, x, r[metric] if not log else r["p75_ms"], figure(r), log, width))
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=20, ha="right", fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return [label for label in labels if label]


def _memory_figure(rows: list[dict]):
    """The figure on a memory bar: the reduction over ReferenceRSG (module rows) or over ResNet-32 +
    ReferenceRSG (step rows), same phase."""
    base_of = {"module": "reference", "step": "resnet32+reference"}
    ref = {(r["group"], r["phase"]): r.get("peak_mem_mb") for r in rows if base_of.get(r["group"]) == r["variant"]}

    def figure(r):
        base = ref.get((r["group"], r["phase"]))
        if r["variant"] == base_of.get(r["group"]) or not base or not r.get("peak_mem_mb"):
            return ""
        return f"{base / r['peak_mem_mb']:.1f}x less"
    return figure


def _op_bars(ax, rows: list[dict], cuda: bool) -> list:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    series = list(dict.fromkeys((r["dtype"], r["mode"]) for r in rows))
    width = 0.8 / max(len(series), 1)
    labels = []
    for k, (dtype, mode) in enumerate(series):
        picked = [(x, r) for x, v in enumerate(variants) for r in rows
                  if r["variant"] == v and r["dtype"] == dtype and r["mode"] == mode]
        xs = [x + (k - (len(series) - 1) / 2) * width for x, _ in picked]
        us = [r["median_ms"] * 1e3 for _, r in picked]
        yerr = [[(r["median_ms"] - r["p25_ms"]) * 1e3 for _, r in picked],
                [(r["p75_ms"] - r["median_ms"]) * 1e3 for _, r in picked]]
        ax.bar(xs, us, width, color=OP_COLOURS[k % len(OP_COLOURS)], label=f"{dtype} {mode}", yerr=yerr, capsize=2)
        for x, (_, r) in zip(xs, picked):
            if cuda and r.get("pct_copy_bw") is not None:
                text = f"{r['pct_copy_bw']:.0f}%"
            elif r.get("speedup_vs_reference") is not None and not r["variant"].endswith(":reference"):
                text = f"{r['speedup_vs_reference']:.1f}x"
            else:
                text = ""
            labels.append(_label_bar(ax, x, r["p75_ms"] * 1e3, text, True, width))
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels(variants, rotation=25, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.margins(y=0.2)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return [label for label in labels if label]


def _not_timed(result: dict) -> list[str]:
    """One line per (setting, variant, reason) that has no timing, phases merged."""
    seen: dict[tuple, list[str]] = {}
    for r in result["rows"]:
        if r.get("median_ms") is None:
            seen.setdefault((r["setting"], r["variant"], r["status"]), []).append(row_case(r))
    return [f"{s}: {v} ({', '.join(dict.fromkeys(w))}): {status}" for (s, v, status), w in seen.items()]


def _panel_lines(names: list[str], timed: list[dict]) -> list[tuple[str, str, str]]:
    """(setting, dtype, title) of each line of panels: one per setting and dtype of its module and step
    rows (--amp), titled with the dtype where the setting has rows under autocast."""
    lines = []
    for name in names:
        dtypes = list(dict.fromkeys(row_dtype(r) for r in timed
                                    if r["setting"] == name and r.get("group") != "op")) or ["fp32"]
        for dtype in dtypes:
            title = name if dtypes == ["fp32"] else f"{name}, {dtype}{' autocast' if dtype != 'fp32' else ''}"
            lines.append((name, dtype, title))
    return lines


def write_chart(result: dict, path: Path) -> str | None:
    """Draw the chart to ``path``. Returns None when written, else the reason it was skipped."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 (ImportError, or a broken install)
        return "chart skipped: matplotlib is not installed (pip install 'rsg-fast[plot]')"
    fig = draw_chart(result)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return None


def draw_chart(result: dict):
    """The chart as a matplotlib figure (matplotlib must be installed; ``write_chart`` saves it). The
    backend stays the caller's (``write_chart`` picks Agg)."""
    import matplotlib.pyplot as plt

    cuda = result["device"]["type"] == "cuda"
    names = [s["name"] for s in result["settings"]]
    timed = [r for r in result["rows"] if r.get("median_ms") is not None]
    has_ops = any(r.get("group") == "op" for r in timed)
    has_whole = any(r.get("group") != "op" for r in timed) or not has_ops
    cols = 2 * has_whole + has_ops
    lines = _panel_lines(names, timed)
    notes = _not_timed(result)
    line_in = 0.14   # height of one line of the 7-point notes below the panels, inches
    fig, axes = plt.subplots(max(len(lines), 1), cols, squeeze=False, dpi=DPI,
                             figsize=(6.5 * cols, 4.4 * max(len(lines), 1) + line_in * (len(notes) + 3)))
    labels = []
    for i, (name, dtype, title) in enumerate(lines):
        rows = [r for r in timed if r["setting"] == name]
        whole = [r for r in rows if r.get("group") != "op" and row_dtype(r) == dtype]
        first = i == 0 or lines[i - 1][0] != name
        panels = []
        if has_whole:
            panels += [("median_ms", f"{title}: median ms per call (log)", whole),
                       ("peak_mem_mb", f"{title}: peak memory of one call, MB", whole)]
        if has_ops and first:    # the setting's op panel, in its first line only
            panels.append(("op", f"{name}: fused ops: median us per call (log)",
                           [r for r in rows if r.get("group") == "op"]))
        for ax in axes[i][len(panels):]:
            ax.set_axis_off()
        for j, (metric, label, picked) in enumerate(panels):
            ax = axes[i][j]
            ax.set_title(label, fontsize=10)
            if not picked or (metric != "op" and not any(r.get(metric) is not None for r in picked)):
                ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
            elif metric == "op":
                labels += _op_bars(ax, picked, cuda)
            else:
                labels += _phase_bars(ax, picked, metric,
                                      _time_figure if metric == "median_ms" else _memory_figure(picked))
    dev = result["device"]
    fig.suptitle(f"rsg-fast bench, {dev['type']} ({dev['name']}, torch threads={dev['threads']}), {result['date']}",
                 fontsize=10)
    legend = [WHISKERS + "; on the bars: speed-up over ReferenceRSG (module) or over ResNet-32 + ReferenceRSG (step), "
              "overhead of RSG over the ResNet-32 step without it, memory reduction over ReferenceRSG"
              + ("; fused ops: % of the measured copy bandwidth" if cuda else "; fused ops: speed-up over the plain "
                 "reference (rsg_fast.ops.naive)")]
    legend += ["not timed: " + n for n in notes] or ["every planned variant was timed"]
    text = "\n".join(textwrap.fill(line, 180, subsequent_indent="    ") for line in legend)
    bottom = min(0.6, (0.1 + line_in * (text.count("\n") + 1)) / fig.get_size_inches()[1])
    fig.text(0.01, 0.005, text, fontsize=7, va="bottom", ha="left", family="monospace")
    for _ in range(2):   # the figures' room changes the y ticks, which the layout then follows
        fig.tight_layout(rect=(0, bottom, 1, 0.97))
        fit_bar_labels(fig, labels)
    return fig
