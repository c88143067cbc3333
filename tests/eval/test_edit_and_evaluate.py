"""edit_and_evaluate: EasyEdit's BaseEditor.edit in one call (scores before, edit, scores after)."""

from __future__ import annotations

import pytest

from easyetcon.chain import EditChain
from easyetcon.errors import ConfigError
from easyetcon.testing import tiny_model, tiny_requests
from easyetcon_eval import edit_and_evaluate, evaluate_edits

@pytest.fixture(autouse=True)
def eval_host(eval_host):
    """The evaluation tests' host, with the intrinsic editors (FT-M edits here)."""
    import easyetcon_intrinsic.plugin

    eval_host.register(easyetcon_intrinsic.plugin, name="intrinsic")
    return eval_host


FT = [("ft-m", {"steps": 20, "learning_rate": 0.05, "layers": [1]})]
SCORING = dict(protocols=("teacher-forced",), max_new_tokens=4)


def test_single_mode_edits_each_request_alone_and_leaves_the_model_unchanged():
    model = tiny_model("llama")
    original = model.state_hash()
    requests = tiny_requests()
    report = edit_and_evaluate(model, FT, requests, mode="single", **SCORING)
    assert model.state_hash() == original and report.result is None
    assert [row["request_id"] for row in report.per_request] == [r.request_id for r in requests]
    # each request's "post" is what a fresh edit of that request alone gives
    for request, row in zip(requests, report.per_request):
        alone = tiny_model("llama")
        EditChain(FT).apply(alone, [request])
        expected = evaluate_edits(alone, [request], **SCORING).per_request[0]["teacher-forced@1"]["reliability"]
        assert row["post"]["teacher-forced@1"]["reliability"] == expected
    post, pre = report.post["teacher-forced@1"], report.pre["teacher-forced@1"]
    assert post["reliability"] > pre["reliability"] and post["n"] == len(requests)
    assert pre["locality"] == 1.0  # the unedited model agrees with itself


@pytest.mark.parametrize("mode", ["sequential", "batch"])
def test_sequential_and_batch_modes_keep_the_edits_and_undo_them_bit_exactly(mode, tmp_path):
    model = tiny_model("llama")
    original = model.state_hash()
    report = edit_and_evaluate(model, FT, tiny_requests(), mode=mode, journal=tmp_path / "journal", **SCORING)
    assert model.state_hash() != original
    now = evaluate_edits(model, tiny_requests(), **SCORING).summary()["teacher-forced@1"]
    assert report.post["teacher-forced@1"]["reliability"] == now["reliability"]  # scored after every edit
    assert report.settings["mode"] == mode and report.settings["prompt_format"] == {"context": "question"}
    assert (tmp_path / "journal" / "journal.jsonl").is_file()
    report.result.undo(model)
    assert model.state_hash() == original


def test_bad_arguments_are_named_before_anything_runs():
    model = tiny_model("llama")
    original = model.state_hash()
    with pytest.raises(ConfigError, match="mode 'each'"):
        edit_and_evaluate(model, FT, tiny_requests(), mode="each")
    with pytest.raises(ConfigError, match="nothing to journal"):
        edit_and_evaluate(model, FT, tiny_requests(), mode="single", journal="j")
    with pytest.raises(Exception, match="record 0: field 'target_new'"):
        edit_and_evaluate(model, FT, [{"prompt": "p", "subject": "p"}])
    assert model.state_hash() == original
