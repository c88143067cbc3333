"""Reports of evaluation runs: JSON, a Markdown table and PNG plots (matplotlib).

A run folder holds ``results.json`` (everything measured), ``results.md`` (one row per protocol,
never mixing protocols in a number, with how many requests each metric skipped) and
``retention.png`` (each metric over the edit sequence, one panel per protocol).
:func:`compare_runs` puts several run folders side by side: ``comparison.md`` and
``comparison.png``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from easyetcon.errors import EasyEtconError
from easyetcon.journal import write_json_atomic
from easyetcon_eval.evaluate import METRIC_NAMES

RESULTS_JSON, RESULTS_MD, RETENTION_PNG = "results.json", "results.md", "retention.png"
COMPARISON_MD, COMPARISON_PNG = "comparison.md", "comparison.png"


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _protocol_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, dict)]


def summary_table(summary: dict[str, Any], *, label: str | None = None) -> list[str]:
    """Markdown rows (with header) of a summary: protocol × metrics, skipped counts last."""
    metric_columns = [m for m in METRIC_NAMES]
    extra_columns = sorted({k for _, row in _protocol_rows(summary) for k in row} - set(METRIC_NAMES) - {"n", "skipped"})
    head = (["run"] if label is not None else []) + ["protocol", *metric_columns, *extra_columns, "n", "skipped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, row in _protocol_rows(summary):
        skipped = row.get("skipped") or {}
        skipped_text = ", ".join(f"{m}: {n}" for m, n in skipped.items() if n) or "0"
        cells = ([label] if label is not None else []) + [key]
        cells += [_fmt(row.get(m)) for m in metric_columns] + [_fmt(row.get(c)) for c in extra_columns]
        cells += [_fmt(row.get("n")), skipped_text]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_label(data: dict[str, Any], folder: Path) -> str:
    chain = data.get("chain") or []
    return " → ".join(step.get("step", step.get("editor", "?")) for step in chain) or folder.name


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
    summary = data.get("final") or data.get("summary") or {}
    lines = [f"# Evaluation: {_run_label(data, out)}", ""]
    if metadata:
        lines += [f"- {k}: `{v}`" for k, v in metadata.items()] + [""]
    if "edits" in data:
        lines += [f"Edits: {data['edits']} · schedule `{data.get('schedule')}` · "
                  f"mean seconds per chain application: {_fmt(_mean(data.get('seconds_per_edit') or []))}", ""]
    lines += ["## After the last edit", "", *summary_table(summary), ""]
    immediate = data.get("immediate") or []
    if immediate:
        lines += ["## Right after each edit (mean over chain applications)", "", *summary_table(_mean_of_points(immediate)), ""]
    if data.get("baseline"):
        lines += ["## Unedited model (baseline)", "", *summary_table(data["baseline"]), ""]
    curve = data.get("curve") or []
    if len(curve) > 1:
        lines += ["## Retention over the edit sequence", ""]
        for point in curve:
            lines += [f"### after {point['edits']} edits", "", *summary_table({k: v for k, v in point.items() if k != "edits"}), ""]
    if data.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in data["notes"]], ""]
    paths["md"].write_text("\n".join(lines), encoding="utf-8")
    if curve:
        paths["png"] = out / RETENTION_PNG
        plot_retention(curve, paths["png"], title=_run_label(data, out))
    return paths


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_retention(curve: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """One panel per protocol: each metric against the number of edits so far."""
    plt = _pyplot()
    keys = [k for k in curve[0] if k != "edits" and isinstance(curve[0][k], dict) and any(m in curve[0][k] for m in METRIC_NAMES)]
    keys = keys or ["(none)"]
    figure, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    edits = [p["edits"] for p in curve]
    for axis, key in zip(axes[0], keys):
        for metric in METRIC_NAMES:
            values = [(p.get(key) or {}).get(metric) for p in curve]
            if any(v is not None for v in values):
                axis.plot(edits, [float("nan") if v is None else v for v in values], marker="o", label=metric)
        axis.set_title(key)
        axis.set_xlabel("edits so far")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("score")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)


def compare_runs(
    run_dirs: Sequence[str | Path], out: str | Path | None = None, *, labels: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Compare run folders (each with ``results.json``): writes ``comparison.png`` (one panel per
    protocol, a bar per run and metric) and ``comparison.md``; returns their paths.

    ``out`` defaults to the first run's parent folder.
    """
    if not run_dirs:
        raise EasyEtconError("compare_runs needs at least one run folder")
    runs = []
    for index, folder in enumerate(run_dirs):
        path = Path(folder) / RESULTS_JSON
        if not path.is_file():
            raise EasyEtconError(f"{str(folder)!r} has no {RESULTS_JSON}; run `easyetcon eval` with --out there first")
        data = json.loads(path.read_text(encoding="utf-8"))
        label = labels[index] if labels is not None else _run_label(data, Path(folder))
        runs.append((label, data.get("final") or data.get("summary") or {}))
    out_dir = Path(out) if out is not None else Path(run_dirs[0]).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, png_path = out_dir / COMPARISON_MD, out_dir / COMPARISON_PNG
    lines = ["# Method comparison", ""]
    keys = list(dict.fromkeys(k for _, summary in runs for k, v in summary.items() if isinstance(v, dict)))
    for key in keys:
        lines += [f"## {key}", ""]
        header_done = False
        for label, summary in runs:
            if key not in summary:
                continue
            table = summary_table({key: summary[key]}, label=label)
            lines += table if not header_done else table[2:]
            header_done = True
        lines.append("")
    md_path.write_text("\n".join(lines), encoding="utf-8")

    plt = _pyplot()
    metric_keys = [k for k in keys if any(m in (s.get(k) or {}) for _, s in runs for m in METRIC_NAMES)] or keys[:1]
    figure, axes = plt.subplots(1, max(1, len(metric_keys)), figsize=(6 * max(1, len(metric_keys)), 4), squeeze=False)
    width = 0.8 / max(1, len(runs))
    for axis, key in zip(axes[0], metric_keys):
        for r, (label, summary) in enumerate(runs):
            row = summary.get(key) or {}
            values = [row.get(m) for m in METRIC_NAMES]
            positions = [i + r * width for i in range(len(METRIC_NAMES))]
            # a skipped metric gets no bar rather than a bar at zero
            axis.bar(positions, [float("nan") if v is None else v for v in values], width=width, label=label)
        axis.set_xticks([i + width * (len(runs) - 1) / 2 for i in range(len(METRIC_NAMES))])
        axis.set_xticklabels(METRIC_NAMES, rotation=20, fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.set_title(key)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(png_path, dpi=110)
    plt.close(figure)
    return png_path, md_path


def _mean_of_points(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
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
