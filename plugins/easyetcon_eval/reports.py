"""Reports of evaluation runs: JSON, a Markdown table and PNG plots (matplotlib).

A run folder holds ``results.json`` (everything measured), ``results.md`` (one table by number
of edits: a row per protocol, from the unedited model at 0 edits to the last edit, never mixing
protocols in a number, with how many requests each metric skipped) and ``retention.png`` (each
metric over the edit sequence from 0 edits, one panel per protocol). :func:`compare_runs` puts
several run folders side by side: ``comparison.md`` and ``comparison.png``.

Every file is written to a temporary file beside it and renamed into place, so a report is
never half written; files get the usual permissions of the user's umask.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from easyetcon.errors import EasyEtconError
from easyetcon.journal import write_bytes_atomic, write_json_atomic
from easyetcon_eval.names import METRIC_NAMES

RESULTS_JSON, RESULTS_MD, RETENTION_PNG = "results.json", "results.md", "retention.png"
COMPARISON_MD, COMPARISON_PNG = "comparison.md", "comparison.png"
UNEDITED = "0 (unedited)"

#: how each metric's line is drawn: marker, line style, marker size, line width, filled marker.
#: Lines differ without colour, and a line under another with the same values still shows
#: (wide with a large hollow marker under narrow with a small filled one).
METRIC_STYLES: dict[str, tuple[str, Any, float, float, bool]] = {
    "reliability": ("o", "-", 9, 2.6, False),
    "generalization": ("s", "--", 4.5, 1.3, True),
    "locality": ("^", "-", 9, 2.6, False),
    "portability": ("D", ":", 5, 1.5, True),
    "locality_vs_truth": ("v", "--", 4.5, 1.3, True),
}


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _protocol_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, dict)]


def _skipped_text(row: dict[str, Any]) -> str:
    skipped = row.get("skipped") or {}
    return ", ".join(f"{m}: {n}" for m, n in skipped.items() if n) or "0"


def _table(rows: Sequence[tuple[list[str], dict[str, Any]]], label_columns: Sequence[str]) -> list[str]:
    """Markdown lines: ``label_columns``, then the metrics some row has (a protocol without a
    metric, such as ``free-generation@1``, gives no column of dashes), extra numbers, ``n`` and
    the skipped counts. Each row is ``(label cells, protocol row)``."""
    metrics = [m for m in METRIC_NAMES if any(m in row for _, row in rows)]
    extras = sorted({k for _, row in rows for k in row} - set(METRIC_NAMES) - {"n", "skipped"})
    head = [*label_columns, *metrics, *extras, "n", "skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for labels, row in rows:
        cells = [*labels, *(_fmt(row.get(m)) for m in metrics), *(_fmt(row.get(c)) for c in extras)]
        cells += [_fmt(row.get("n")), _skipped_text(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary_table(summary: dict[str, Any], *, label: str | None = None) -> list[str]:
    """Markdown rows (with header) of a summary: protocol × metrics, skipped counts last."""
    columns = (["run"] if label is not None else []) + ["protocol"]
    rows = [(([label] if label is not None else []) + [key], row) for key, row in _protocol_rows(summary)]
    return _table(rows, columns)


def unedited_point(baseline: dict[str, Any]) -> dict[str, Any]:
    """The baseline summary as the point at 0 edits. Its ``locality`` (agreement with the
    unedited model) is 1 wherever there are locality probes: the model agrees with itself."""
    point: dict[str, Any] = {"edits": 0}
    for key, row in _protocol_rows(baseline):
        row = dict(row)
        if "locality" in row and row.get("locality") is None and row.get("locality_vs_truth") is not None:
            row["locality"] = 1.0
            skipped = dict(row.get("skipped") or {})
            skipped["locality"] = skipped.get("locality_vs_truth", 0)
            row["skipped"] = skipped
        point[key] = row
    return point


def retention_points(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The points of a run's results, by number of edits: the unedited model (when a baseline
    was computed) and every retention point."""
    points = [unedited_point(data["baseline"])] if data.get("baseline") else []
    return points + [p for p in data.get("curve") or [] if p.get("edits") != 0]


