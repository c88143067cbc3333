"""The hookspecs module is the documented contract: every hook explains itself."""

import inspect

import pytest

from easyetcon import hookspecs

HOOKS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if name.startswith("easyetcon_") and callable(fn)
]


def test_there_is_a_registration_hook_per_family_and_part():
    names = {name for name, _ in HOOKS}
    for expected in (
        "easyetcon_register_memory_editors",
        "easyetcon_register_merging_editors",
        "easyetcon_register_intrinsic_editors",
        "easyetcon_register_consolidators",
        "easyetcon_register_datasets",
        "easyetcon_register_metrics",
        "easyetcon_register_rewards",
        "easyetcon_register_model_adapters",
        "easyetcon_before_step",
        "easyetcon_after_step",
        "easyetcon_step_error",
    ):
        assert expected in names


@pytest.mark.parametrize("name,hook", HOOKS, ids=[n for n, _ in HOOKS])
def test_every_hook_documents_when_each_argument_and_return(name, hook):
    doc = inspect.getdoc(hook)
    assert doc, f"{name} has no docstring"
    assert "called" in doc.lower(), f"{name}'s docstring does not say when it is called"
    for parameter in inspect.signature(hook).parameters:
        assert f":param {parameter}:" in doc, f"{name} does not document argument {parameter!r}"
    assert ":returns:" in doc, f"{name} does not document its return value"
