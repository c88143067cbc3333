"""How big an edit export is: ``easyetcon export`` of N ROME edits (and of MEMIT and FT-M edits,
for contrast) against the changed weights stored whole, on a shipped fact-world model. Each
export is applied to a fresh copy of the base model and checked bit for bit against the run.

The editors use the tuned options of ``benchmarks/intrinsic_configs_wide.json`` (the wide
model) or ``intrinsic_configs.json`` (the default one); the edits are the world's test requests.

    python benchmarks/export_size.py --model wide --threads 1 --out benchmarks/results/export_size.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intrinsic_common import environment, load_configs, load_world_model, world_requests, write_json  # noqa: E402

from easyetcon.chain import EditChain  # noqa: E402
from easyetcon.deltas import apply_export, build_export, read_export  # noqa: E402
from easyetcon.journal import Journal  # noqa: E402
from easyetcon.model import load_model  # noqa: E402

CONFIGS = {"wide": "intrinsic_configs_wide.json", "default": "intrinsic_configs.json"}
DEFAULT_CASES = "rome:sequential:1,rome:sequential:10,rome:sequential:50,rome:sequential:100,memit:batch:10,ft-m:sequential:10"


def parse_cases(text: str) -> list[tuple[str, str, int]]:
    cases = []
    for item in text.split(","):
        editor, mode, edits = item.split(":")
        if mode not in ("sequential", "batch"):
            raise SystemExit(f"--cases {item!r}: the mode is sequential or batch")
        cases.append((editor, mode, int(edits)))
    return cases


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(folder: str, requests: list[Any], editor: str, mode: str, options: dict[str, Any], scratch: Path) -> dict[str, Any]:
    model = load_model(folder)
    started = time.perf_counter()
    EditChain([(editor, options)]).apply(model, requests, mode=mode, journal=scratch / "journal")
    edit_seconds = time.perf_counter() - started

    started = time.perf_counter()
    export = build_export(Journal.open(scratch / "journal"), model)
    export.save(scratch / "edits.safetensors")
    export_seconds = time.perf_counter() - started

    fresh = load_model(folder)
    started = time.perf_counter()
    apply_export(fresh, read_export(scratch / "edits.safetensors"))
    apply_seconds = time.perf_counter() - started

    file_bytes = (scratch / "edits.safetensors").stat().st_size
    return {
        "editor": editor, "mode": mode, "edits": len(requests),
        "weights": len(export.weights), "forms": sorted({info["form"] for info in export.weights.values()}),
        "rank": sum(sum(info.get("ranks", [])) for info in export.weights.values()),
        "corrections": sum(info.get("corrections", 0) for info in export.weights.values()),
        "export_bytes": file_bytes, "dense_bytes": export.dense_bytes(), "ratio": file_bytes / export.dense_bytes(),
        "journal_bytes": folder_bytes(scratch / "journal"),
        "edit_seconds": edit_seconds, "export_seconds": export_seconds, "apply_seconds": apply_seconds,
        "bit_exact": fresh.state_hash() == model.state_hash(),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| editor (mode) | edits | weights | stored as | export bytes | changed weights whole | ratio | journal bytes | export s | apply s | bit-exact |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        form = "factors" if r["forms"] == ["factors"] else "+".join(r["forms"]) or "–"
        if form == "factors":
            form += f" (rank {r['rank']}" + (f", {r['corrections']} corrected entries)" if r["corrections"] else ")")
        lines.append(
            f"| {r['editor']} ({r['mode']}) | {r['edits']} | {r['weights']} | {form} | {r['export_bytes']:,} | "
            f"{r['dense_bytes']:,} | {r['ratio']:.3f} | {r['journal_bytes']:,} | {r['export_seconds']:.2f} | {r['apply_seconds']:.2f} | "
            f"{'yes' if r['bit_exact'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="wide", help="The shipped world model.")
    parser.add_argument("--cases", default=DEFAULT_CASES, help="EDITOR:MODE:EDITS,... (default: %(default)s).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="Write the results as JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = parse_cases(args.cases)

    _, world, folder = load_world_model(args.model)
    config_path = Path(__file__).resolve().parent / CONFIGS[args.model]
    requests = world_requests(world, "test", max(edits for _, _, edits in cases), 0)
    rows = []
    for editor, mode, edits in cases:
        options = load_configs(config_path, sequential=mode == "sequential")[editor]
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(measure(folder, requests[:edits], editor, mode, options, Path(scratch)))
        print(rows[-1], flush=True)
    print(table(rows))
    if args.out:
        write_json(args.out, {"environment": environment(args), "rows": rows})


if __name__ == "__main__":
    main()
