"""`layer: trace` / `layers: trace` says which layers it chose, on the easyetcon logger the
command line shows."""

import logging

from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.locate.layers import resolve_layers
from tests.intrinsic.helpers import subject_final_requests


def test_tracing_reports_the_chosen_layers_and_the_effects_behind_them(caplog):
    model = tiny_model("llama", registry=get_host().registry)
    with caplog.at_level(logging.INFO, logger="easyetcon.intrinsic"):
        chosen = resolve_layers(model, "trace", subject_final_requests(), count=2, option="layers")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "easyetcon.intrinsic"]
    assert line.startswith(f"layers: trace chose layers {chosen[0]}-{chosen[1]} ")
    assert "on request(s) end-0, end-1" in line
    assert all(f"{layer}: " in line for layer in range(3))  # the effect of every layer of the tiny model


def test_explicit_and_automatic_layers_say_nothing(caplog):
    model = tiny_model("llama", registry=get_host().registry)
    with caplog.at_level(logging.INFO, logger="easyetcon.intrinsic"):
        resolve_layers(model, "auto", subject_final_requests(), count=1, option="layer")
        resolve_layers(model, [1], subject_final_requests(), count=1, option="layer")
    assert not [r for r in caplog.records if r.name == "easyetcon.intrinsic"]
