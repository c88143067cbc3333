"""The locate-then-edit options in their sections (``key:``, ``value:``), and the flat keys of 0.1."""

import json
import warnings
from pathlib import Path

import pytest
from easyetcon_eval.lifelong import describe_chain, same_chain

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.locate import FlatOptionsWarning, KeyOptions, ValueOptions
from easyetcon.plugins import get_host

LOCATE_EDITORS = ("rome", "memit", "alphaedit", "emmet")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def create(name, options):
    return get_host().registry.editor(name).create(options)


@pytest.mark.parametrize("name", LOCATE_EDITORS)
def test_flat_keys_still_load_into_their_sections_with_a_warning_naming_them(name):
    with pytest.warns(FlatOptionsWarning, match=r"flat option keys are read until easyetcon 0.3; write prefixes under 'key:'; steps under 'value:'"):
        flat = create(name, {"steps": 7, "prefixes": 2})
    nested = create(name, {"value": {"steps": 7}, "key": {"prefixes": 2}})
    assert flat.config == nested.config


def test_an_option_given_flat_and_in_its_section_is_an_error_naming_it():
    with pytest.raises(ConfigError, match=r"\['steps'\] are given both flat and under 'value:'"):
        create("memit", {"steps": 3, "value": {"steps": 4}})


def test_each_editor_keeps_its_papers_defaults_and_the_shared_bounds_inside_the_sections():
    defaults = {name: create(name, {}).config.value for name in LOCATE_EDITORS}
    assert (defaults["rome"].clamp_norm_factor, defaults["memit"].clamp_norm_factor) == (4.0, 0.75)
    assert (defaults["alphaedit"].learning_rate, defaults["alphaedit"].clamp_norm_factor) == (0.1, 0.75)
    # a section given in part keeps the editor's defaults for the rest
    assert create("alphaedit", {"value": {"steps": 3}}).config.value.learning_rate == 0.1
    for name in LOCATE_EDITORS:
        with pytest.raises(ConfigError, match="clamp_norm_factor"):
            create(name, {"value": {"clamp_norm_factor": 0}})
        with pytest.raises(ConfigError, match="unknown_option"):
            create(name, {"key": {"unknown_option": 1}})
    assert set(type(defaults["memit"]).model_fields) == set(ValueOptions.model_fields)


def test_a_run_recorded_with_flat_keys_is_the_same_chain_as_its_sections():
    chain = EditChain([("rome", {"layer": 0, "value": {"steps": 7}, "key": {"prefixes": 2}})])
    recorded = describe_chain(chain)
    flat = {**{k: v for k, v in recorded[0]["config"].items() if k not in ("key", "value")},
            **recorded[0]["config"]["key"], **recorded[0]["config"]["value"]}
    assert set(flat) >= set(KeyOptions.model_fields)
    assert same_chain([{**recorded[0], "config": flat}], chain)
    assert not same_chain([{**recorded[0], "config": {**flat, "steps": 8}}], chain)
    assert not same_chain([{**recorded[0], "config": {**flat, "no_such_option": 1}}], chain)


@pytest.mark.parametrize("configs", ["intrinsic_configs.json", "intrinsic_configs_wide.json"])
def test_the_benchmarks_tuned_options_are_written_in_sections(configs):
    data = json.loads((BENCHMARKS / configs).read_text(encoding="utf-8"))
    entries = {name: options for name, options in data.items() if name.split("@")[0] in LOCATE_EDITORS}
    assert entries
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatOptionsWarning)
        for name, options in entries.items():
            create(name.split("@")[0], options)
