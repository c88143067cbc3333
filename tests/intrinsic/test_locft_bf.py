"""LocFT-BF: FT-M in the breadth-first pipeline (shuffled mini-batches over passes) with EOS-ended targets."""

import torch
from easyetcon_intrinsic.ft import mini_batches

from easyetcon.chain import EditChain
from easyetcon.plugins import get_host
from easyetcon.testing import tiny_model
from easyetcon.testing.tiny import tiny_learnable_requests
from easyetcon.text import IGNORE_INDEX, build_target_batch


def test_every_pass_visits_every_request_once_in_a_new_order():
    plan = mini_batches(10, 3, passes=4, seed=0)
    assert [len(steps) for steps in plan] == [4] * 4  # 3 + 3 + 3 + 1
    for steps in plan:
        assert sorted(i for step in steps for i in step) == list(range(10))
    assert len({tuple(i for step in steps for i in step) for steps in plan}) > 1  # reshuffled
    assert plan == mini_batches(10, 3, passes=4, seed=0) != mini_batches(10, 3, passes=4, seed=1)
    assert mini_batches(5, None, passes=2, seed=0) == [[[0, 1, 2, 3, 4]]] * 2  # FT-L / FT-M: one step, every request


def test_targets_can_end_with_the_end_of_sequence_token_which_the_loss_counts():
    model = tiny_model("llama", registry=get_host().registry)
    request = tiny_learnable_requests()[0]
    plain = build_target_batch(model.tokenizer, [request.prompt], [request.target_new])
    ended = build_target_batch(model.tokenizer, [request.prompt], [request.target_new], append_eos=True)
    assert ended.target_ids[0] == plain.target_ids[0] + [model.tokenizer.eos_token_id]
    labelled = ended.labels[0][ended.labels[0] != IGNORE_INDEX].tolist()
    assert labelled[-1] == model.tokenizer.eos_token_id


def test_a_mini_batch_is_its_rows_cut_to_the_longest():
    model = tiny_model("llama", registry=get_host().registry)
    prompts, targets = ["a b c d e f g h", "a b"], ["c", "d"]
    batch = build_target_batch(model.tokenizer, prompts, targets)
    short = batch.rows([1])
    alone = build_target_batch(model.tokenizer, prompts[1:], targets[1:])
    assert torch.equal(short.input_ids, alone.input_ids) and torch.equal(short.labels, alone.labels)
    assert short.target_positions == alone.target_positions


def run_counting_batches(options):
    """Apply locft-bf to three requests in one call; the sizes of the mini-batches its loss saw."""
    model = tiny_model("llama", registry=get_host().registry)
    requests = tiny_learnable_requests()[:3]
    chain = EditChain([("locft-bf", {"learning_rate": 0.05, "layers": [-1], "batch_size": 2, **options})])
    editor_class = type(chain.steps[0].editor)
    real, seen = editor_class.token_weights, []

    def counting(self, logits, batch):
        seen.append(batch.input_ids.shape[0])
        return real(self, logits, batch)

    editor_class.token_weights = counting
    before = model.state_hash()
    try:
        chain.apply(model, requests, mode="batch")
    finally:
        editor_class.token_weights = real
    return model, requests, seen, before


def test_locft_bf_trains_every_pass_in_mini_batches_and_edits_the_batch():
    model, requests, seen, _ = run_counting_batches({"steps": 30, "stop_loss": None})
    assert seen == [2, 1] * 30  # two mini-batches per pass, the remainder last
    assert all(model.predicts(r.prompt, r.target_new) for r in requests)


def test_a_pass_whose_every_step_is_below_the_stop_loss_ends_training():
    model, _, seen, before = run_counting_batches({"steps": 30, "stop_loss": 100.0})
    assert len(seen) == 2  # one pass, both mini-batches skipped
    assert model.state_hash() == before
