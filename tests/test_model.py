"""The model handle: loading, hashing, batched generation, teacher-forced predictions."""

import pytest
import torch

from easyetcon.errors import EasyEtconError, UnknownNameError
from easyetcon.model import load_model
from easyetcon.testing import tiny_model, tiny_torch_model


@pytest.fixture
def saved_model(tmp_path):
    model, tokenizer = tiny_torch_model("llama", seed=3)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_load_model_from_a_folder_with_dtype(toy_host, saved_model):
    model = load_model(saved_model, dtype="bfloat16")
    assert model.adapter.name == "llama"
    assert next(model.torch_model.parameters()).dtype == torch.bfloat16


def test_load_model_errors(toy_host, tmp_path, saved_model):
    with pytest.raises(EasyEtconError, match="not found: no folder"):
        load_model(tmp_path / "absent")
    with pytest.raises(EasyEtconError, match="unknown dtype 'float33'"):
        load_model(saved_model, dtype="float33")


def test_state_hash_sees_a_single_changed_number(toy_host):
    model = tiny_model(registry=toy_host.registry)
    before = model.state_hash()
    name = model.adapter.weight_name("mlp_out", 1)
    with torch.no_grad():
        model.parameter(name)[0, 0] += 1e-3
    assert model.state_hash() != before
    with pytest.raises(UnknownNameError, match="did you mean"):
        model.parameter(name.replace("down_proj", "down_prj"))


def test_batched_generation_equals_one_prompt_at_a_time(toy_host):
    model = tiny_model("gpt2", registry=toy_host.registry)
    prompts = ["The Eiffel Tower is", "Question: Where is the Colosseum? Answer:", "Berlin"]
    batched = model.generate(prompts, max_new_tokens=6, stop=())
    single = [model.generate([p], max_new_tokens=6, stop=())[0] for p in prompts]
    assert batched == single
    assert model.tokenizer.padding_side == "right"  # restored after generation


def test_answers_are_encoded_with_a_leading_space_and_no_bos(toy_host):
    model = tiny_model(registry=toy_host.registry)
    assert model.encode_answer("Paris") == model.encode_answer(" Paris")
    assert model.tokenizer.decode(model.encode_answer("Paris")) == " Paris"
    assert model.tokenizer.bos_token_id not in model.encode_answer("Paris")


def test_prompt_rewriters_apply_in_order_and_can_be_bypassed(toy_host):
    model = tiny_model(registry=toy_host.registry)
    model.add_prompt_rewriter("a", lambda ps: [p + " A" for p in ps])
    model.add_prompt_rewriter("b", lambda ps: [p + " B" for p in ps])
    assert model.rewrite_prompts(["x"]) == ["x A B"]
    expected, predicted_plain = model.target_token_predictions("x", "Paris", use_memory=False)
    assert len(expected) == len(predicted_plain)
    model.remove_prompt_rewriter("a")
    assert model.rewrite_prompts(["x"]) == ["x B"]


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_rank_updates_are_done_in_row_blocks_with_the_bits_of_the_whole(rank, dtype, monkeypatch):
    from easyetcon import records

    torch.manual_seed(0)
    weight = torch.randn(37, 11).to(dtype)
    original = weight.clone()
    left, right = torch.randn(37, rank), torch.randn(rank, 11)
    whole = (weight.double() + left.double() @ right.double()).to(dtype)
    monkeypatch.setattr(records, "LOW_RANK_BLOCK_ELEMENTS", 50)  # blocks of 4 rows
    blocked = records.add_low_rank_to(weight, left, right)
    assert torch.equal(blocked.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       whole.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
    in_place = weight.clone()
    records.add_low_rank_to(in_place, left, right, out=in_place)
    assert torch.equal(in_place, blocked)
    assert torch.equal(weight, original)  # the input is untouched without out=
