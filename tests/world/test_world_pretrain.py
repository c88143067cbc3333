"""Pretraining cache, tokenizer and the from-scratch model directory (a few training steps only)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import easyetcon_world.pretraining as pretrain_module
from easyetcon_world import (
    TrainConfig,
    WorldCacheError,
    WorldConfigError,
    build_world,
    default_train_config,
    load_world,
    pretrain,
)
from easyetcon_world.pretraining import (
    cache_key,
    cache_root,
    require_intact,
    verify_directory,
)

# A few optimizer steps: these tests check plumbing, not knowledge.
QUICK = TrainConfig(
    hidden_size=32,
    layers=1,
    heads=2,
    intermediate_size=64,
    vocab_size=1024,
    block_size=64,
    batch_size=2,
    epochs=1,
    max_steps=2,
    warmup_steps=0,
)


@pytest.fixture(scope="module")
def tiny():
    return build_world("tiny", seed=0)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYETCON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "worlds"


def test_cache_location_follows_the_environment_variable(cache, tiny):
    assert cache_root() == cache
    assert cache_key(tiny, QUICK) != cache_key(tiny, QUICK.model_copy(update={"epochs": 2}))
    assert cache_key(tiny, QUICK) != cache_key(build_world("tiny", seed=1), QUICK)


def test_second_pretrain_loads_from_cache_without_training(cache, tiny, monkeypatch):
    directory = pretrain(tiny, QUICK, progress=False)
    assert directory.parent == cache and verify_directory(directory) == []

    def no_training(*args, **kwargs):
        raise AssertionError("the cached model should have been reused")

    monkeypatch.setattr(pretrain_module, "train_model", no_training)
    assert pretrain(tiny, QUICK, progress=False) == directory


def test_truncated_weights_are_detected_and_rebuilt(cache, tiny):
    directory = pretrain(tiny, QUICK, progress=False)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert any("model.safetensors" in p for p in verify_directory(directory))
    with pytest.warns(UserWarning, match="damaged"):
        rebuilt = pretrain(tiny, QUICK, progress=False)
    assert rebuilt == directory and verify_directory(rebuilt) == []
    AutoModelForCausalLM.from_pretrained(rebuilt)


@pytest.mark.parametrize("damage", ["delete-tokenizer", "edit-world", "delete-manifest"])
def test_missing_or_modified_files_are_detected(cache, tiny, damage):
    directory = pretrain(tiny, QUICK, progress=False)
    if damage == "delete-tokenizer":
        (directory / "tokenizer.json").unlink()
    elif damage == "edit-world":
        (directory / "world.json").write_text("{}")
    else:
        (directory / "manifest.json").unlink()
    assert verify_directory(directory)
    with pytest.raises(WorldCacheError, match="damaged"):
        require_intact(directory)


def test_model_directory_loads_with_plain_auto_classes(cache, tiny):
    directory = pretrain(tiny, QUICK, progress=False)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == QUICK.hidden_size
    assert (
        tokenizer.bos_token == "<bos>"
        and tokenizer.eos_token == "<eos>"
        and tokenizer.pad_token == "<pad>"
    )
    assert load_world(directory).fingerprint() == tiny.fingerprint()
    assert json.loads((directory / "train_config.json").read_text())["train"]["epochs"] == 1


def test_tokenizer_encodes_any_text_and_names_are_short_with_a_leading_space(cache, tiny):
    tokenizer = AutoTokenizer.from_pretrained(pretrain(tiny, QUICK, progress=False))
    text = "Ünïcode, emoji 🙂 and 中文 are outside the world"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    for city in tiny.entities["city"]:
        pieces = tokenizer.convert_ids_to_tokens(
            tokenizer(" " + city, add_special_tokens=False)["input_ids"]
        )
        assert pieces[0].startswith("Ġ") and len(pieces) <= 3, pieces


def test_training_is_reproducible(tiny):
    first, _ = pretrain_module.train_model(tiny, QUICK, progress=False)
    second, _ = pretrain_module.train_model(tiny, QUICK, progress=False)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert a.equal(b), name


def test_recipe_of_unknown_preset_and_bad_shape_are_config_errors(tiny):
    with pytest.raises(WorldConfigError, match="default"):
        default_train_config("medium")
    with pytest.raises(WorldConfigError, match="heads"):
        pretrain_module.build_model(QUICK.model_copy(update={"heads": 5}), None)


def test_world_build_command_trains_caches_and_prints_knowledge(cache, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from easyetcon_world.plugin import world_group

    monkeypatch.setattr(pretrain_module, "default_train_config", lambda preset: QUICK)
    runner = CliRunner()
    first = runner.invoke(
        world_group,
        ["build", "--preset", "tiny", "--cache-dir", str(tmp_path / "c"), "--sample", "5"],
    )
    assert first.exit_code == 0, first.output
    assert str(tmp_path / "c") in first.output.replace("\n", "")
    assert "heldout_phrasings" in first.output and "multi_hop_reasoning" in first.output
    built = list((tmp_path / "c").iterdir())
    assert len(built) == 1 and verify_directory(built[0]) == []


def test_train_options_change_the_recipe_and_bad_ones_are_named():
    import click

    from easyetcon_world.plugin import with_train_options

    changed = with_train_options(QUICK, ["intermediate_size=96", "corpus.context_updates=0.25", "lr=0.001"])
    assert (changed.intermediate_size, changed.corpus.context_updates, changed.lr) == (96, 0.25, 0.001)
    assert with_train_options(QUICK, []) == QUICK
    for bad, named in [
        ("width=3", "unknown option 'width'"),
        ("corpus.copies=2", "unknown option 'corpus.copies'"),
        ("lr.x=1", "'lr' has no options"),
        ("intermediate_size", "not KEY=VALUE"),
        ("epochs=-1", "epochs"),
        ("corpus.context_updates=2", "context_updates"),
    ]:
        with pytest.raises(click.BadParameter, match=named.replace("(", r"\(")):
            with_train_options(QUICK, [bad])


def test_world_build_with_a_train_option_caches_a_model_of_that_shape(cache, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from easyetcon_world.plugin import world_group

    monkeypatch.setattr(pretrain_module, "default_train_config", lambda preset: QUICK)
    result = CliRunner().invoke(
        world_group,
        ["build", "--preset", "tiny", "--cache-dir", str(tmp_path / "c"), "--sample", "5",
         "--train-option", "intermediate_size=80"],
    )
    assert result.exit_code == 0, result.output
    (built,) = (tmp_path / "c").iterdir()
    assert json.loads((built / "config.json").read_text())["intermediate_size"] == 80
    bad = CliRunner().invoke(world_group, ["build", "--preset", "tiny", "--train-option", "width=3"])
    assert bad.exit_code != 0 and "unknown option 'width'" in bad.output


@pytest.mark.slow
def test_tiny_recipe_learns_its_world_including_heldout_phrasings(cache, tiny):
    import torch

    from easyetcon_world import headline, load_pretrained, measure_knowledge
    from easyetcon_world.knowledge import FLOORS, IN_CONTEXT_FLOORS

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # about 40 s on one thread; two threads on a busy machine are slower
    try:
        model, tokenizer, world = load_pretrained(pretrain(tiny, progress=False))
        numbers = headline(measure_knowledge(model, tokenizer, world))
    finally:
        torch.set_num_threads(before)
    # the tiny recipe is for tests: it learns the facts, not yet to use a fact stated in front
    # (in-context override about 0.2); the shipped recipes meet the in-context floors too
    for name, floor in FLOORS.items():
        if name not in IN_CONTEXT_FLOORS:
            assert numbers[name] >= floor, (name, numbers[name])
