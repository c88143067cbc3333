"""AnyEdit's edit against locality on the tune split: the base MEMIT's covariance_weight, and AlphaEdit as base.

    python benchmarks/anyedit_tradeoff.py --threads 1 --out benchmarks/results/anyedit_fact_world_covariance_weight_tune.json

Starts from the AnyEdit options that ``anyedit_fact_world.py`` chose (read from its results,
``--chosen``) and scores, with that benchmark's functions, single long-form edits of the same tune
requests: MEMIT's ``covariance_weight`` λ at 100, 1000, 10000, 100000 and 300, then AlphaEdit with
its shipped options (``intrinsic_configs.json``, keys AnyEdit's) as the base. Tune split only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from anyedit_fact_world import run_editor, unedited_locality  # noqa: E402
from intrinsic_common import DEFAULT_CONFIGS, RESULTS, load_configs, load_world_model, merge_options, write_json  # noqa: E402

WEIGHTS = (100.0, 1000.0, 10000.0, 100000.0, 300.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chosen", type=Path, default=RESULTS / "anyedit_fact_world.json", help="anyedit_fact_world.py's results")
    parser.add_argument("--tune", type=int, default=12, help="tune requests")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from easyetcon_world import make_edit_requests

    model, world, _ = load_world_model(None)
    chosen = json.loads(args.chosen.read_text(encoding="utf-8"))["tuning"]["anyedit"]["chosen"]
    alphaedit = {name: value for name, value in load_configs(DEFAULT_CONFIGS)["alphaedit"].items() if name != "key"}
    tune = make_edit_requests(world, "tune", args.tune, 0, long_form=2)
    unedited = unedited_locality(model, tune)
    runs = {f"memit, covariance_weight {weight:g}": merge_options(chosen, {"base": {"covariance_weight": weight}}) for weight in WEIGHTS}
    runs["alphaedit (shipped options)"] = {"chunks": chosen["chunks"], "base": {"editor": "alphaedit", **alphaedit}}
    output = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "split": "tune", "n": len(tune), "runs": {}}
    for label, options in runs.items():
        started = time.perf_counter()
        summary = run_editor(model, tune, "anyedit", options, unedited)["summary"]
        output["runs"][label] = {"options": options, "summary": summary}
        write_json(args.out, output)
        print(f"{label}: exact {summary['exact']:.3f}, token share {summary['token_share']:.3f}, "
              f"locality {summary['locality']:.3f} ({time.perf_counter() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
