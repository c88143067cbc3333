"""README-ready tables from the intrinsic benchmarks' JSON results.

    python benchmarks/intrinsic_report.py benchmarks/results/intrinsic_*.json > benchmarks/results/intrinsic_README.md
    python benchmarks/intrinsic_report.py --plots benchmarks/results/intrinsic_sequential*.json   # + retention PNGs

Reads any mix of ``intrinsic_single.py``, ``intrinsic_sequential.py`` and
``intrinsic_stats_speed.py`` outputs (recognised by their keys) and prints Markdown: single-edit
scores, the sequential runs' final scores and timing, and statistics throughput. Every number
comes from the files; the command that produced each file is listed under the tables. With
``--plots``, each sequential run also gets one retention plot per editor beside its JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intrinsic_common import METRICS, fmt  # noqa: E402


def protocol_keys(summary: dict) -> list[str]:
    return [k for k in summary if "@" in k and isinstance(summary[k], dict) and "reliability" in summary[k]]


def single_table(data: dict) -> list[str]:
    lines = ["| editor | protocol | " + " | ".join(METRICS) + " | n | median s/edit |", "|---|---|" + "---|" * (len(METRICS) + 2)]
    for editor, result in data["editors"].items():
        for key in protocol_keys(result["summary"]):
            row = result["summary"][key]
            lines.append(f"| {editor} | {key} | " + " | ".join(fmt(row.get(m), 2) for m in METRICS)
                         + f" | {row.get('n')} | {fmt(result.get('median_seconds_per_edit'), 2)} |")
    return lines


def sequential_table(data: dict) -> list[str]:
    lines = ["| editor | edits | protocol | " + " | ".join(METRICS) + " | median s/edit | edit 10 → last (s) | mean of 20 around each (s) |",
             "|---|---|---|" + "---|" * (len(METRICS) + 3)]
    for editor, result in data["editors"].items():
        timing = result["timing"]
        count = len(result["seconds_per_edit"])
        for key in protocol_keys(result["final"]):
            row = result["final"][key]
            lines.append(
                f"| {editor} | {count} | {key} | " + " | ".join(fmt(row.get(m), 2) for m in METRICS)
                + f" | {fmt(timing['median'], 2)} | {fmt(timing.get('edit_10'), 2)} → {fmt(timing.get(f'edit_{count}'), 2)}"
                + f" | {fmt(timing.get('window_10'), 2)} → {fmt(timing.get(f'window_{count}'), 2)} |"
            )
    return lines


def curve_table(editor: str, result: dict) -> list[str]:
    keys = protocol_keys(result["curve"][0]) if result["curve"] else []
    lines = [f"Retention, {editor}:", "", "| edits | " + " | ".join(f"{k.split('@')[0]} {m}" for k in keys for m in METRICS) + " |",
             "|---|" + "---|" * (len(keys) * len(METRICS))]
    for point in result["curve"]:
        lines.append(f"| {point['edits']} | " + " | ".join(fmt(point[k].get(m), 2) for k in keys for m in METRICS) + " |")
    return lines


def stats_table(data: dict) -> list[str]:
    plain = data["plain_forward"]
    lines = ["| pass | layers | tokens/s | time vs plain forward |", "|---|---|---|---|",
             f"| plain forward (all layers + logits) | – | {plain['tokens_per_second']:,.0f} | 1.00 |"]
    for row in data["statistics"]:
        lines.append(f"| key statistics | {row['layers']} | {row['tokens_per_second']:,.0f} | {row['slowdown_vs_plain']:.2f} |")
    return lines


def plot_curves(path: str, data: dict) -> list[Path]:
    """One retention plot per editor of a sequential run, beside its JSON (``<stem>_<editor>.png``)."""
    from easyetcon_eval.reports import plot_retention

    written = []
    for editor, result in data["editors"].items():
        if result.get("curve"):
            target = Path(path).with_name(f"{Path(path).stem}_{editor}.png")
            written.append(plot_retention(result["curve"], target, title=f"{editor}: {Path(path).stem}"))
    return written


def main(argv: list[str]) -> int:
    plots = "--plots" in argv
    paths = [a for a in argv if a != "--plots"]
    commands = []
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        commands.append(data["environment"]["command"])
        if "plain_forward" in data:
            print(f"### Key statistics throughput ({data['texts']} texts, {data['tokens']} tokens)\n")
            print("\n".join(stats_table(data)) + "\n")
        elif any("curve" in r for r in data["editors"].values()):
            print(f"### Sequential edits ({data['environment'].get('split', 'test')} split)\n")
            print("\n".join(sequential_table(data)) + "\n")
            for editor, result in data["editors"].items():
                print("\n".join(curve_table(editor, result)) + "\n")
            if plots:
                print("\n".join(f"retention plot: {png}" for png in plot_curves(path, data)) + "\n")
        else:
            print(f"### Single edits ({data['environment'].get('split', 'test')} split)\n")
            print("\n".join(single_table(data)) + "\n")
    print("Commands:\n\n" + "\n".join(f"    {c}" for c in commands))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
