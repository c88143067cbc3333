"""Shared helpers of the intrinsic-editing benchmarks (``benchmarks/intrinsic_*.py``).

The benchmarks run on a shipped fact-world model (``easyetcon_world``; ``--model default`` or
``wide``, or any world model folder) and score with the evaluation plugin (``easyetcon_eval``).
Editor options come from ``intrinsic_configs.json`` for the default model and
``intrinsic_configs_wide.json`` for the wide one (chosen with ``intrinsic_tune.py``);
``--configs`` replaces them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIGS = HERE / "intrinsic_configs.json"
#: The options tuned for each shipped world model, used when ``--configs`` is not given.
SHIPPED_CONFIGS = {"default": DEFAULT_CONFIGS, "wide": HERE / "intrinsic_configs_wide.json"}
RESULTS = HERE / "results"
#: The default editors of a run; any registered intrinsic editor with an entry in the configs file can be named.
EDITORS = ("ft-l", "ft-m", "rome", "memit", "alphaedit", "emmet", "ultraedit")
METRICS = ("reliability", "generalization", "locality", "portability")


def common_arguments(parser: argparse.ArgumentParser, *, edits: int, editors: str = ",".join(EDITORS)) -> None:
    parser.add_argument("--editors", default=editors, help=f"comma-separated registered intrinsic editors (default {', '.join(EDITORS)})")
    parser.add_argument("--edits", type=int, default=edits, help="number of edit requests")
    parser.add_argument("--split", default="test", choices=("tune", "test"), help="fact-world split")
    parser.add_argument("--edit-seed", type=int, default=0, help="which facts are edited, and to what")
    parser.add_argument("--configs", type=Path, default=None,
                        help="JSON: editor -> options (default: the file tuned for --model, see SHIPPED_CONFIGS)")
    run_arguments(parser)


def run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--threads`` and ``--out``: what every intrinsic benchmark takes."""
    parser.add_argument("--model", default=None,
                        help="a shipped world model's name (default, wide) or a model folder (default: default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="the model's dtype (the options stay those tuned in float32)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``, apply ``--threads`` before any model work, and fill in ``--configs``."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if "configs" in vars(args) and args.configs is None:
        args.configs = SHIPPED_CONFIGS.get(args.model or "default", DEFAULT_CONFIGS)
    return args


def parse_editors(text: str, *, family: str | None = "intrinsic") -> list[str]:
    """Editor names (of ``family``; ``None``: any); ``name@label`` is a labelled variant with its
    own entry in the configs file."""
    from easyetcon.plugins import get_host

    known = [info.name for info in get_host().registry.editors(family)]
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if editor_name(name) not in known]
    if unknown:
        raise SystemExit(f"unknown editor(s) {unknown}; choose from {', '.join(known)} (optionally as name@label)")
    return names


def editor_name(entry: str) -> str:
    """The registered editor of a configs entry: ``"alphaedit@conservative"`` -> ``"alphaedit"``."""
    return entry.split("@", 1)[0]


def merge_options(options: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``changes`` on top, section by section (``value: {stop_nll: 0.2}`` changes one
    option of the ``value`` section, not the whole section); a dotted key (``"value.stop_nll"``, as a
    grid names it) is the same as that one-option section."""
    merged = dict(options)
    for name, value in changes.items():
        if "." in name:
            section, name = name.split(".", 1)
            name, value = section, {name: value}
        if isinstance(value, dict) and isinstance(merged.get(name), dict):
            merged[name] = merge_options(merged[name], value)
        else:
            merged[name] = value
    return merged


def options_changed(base: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What :func:`merge_options` would have to put on ``base`` to give ``options`` (section by section)."""
    changed: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, dict) and isinstance(base.get(name), dict):
            inner = options_changed(base[name], value)
            if inner:
                changed[name] = inner
        elif base.get(name) != value:
            changed[name] = value
    return changed


def load_configs(path: Path, *, sequential: bool = False) -> dict[str, dict[str, Any]]:
    """Editor -> options; with ``sequential``, each editor's ``sequential_overrides`` applied on top."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    overrides = data.get("sequential_overrides", {}) if sequential else {}
    return {
        name: merge_options(options, overrides.get(name, {}))
        for name, options in data.items()
        if not name.startswith("_") and name != "sequential_overrides"
    }


def load_world_model(folder: str | None, dtype: str = "float32") -> tuple[Any, Any, str]:
    """``(EditableModel, world, folder)`` of a shipped world model (by name; default ``default``) or
    a folder, cast to ``dtype``."""
    from easyetcon_world import WorldCacheError, load_world, world_model_folder

    from easyetcon.model import load_model

    try:
        folder = str(world_model_folder(folder))
    except WorldCacheError as error:
        raise SystemExit(str(error)) from None
    model = load_model(folder)
    model.torch_model.to(getattr(torch, dtype)).eval()
    return model, load_world(folder), folder


def world_requests(world: Any, split: str, count: int, seed: int) -> list[Any]:
    from easyetcon_world import make_edit_requests

    return make_edit_requests(world, split, count, seed)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        **{key: str(value) for key, value in vars(args).items()},
    }


def mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")
    os.replace(partial, path)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def metric_table(rows: dict[str, dict[str, dict[str, Any]]], protocols: list[str]) -> str:
    """Markdown table: one row per (editor, protocol) with the four metrics."""
    lines = ["| editor | protocol | " + " | ".join(METRICS) + " | n |", "|---|---|" + "---|" * (len(METRICS) + 1)]
    for editor, summary in rows.items():
        for key in protocols:
            row = summary.get(key, {})
            lines.append(f"| {editor} | {key} | " + " | ".join(fmt(row.get(m)) for m in METRICS) + f" | {fmt(row.get('n'))} |")
    return "\n".join(lines)
