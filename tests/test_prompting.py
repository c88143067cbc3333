"""Prompt formats (the WILD study's context types): how a model is asked, applied wherever a
prompt becomes model input and recorded with every score."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from easyetcon.chain import EditChain
from easyetcon.cli import cli
from easyetcon.errors import ConfigError, JournalError
from easyetcon.prompting import PromptFormat
from easyetcon.requests import save_requests
from easyetcon.spec import parse_chain_spec
from easyetcon.testing import tiny_model, tiny_requests, tiny_torch_model
from easyetcon.testing.tiny import TINY_CHAT_TEMPLATE, tiny_tokenizer

PROMPT = "The Eiffel Tower is located in the city of"


def chat_model(**kwargs):
    return tiny_model("llama", chat_template=True, **kwargs)


def inputs_read(model, call):
    """The decoded rows of every forward pass ``call()`` makes."""
    read = []

    def record(_module, args, kwargs):
        read.append(kwargs.get("input_ids", args[0] if args else None))

    handle = model.torch_model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return [model.tokenizer.decode(row) for ids in read if ids is not None for row in ids]


# ---- the format ------------------------------------------------------------------------------


def test_auto_asks_in_chat_form_exactly_when_the_tokenizer_has_a_chat_template():
    assert chat_model().prompt_format.context == "chat"
    assert tiny_model("llama").prompt_format.context == "question"
    assert tiny_model("llama").format_prompt(PROMPT) == PROMPT


def test_chat_without_a_chat_template_names_the_option():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="prompt_format.context 'chat'.*no chat template"):
        model.prompt_format = "chat"
    with pytest.raises(ConfigError, match="prompt_format is invalid") as error:
        model.prompt_format = "dialogue"
    assert "field 'context'" in str(error.value.problems)
    assert model.prompt_format.context == "question"  # unchanged


def test_each_context_puts_the_prompt_where_it_says():
    model = chat_model()
    assert model.format_prompt(PROMPT) == f"<|endoftext|><|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    model.prompt_format = {"context": "chat", "system": "Be brief."}
    assert model.format_prompt(PROMPT).startswith("<|endoftext|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")
    model.prompt_format = {"context": "instruction", "instruction": "Answer: {prompt} (one word)"}
    assert model.format_prompt(PROMPT) == f"Answer: {PROMPT} (one word)"
    model.prompt_format = "question"
    assert model.format_prompt(PROMPT) == PROMPT


def test_an_instruction_needs_the_prompt_field_once_and_a_spec_names_it():
    with pytest.raises(ConfigError, match="prompt_format.instruction.*exactly once"):
        parse_chain_spec({"prompt_format": {"context": "instruction", "instruction": "Answer:"}, "chain": [{"editor": "ft-m"}]})
    with pytest.raises(ConfigError, match="prompt_format.context"):
        parse_chain_spec({"prompt_format": {"context": "dialogue"}, "chain": [{"editor": "ft-m"}]})
    spec, _ = parse_chain_spec({"prompt_format": {"context": "chat", "system": "Hi."}, "chain": [{"editor": "ft-m"}]})
    assert spec.prompt_format == PromptFormat(context="chat", system="Hi.")


def bos_adding_tokenizer():
    """The tiny tokenizer, adding BOS as Llama's does."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = tiny_tokenizer()
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", tokenizer.bos_token_id)]
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize("adds_bos", [False, True], ids=["no-bos-added", "bos-added"])
def test_the_formatted_text_encodes_to_the_chat_templates_ids_with_one_bos(adds_bos):
    tokenizer = bos_adding_tokenizer() if adds_bos else tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    assert (tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id) == adds_bos
    text = PromptFormat(context="chat").apply(tokenizer, PROMPT)
    expected = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tokenizer(text)["input_ids"] == list(expected)
    assert tokenizer(text)["input_ids"].count(tokenizer.bos_token_id) == 1


# ---- where it applies --------------------------------------------------------------------------


def test_generation_and_teacher_forcing_read_the_formatted_prompt_and_raw_text_is_left_alone():
    model = chat_model()
    asked = model.format_prompt(PROMPT)
    # generation's first pass reads the whole prompt (later ones, the cached tokens' successors)
    assert inputs_read(model, lambda: model.generate([PROMPT], max_new_tokens=2))[0].startswith(asked)
    assert inputs_read(model, lambda: model.predicts(PROMPT, "Rome"))[0].startswith(asked)
    assert inputs_read(model, lambda: model.generate([PROMPT], max_new_tokens=2, raw=True))[0].startswith(PROMPT)


def test_a_memory_rewrites_the_plain_prompt_and_the_format_wraps_what_it_returns():
    model = chat_model()
    model.add_prompt_rewriter("facts", lambda prompts: [f"New fact: the tower is in Rome. {p}" for p in prompts])
    read = inputs_read(model, lambda: model.generate([PROMPT], max_new_tokens=1))
    assert read[0].startswith(model.format_prompt(f"New fact: the tower is in Rome. {PROMPT}"))
    assert model.as_asked([PROMPT], use_memory=False) == [model.format_prompt(PROMPT)]


