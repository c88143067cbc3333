"""The shipped world models: present, intact, plain to load, and knowledgeable."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from easyetcon_world import (
    SHIPPED_MODELS,
    WorldCacheError,
    build_world,
    default_model_path,
    default_train_config,
    load_pretrained,
    make_edit_requests,
    measure_knowledge,
    shipped_model_path,
    shipped_train_config,
    world_model_folder,
)
from easyetcon_world.knowledge import FLOORS, headline, teacher_forced_correct
from easyetcon_world.pretraining import verify_directory


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # generation is many small matmuls: on a shared 2-core machine one thread is several times faster
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped():
    directory = default_model_path()
    assert (directory / "model.safetensors").is_file(), (
        "the shipped default model is missing; run `python -m easyetcon_world.build_default`"
    )
    return load_pretrained(directory)


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_shipped_directory_is_intact_small_and_matches_the_generator(name):
    directory = shipped_model_path(name)
    assert verify_directory(directory) == []
    megabytes = sum(p.stat().st_size for p in directory.iterdir()) / 2**20
    assert megabytes < 20, f"{megabytes:.1f} MB"
    world = json.loads((directory / "world.json").read_text())
    assert world["config"]["preset"] == "default"
    # if world generation or the recipe changed, the shipped model no longer fits: rebuild it
    assert build_world("default", world["config"]["seed"]).model_dump(mode="json") == world
    stored = json.loads((directory / "train_config.json").read_text())["train"]
    assert stored == shipped_train_config(name).model_dump(mode="json")


def test_the_default_model_is_built_with_the_presets_recipe_and_wide_only_widens_it():
    assert shipped_train_config("default") == default_train_config("default")
    wide, default = shipped_train_config("wide"), default_train_config("default")
    assert (wide.hidden_size, wide.intermediate_size) == (192, 1536)
    assert wide.layers == default.layers and wide.vocab_size == default.vocab_size


def test_shipped_models_are_found_by_name_and_folders_pass_through(tmp_path):
    assert world_model_folder(None) == default_model_path()
    assert world_model_folder("wide") == shipped_model_path("wide")
    assert world_model_folder(str(tmp_path)) == tmp_path
    with pytest.raises(WorldCacheError, match="'huge'.*default, wide"):
        shipped_model_path("huge")


def test_a_missing_shipped_model_names_the_rebuild_command(monkeypatch, tmp_path):
    import easyetcon_world.shipped as shipped_module

    monkeypatch.setattr(shipped_module, "shipped_model_path", lambda name="default": tmp_path / name)
    with pytest.raises(WorldCacheError, match="build_default --model wide"):
        load_pretrained("wide")


@pytest.mark.parametrize("name", sorted(SHIPPED_MODELS))
def test_stored_full_measurement_of_every_shipped_model_meets_the_floors(name):
    stored = headline(json.loads((shipped_model_path(name) / "knowledge.json").read_text()))
    for measure, floor in FLOORS.items():
        assert stored[measure] >= floor, (name, measure, stored[measure])


def test_plain_auto_classes_load_it_in_float32():
    model = AutoModelForCausalLM.from_pretrained(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("Hello", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size


def test_knowledge_on_a_sample_meets_the_floors(shipped):
    model, tokenizer, world = shipped
    numbers = headline(measure_knowledge(model, tokenizer, world, sample=100, seed=1))
    for name, floor in FLOORS.items():
        assert numbers[name] >= floor, (name, numbers[name])


def test_it_answers_from_a_fact_stated_in_front_of_the_prompt(shipped):
    """What in-context editing (retrieval memory) needs; the full measurement is 0.958 / 0.963 / 0.901."""
    from easyetcon_world.knowledge import measure_in_context

    model, tokenizer, world = shipped
    numbers = measure_in_context(model, tokenizer, world, sample=100, seed=1)
    assert numbers["override"] >= 0.85 and numbers["override_heldout"] >= 0.85
    assert numbers["ignored"] >= 0.75


def test_model_holds_the_old_fact_of_edit_requests_and_not_the_new_one(shipped):
    model, tokenizer, world = shipped
    requests = make_edit_requests(world, "test", n=60, seed=0)
    prompts = [r.prompt for r in requests]
    old = teacher_forced_correct(model, tokenizer, prompts, [r.ground_truth for r in requests])
    new = teacher_forced_correct(model, tokenizer, prompts, [r.target_new for r in requests])
    assert sum(old) >= 0.95 * len(requests)
    assert sum(new) == 0
