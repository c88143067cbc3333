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
