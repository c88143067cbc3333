"""`easyetcon demo`'s table shows every probe the locality score counts."""

from easyetcon.requests import EditRequest, Probe
from easyetcon_eval.demo import demo_probes


def test_the_demo_table_lists_every_locality_probe_wanting_its_answer_unchanged():
    request = EditRequest(
        prompt="Ada Stone lives in", subject="Ada Stone", target_new="Lima", case_id="fw-0",
        rephrase_prompts=["The home of Ada Stone is", "Ada Stone's city is"],
        locality=[
            Probe(prompt="Ada Stone works as", answer="a baker", kind="same-subject"),
            Probe(prompt="Ada Stone was born in", answer="1970", kind="same-subject"),
            Probe(prompt="Bo Marsh lives in", answer="Oslo", kind="other-subject"),
        ],
    )
    rows = demo_probes([request, request.model_copy(update={"case_id": "fw-1", "locality": []})])
    assert rows[:5] == [
        ("edit", "Ada Stone lives in", "Lima"),
        ("rephrase", "The home of Ada Stone is", "Lima"),
        ("locality: same-subject", "Ada Stone works as", None),
        ("locality: same-subject", "Ada Stone was born in", None),
        ("locality: other-subject", "Bo Marsh lives in", None),
    ]
    assert [kind for kind, _, _ in rows[5:]] == ["edit", "rephrase"]  # a request without probes shows none