def _spread(points: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """At most ``limit`` points, evenly spread, always keeping the first and the last."""
    if limit is None or len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


def results_table(data: dict[str, Any], *, rows_per_protocol: int | None = None) -> list[str]:
    """The one table of a run's results: a lifelong run's rows grouped by number of edits (0 is
    the unedited model), a protocol per row; a single evaluation's rows by protocol.
    ``rows_per_protocol`` keeps that many numbers of edits at most (first and last included)."""
    if "curve" not in data:
        return summary_table(data.get("summary") or {})
    rows = []
    for point in _spread(retention_points(data), rows_per_protocol):
        edits = UNEDITED if point["edits"] == 0 else str(point["edits"])
        rows += [([edits, key], row) for key, row in _protocol_rows({k: v for k, v in point.items() if k != "edits"})]
    return _table(rows, ["edits", "protocol"])


def _run_label(data: dict[str, Any], folder: Path) -> str:
    chain = data.get("chain") or []
    return " → ".join(step.get("step", step.get("editor", "?")) for step in chain) or folder.name


def _write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_report(out_dir: str | Path, result: Any, *, metadata: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (for a lifelong run) ``retention.png``.

    ``result`` is a :class:`~easyetcon_eval.lifelong.LifelongResult` or an
    :class:`~easyetcon_eval.evaluate.EvaluationResult`. Returns the written paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    if metadata:
        data = {"metadata": metadata, **data}
    paths = {"json": out / RESULTS_JSON, "md": out / RESULTS_MD}
    write_json_atomic(paths["json"], data)
    lines = [f"# Evaluation: {_run_label(data, out)}", ""]
    if metadata:
        lines += [f"- {k}: `{v}`" for k, v in metadata.items()] + [""]
    if "curve" in data:
        facts = [f"Edits: {data['edits']}", f"schedule `{data.get('schedule')}`",
                 f"mean seconds per chain application: {_fmt(_mean(data.get('seconds_per_edit') or []))}"]
        if data.get("resumed_at"):
            facts.append(f"resumed after edit {data['resumed_at']}")
        lines += [" · ".join(facts), ""]
        for step, weights in (data.get("edited_weights") or {}).items():
            lines += [f"- `{step}` edited {', '.join(f'`{w}`' for w in weights)}"]
        if data.get("edited_weights"):
            lines.append("")
        unedited = f"; `{UNEDITED}` is the model before any edit, whose locality is 1 by definition" if data.get("baseline") else ""
        lines += [
            "## Scores by number of edits", "",
            f"Each row scores every request edited so far (the newest edit of each fact){unedited}.", "",
            *results_table(data), "",
        ]
    else:
        lines += ["## Scores", "", *results_table(data), ""]
    immediate = data.get("immediate") or []
    if immediate:
        lines += ["## Right after each edit (mean over chain applications)", "", *summary_table(mean_of_points(immediate)), ""]
    if data.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    _write_text(paths["md"], "\n".join(lines))
    if data.get("curve"):
        paths["png"] = out / RETENTION_PNG
        plot_retention(data["curve"], paths["png"], title=_run_label(data, out), baseline=data.get("baseline"))
    return paths


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure: Any, path: str | Path) -> Path:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(figure)
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)


