"""The chain specs shipped in examples/chains validate against the registered editors."""

from pathlib import Path

import pytest

from easyetcon.plugins import PluginHost
from easyetcon.spec import load_chain_spec

CHAINS = sorted((Path(__file__).parent.parent / "examples" / "chains").glob("*.yaml"))


def test_the_etcon_chain_and_its_hybrids_are_shipped():
    names = {path.stem for path in CHAINS}
    assert {"etcon", "tpsft", "ft-m-grpo", "rome-grpo", "alphaedit-grpo", "lora-merge-grpo"} <= names


@pytest.mark.parametrize("path", CHAINS, ids=[p.stem for p in CHAINS])
def test_shipped_chain_spec_validates(path, monkeypatch):
    monkeypatch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
    _, chain = load_chain_spec(path, host=PluginHost())
    assert chain.steps


def test_the_shipped_etcon_chain_edits_the_shipped_world_model(tmp_path, monkeypatch):
    """End to end: etcon.yaml (TPSFT and GRPO, both with `preserve`) on the fact world's model
    makes free generation give the new object, and a fact about someone else stays."""
    from easyetcon_eval import compute_baseline, evaluate_edits
    from easyetcon_world import default_model_path, load_world, make_edit_requests

    from easyetcon.model import load_model

    monkeypatch.delenv("EASYETCON_BLOCK_PLUGINS", raising=False)
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path))  # the key statistics are computed here
    host = PluginHost()
    _, chain = load_chain_spec(Path(__file__).parent.parent / "examples" / "chains" / "etcon.yaml", host=host)
    folder = str(default_model_path())
    model = load_model(folder, registry=host.registry)
    requests = make_edit_requests(load_world(folder), "tune", n=1, seed=0)
    baseline = compute_baseline(model, requests, protocols=("generation",))
    chain.apply(model, requests, mode="sequential")
    scores = evaluate_edits(model, requests, protocols=("generation",), baseline=baseline).summary()["generation@1"]
    assert scores["reliability"] == 1.0
    assert scores["locality"] == 1.0
