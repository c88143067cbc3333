"""Rebuild a shipped world model: ``python -m easyetcon_world.build_default [--model wide]``.

Pretrains preset ``default`` (seed 0) with the shipped model's recipe, measures its knowledge on
every fact, and writes model, tokenizer, ``world.json``, ``knowledge.json``, ``build_info.json``
and the manifest into ``easyetcon_world/assets/<model>/``. Deterministic for a given machine and
torch version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from easyetcon_world.knowledge import below_floors, floors_of, headline, measure_knowledge
from easyetcon_world.pretraining import record_knowledge, save_model_directory, train_model
from easyetcon_world.shipped import (
    DEFAULT_PRESET,
    DEFAULT_SEED,
    SHIPPED_MODELS,
    shipped_model_path,
    shipped_train_config,
)
from easyetcon_world.world import build_world


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="default", choices=list(SHIPPED_MODELS), help="which shipped model"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="target directory (default: the shipped one)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.out is None:
        args.out = shipped_model_path(args.model)
    world = build_world(DEFAULT_PRESET, DEFAULT_SEED)
    config = shipped_train_config(args.model)
    print(f"world: {world.summary()}", flush=True)
    wall, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = train_model(world, config, progress=True)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu

    staging = args.out.with_name(args.out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    save_model_directory(staging, model, tokenizer, world, config, seconds=train_wall)
    started = time.perf_counter()
    numbers = measure_knowledge(model, tokenizer, world)
    build_info = {
        "command": "python -m easyetcon_world.build_default"
        + (f" --model {args.model}" if args.model != "default" else "")
        + (f" --threads {args.threads}" if args.threads else ""),
        "train_wall_seconds": round(train_wall, 1),
        "train_cpu_seconds": round(train_cpu, 1),
        "measure_seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (staging / "build_info.json").write_text(json.dumps(build_info, indent=1))
    record_knowledge(staging, numbers)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(staging, args.out)

    print(json.dumps(build_info, indent=1))
    floors = floors_of(numbers)
    for name, value in headline(numbers).items():
        floor = floors.get(name)
        shown = "-" if value is None else f"{value:.3f}"
        print(f"{name:34s} {shown}" + (f"  (floor {floor:.2f})" if floor else ""))
    failed = below_floors(numbers)
    if failed:
        print(f"below the floor: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
