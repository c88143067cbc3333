"""The taxonomy registry, queried by family and subfamily."""

import pytest

from easyetcon.errors import ConfigError, UnknownNameError
from easyetcon.registry import Family


def test_query_by_family_and_subfamily(toy_host):
    registry = toy_host.registry
    assert [e.name for e in registry.editors("intrinsic")] == ["toy-shift"]
    assert [e.name for e in registry.editors(Family.MEMORY)] == ["toy-notes"]
    assert [e.name for e in registry.editors("memory", subfamily="retrieval")] == ["toy-notes"]
    assert registry.editors("merging") == []
    assert [e.name for e in registry.editors()] == ["toy-notes", "toy-shift"]  # family order


def test_unknown_editor_lists_known_ones_by_family(toy_host):
    with pytest.raises(UnknownNameError) as caught:
        toy_host.registry.editor("rome")
    message = str(caught.value)
    assert "'rome'" in message and "intrinsic: toy-shift" in message and "external-memory: toy-notes" in message


def test_unknown_family_lists_valid_ones():
    with pytest.raises(ConfigError, match="consolidation"):
        Family.parse("intrinsics")


def test_options_are_validated_with_every_field_error(toy_host):
    info = toy_host.registry.editor("toy-shift")
    with pytest.raises(ConfigError) as caught:
        info.create({"amount": -1, "layre": 2})
    assert len(caught.value.problems) == 2
    assert any("amount" in p for p in caught.value.problems)
    assert any("layre" in p for p in caught.value.problems)
    assert info.create(amount=2.0).config.amount == 2.0