def retention_figure(curve: Sequence[dict[str, Any]], *, title: str = "", baseline: dict[str, Any] | None = None) -> Any:
    """The matplotlib figure of :func:`plot_retention` (for tests and notebooks)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    points = ([unedited_point(baseline)] if baseline else []) + [p for p in curve if p.get("edits") != 0]
    last = points[-1] if points else {}
    keys = [k for k in last if k != "edits" and isinstance(last[k], dict) and any(m in last[k] for m in METRIC_NAMES)]
    keys = keys or ["(none)"]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for metric in METRIC_NAMES:
            measured = [(p["edits"], (p.get(key) or {}).get(metric)) for p in points]
            measured = [(x, y) for x, y in measured if y is not None]
            if measured:
                marker, style, size, width, filled = METRIC_STYLES[metric]
                line, = axis.plot([x for x, _ in measured], [y for _, y in measured], marker=marker, linestyle=style,
                                  markersize=size, linewidth=width, label=metric)
                if not filled:
                    line.set_markerfacecolor("none")
                    line.set_markeredgewidth(1.6)
        axis.set_title(key)
        axis.set_xlabel("edits so far (0: unedited)" if baseline else "edits so far")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(-0.04, 1.04)
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("score")
    # one legend for every panel, below them, where it hides no point
    handles = {line.get_label(): line for axis in axes[0] for line in axis.get_lines()}
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    return figure


def plot_retention(
    curve: Sequence[dict[str, Any]], path: str | Path, *, title: str = "", baseline: dict[str, Any] | None = None
) -> Path:
    """One panel per protocol: each metric against the number of edits so far, each with its
    own marker and line style; with ``baseline`` (a baseline summary) the lines start at 0
    edits, the unedited model."""
    return _save_figure(retention_figure(curve, title=title, baseline=baseline), path)


def distinct_labels(labels: Sequence[str], folders: Sequence[Path]) -> list[str]:
    """``labels`` with the run folder added to each label that several runs share (two runs of
    one chain), first its name, then its whole path, then its place in the list."""
    folders = [Path(f) for f in folders]
    chosen = list(labels)
    for describe in (lambda i: folders[i].name, lambda i: str(folders[i]), lambda i: f"run {i + 1}"):
        shared = {label for label in chosen if chosen.count(label) > 1}
        if not shared:
            break
        chosen = [f"{label} ({describe(i)})" if label in shared else label for i, label in enumerate(chosen)]
    return chosen


def compare_runs(
    run_dirs: Sequence[str | Path], out: str | Path | None = None, *, labels: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Compare run folders (each with ``results.json``): writes ``comparison.png`` (one panel per
    protocol, a bar per run and metric) and ``comparison.md``; returns their paths.

    Each run is labelled by ``labels`` or by its chain; runs of the same chain get their folder
    added to the label. ``out`` defaults to the first run's parent folder.
    """
    if not run_dirs:
        raise EasyEtconError("compare_runs needs at least one run folder")
    if labels is not None:
        if len(labels) != len(run_dirs):
            raise EasyEtconError(f"{len(labels)} label(s) for {len(run_dirs)} run folder(s); give one label per run")
        repeated = sorted({label for label in labels if list(labels).count(label) > 1})
        if repeated:
            raise EasyEtconError(f"labels must tell the runs apart; repeated: {', '.join(repeated)}")
    results = []
    for folder in run_dirs:
        path = Path(folder) / RESULTS_JSON
        if not path.is_file():
            raise EasyEtconError(f"{str(folder)!r} has no {RESULTS_JSON}; run `easyetcon eval` with --out there first")
        try:
            results.append(json.loads(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise EasyEtconError(f"{str(path)!r} is not readable JSON ({error}); run `easyetcon eval` there again") from error
    names = list(labels) if labels is not None else distinct_labels(
        [_run_label(data, Path(folder)) for data, folder in zip(results, run_dirs)], [Path(f) for f in run_dirs]
    )
    runs = [(name, data.get("final") or data.get("summary") or {}, data.get("edits")) for name, data in zip(names, results)]
    out_dir = Path(out) if out is not None else Path(run_dirs[0]).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out_dir / COMPARISON_MD, out_dir / COMPARISON_PNG
    lines = ["# Method comparison", "", "Each run's scores after its last edit.", ""]
    keys = list(dict.fromkeys(k for _, summary, _ in runs for k, v in summary.items() if isinstance(v, dict)))
    for key in keys:
        rows = [([label, _fmt(edits)], summary[key]) for label, summary, edits in runs if key in summary]
        lines += [f"## {key}", "", *_table(rows, ["run", "edits"]), ""]
    _write_text(md_path, "\n".join(lines))

    plt = _pyplot()
    metric_keys = [k for k in keys if any(m in (s.get(k) or {}) for _, s, _ in runs for m in METRIC_NAMES)] or keys[:1]
    figure, axes = plt.subplots(1, max(1, len(metric_keys)), figsize=(6 * max(1, len(metric_keys)), 4), squeeze=False)
    width = 0.8 / max(1, len(runs))
    hatches = ["", "//", "..", "xx", "\\\\", "oo", "--", "++"]
    for axis, key in zip(axes[0], metric_keys):
        for r, (label, summary, _) in enumerate(runs):
            row = summary.get(key) or {}
            values = [row.get(m) for m in METRIC_NAMES]
            positions = [i + r * width for i in range(len(METRIC_NAMES))]
            # a skipped metric gets no bar rather than a bar at zero
            axis.bar(positions, [float("nan") if v is None else v for v in values], width=width, label=label,
                     hatch=hatches[r % len(hatches)], edgecolor="white")
        axis.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(METRIC_NAMES))])
        axis.set_xticklabels(METRIC_NAMES, rotation=20, fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.set_title(key)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    _save_figure(figure, png_path)
    return png_path, md_path


def mean_of_points(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per protocol and metric, the mean over evaluation points (each weighted by its requests);
    skipped counts add up."""
    merged: dict[str, Any] = {}
    for key in dict.fromkeys(k for p in points for k, v in p.items() if isinstance(v, dict)):
        rows = [p[key] for p in points if isinstance(p.get(key), dict)]
        row: dict[str, Any] = {}
        for metric in METRIC_NAMES:
            pairs = [(r[metric], r.get("n", 1) - (r.get("skipped") or {}).get(metric, 0)) for r in rows if r.get(metric) is not None]
            total = sum(w for _, w in pairs)
            row[metric] = sum(v * w for v, w in pairs) / total if total else None
        row["n"] = sum(r.get("n", 0) for r in rows)
        row["skipped"] = {m: sum((r.get("skipped") or {}).get(m, 0) for r in rows) for m in METRIC_NAMES}
        merged[key] = row
    return merged
