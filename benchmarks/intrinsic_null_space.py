"""How much room AlphaEdit's null space leaves on a model: a diagnostic for lifelong editing.

    python benchmarks/intrinsic_null_space.py --layer 3 --requests 300 --threads 1 \\
        --out benchmarks/results/intrinsic_null_space.json

For the edit keys of ``--requests`` fact-world test requests (the MLP output projection's input
at the fact token) and the layer's key statistics (the world corpus, as the editors use them),
reports per fact token and energy fraction: the dimension of the null space, the share of a
key's norm that lies in it (``|Pk| / |k|``), and the mean cosine between keys of different
subjects for the same relation, before and after projection. Every edit writes into the null
space; once edits have filled it, preserved keys read back what was written there in
proportion to their share of norm in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from intrinsic_common import environment, load_world_model, parse_run_arguments, run_arguments, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--fractions", default="0.99,0.999", help="energy fractions the null space leaves out")
    parser.add_argument("--samples", type=int, default=8000, help="statistics samples (as in intrinsic_configs.json)")
    run_arguments(parser)
    args = parse_run_arguments(parser, argv)

    from easyetcon.statistics import LayerStatistics, StatisticsConfig
    from easyetcon.activations import activations_at
    from easyetcon.locate.keys import fact_positions
    from easyetcon.locate.solve import nullspace_projector
    from easyetcon_world import make_edit_requests

    model, world, folder = load_world_model(args.model)
    requests = make_edit_requests(world, "test", n=args.requests, seed=0)
    module = model.adapter.module(model.torch_model, "mlp_out", args.layer)
    moment = LayerStatistics(StatisticsConfig(source="world", samples=args.samples, progress=False)).get(model, [args.layer])
    moment = moment[args.layer].mom2.double()
    relations = [r.relation for r in requests]
    same = torch.tensor([[a == b for b in relations] for a in relations]) & ~torch.eye(len(relations), dtype=torch.bool)
    rows = []
    for token in ("last", "subject_last"):
        prompts = [r.prompt for r in requests]
        positions = fact_positions(model.tokenizer, prompts, [r.subject for r in requests], [r.request_id for r in requests], token)
        keys = activations_at(model, module, prompts, positions, which="input").double()
        for fraction in (float(f) for f in args.fractions.split(",")):
            projector = nullspace_projector(moment, rule="energy", energy_fraction=fraction, threshold=1e-2).double()
            projected = keys @ projector

            def mean_cosine(vectors: torch.Tensor) -> float:
                unit = torch.nn.functional.normalize(vectors, dim=1)
                return float((unit @ unit.T)[same].mean())

            rows.append({
                "fact_token": token, "energy_fraction": fraction, "key_dims": keys.shape[1],
                "null_dims": int(torch.linalg.matrix_rank(projector)),
                "null_share_of_key_norm": float((projected.norm(dim=1) / keys.norm(dim=1)).mean()),
                "cosine_same_relation": mean_cosine(keys), "cosine_same_relation_projected": mean_cosine(projected),
            })
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    write_json(args.out, {"environment": environment(args), "model": folder, "layer": args.layer, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