def test_an_edit_made_in_chat_form_is_made_on_the_chat_prompt():
    """FT-M fitted in chat form lowers the target's NLL after the chat prompt (what the evaluator
    asks) more than after the plain prompt, and the other way round."""
    from easyetcon.testing.conformance import target_fit

    request = tiny_requests()[0]

    def nll_asked(model, context):
        model.prompt_format = context
        return target_fit(model, request.prompt, request.target_new)[0]

    gains = {}
    for edited_in in ("chat", "question"):
        model = chat_model()
        before = {context: nll_asked(model, context) for context in ("chat", "question")}
        model.prompt_format = edited_in
        EditChain([("ft-m", {"steps": 15, "learning_rate": 0.02, "layers": [1]})]).apply(model, [request])
        gains[edited_in] = {context: before[context] - nll_asked(model, context) for context in before}
    # on a random model much of any fit is the target's unconditional rise; the rest is the form's
    assert gains["chat"]["chat"] > gains["chat"]["question"] + 0.1
    assert gains["question"]["question"] > gains["question"]["chat"] + 0.1


# ---- recorded with every score -------------------------------------------------------------------


def test_scores_carry_the_format_in_their_keys_and_settings():
    from easyetcon_eval.evaluate import compute_baseline, evaluate_edits

    requests = tiny_requests()[:1]
    model = chat_model()
    result = evaluate_edits(model, requests, max_new_tokens=4)
    assert set(result.summary()) == {"teacher-forced@1[chat]", "generation@1[chat]"}
    assert result.settings["prompt_format"] == {"context": "chat"}
    model.prompt_format = {"context": "instruction", "instruction": "Q: {prompt}"}
    baseline = compute_baseline(model, requests, max_new_tokens=4)
    assert baseline.settings["prompt_format"] == {"context": "instruction", "instruction": "Q: {prompt}"}
    model.prompt_format = "question"
    plain = evaluate_edits(model, requests, max_new_tokens=4)
    assert set(plain.summary()) == {"teacher-forced@1", "generation@1"}  # unchanged for plain prompts
    with pytest.raises(Exception, match="baseline was asked with prompt format"):
        evaluate_edits(model, requests, max_new_tokens=4, baseline=baseline)


def test_a_lifelong_run_resumes_only_with_the_format_it_was_started_with(tmp_path):
    from easyetcon_eval.lifelong import run_lifelong

    chain = EditChain([("ft-m", {"steps": 2, "learning_rate": 0.01, "layers": [1]})])
    options = dict(schedule="end", max_new_tokens=4, out_dir=tmp_path / "run", progress=False, report=False, baseline=False)
    result = run_lifelong(chat_model(), chain, tiny_requests()[:2], **options)
    assert result.settings["prompt_format"] == {"context": "chat"}
    model = chat_model()
    model.prompt_format = "question"
    with pytest.raises(JournalError, match="prompt format .*chat.*same prompt_format"):
        run_lifelong(model, chain, tiny_requests()[:2], **options)


# ---- the command line ----------------------------------------------------------------------------


@pytest.fixture
def saved_models(tmp_path):
    for name, template in (("plain", None), ("chat", TINY_CHAT_TEMPLATE)):
        model, tokenizer = tiny_torch_model("llama")
        tokenizer.chat_template = template
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    save_requests(tiny_requests()[:1], tmp_path / "requests.json")
    (tmp_path / "chain.yaml").write_text("chain:\n  - editor: ft-m\n    steps: 1\n    layers: [1]\n")
    return tmp_path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_edit_records_the_format_and_context_overrides_the_spec(saved_models):
    out = saved_models / "run"
    result = run("edit", "--model", saved_models / "chat", "--chain", saved_models / "chain.yaml",
                 "--data", saved_models / "requests.json", "--out", out)
    assert result.exit_code == 0, result.output
    shown = json.loads(run("journal", out, "--json").output)
    assert shown["metadata"]["prompt_format"] == {"context": "chat"}

    out = saved_models / "run-question"
    result = run("edit", "--model", saved_models / "chat", "--chain", saved_models / "chain.yaml", "--context", "question",
                 "--data", saved_models / "requests.json", "--out", out)
    assert result.exit_code == 0, result.output
    assert json.loads(run("journal", out, "--json").output)["metadata"]["prompt_format"] == {"context": "question"}


def test_edit_in_chat_form_without_a_template_fails_clearly_and_writes_nothing(saved_models):
    out = saved_models / "refused"
    result = run("edit", "--model", saved_models / "plain", "--chain", saved_models / "chain.yaml", "--context", "chat",
                 "--data", saved_models / "requests.json", "--out", out)
    assert result.exit_code == 2 and "no chat template" in result.output
    assert not out.exists()
