"""Tiny random-weight models of every supported architecture, built offline from
``transformers`` configs, with a small byte-level BPE tokenizer trained on the spot."""

from __future__ import annotations

import functools
from typing import Any

import torch

from easyetcon.requests import EditRequest, Probe

TINY_CORPUS = [
    "The Eiffel Tower is located in the city of Paris.",
    "The Colosseum is located in the city of Rome.",
    "Danielle Darrieux speaks the language French.",
    "The mother tongue of Danielle Darrieux is French.",
    "Toko Yasuda plays the instrument guitar.",
    "Apple was founded by Steve Jobs in California.",
    "Question: Where is the Eiffel Tower? Answer: <answer> Paris </answer>",
    "Berlin London Madrid Tokyo Vienna Oslo Lisbon Athens Cairo Lima Quito",
    "piano violin guitar trumpet English German Spanish Italian Japanese",
]

ARCHITECTURES = ("llama", "gpt2", "gpt-neox", "gpt-j", "qwen2", "qwen3", "mistral")

#: A ChatML chat template (Qwen2's layout) that also writes the BOS token, as Llama 3's does.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (any text encodes) wrapped as PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def tiny_config(architecture: str, vocab_size: int) -> Any:
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    llama_like = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, **common,
    )
    configs = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "qwen3": lambda: tf.Qwen3Config(head_dim=8, **llama_like),
        "gpt2": lambda: tf.GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=128, **common),
        "gpt-neox": lambda: tf.GPTNeoXConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=128, **common,
        ),
        "gpt-j": lambda: tf.GPTJConfig(n_embd=32, n_layer=3, n_head=4, n_positions=128, rotary_dim=4, **common),
    }
    if architecture not in configs:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}")
    return configs[architecture]()


def tiny_torch_model(architecture: str = "llama", *, seed: int = 0) -> tuple[Any, Any]:
    """``(model, tokenizer)`` with random weights, deterministic in ``seed``."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(architecture, len(tokenizer)))
    model.eval()
    return model, tokenizer


def tiny_model(architecture: str = "llama", *, seed: int = 0, registry: Any = None, chat_template: bool = False) -> Any:
    """An :class:`easyetcon.EditableModel` around a tiny random model; with ``chat_template`` its
    tokenizer has :data:`TINY_CHAT_TEMPLATE`, so the model is asked in chat form by default."""
    from easyetcon.model import EditableModel

    model, tokenizer = tiny_torch_model(architecture, seed=seed)
    if chat_template:
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return EditableModel(model, tokenizer, registry=registry, source=f"tiny-{architecture}")


def tiny_requests() -> list[EditRequest]:
    """Three counterfactual requests whose words the tiny tokenizer knows (their targets span
    several tokens; :func:`tiny_learnable_requests` are the ones a tiny model can be edited with)."""
    return [
        EditRequest(
            prompt="The Eiffel Tower is located in the city of",
            subject="The Eiffel Tower",
            target_new="Rome",
            ground_truth="Paris",
            rephrase_prompts=["Where is the Eiffel Tower? It is in"],
            locality=[Probe(prompt="The Colosseum is located in the city of", answer="Rome")],
            relation="located_in",
            case_id="tiny-0",
        ),
        EditRequest(
            prompt="The mother tongue of Danielle Darrieux is",
            subject="Danielle Darrieux",
            target_new="English",
            ground_truth="French",
            relation="native_language",
            case_id="tiny-1",
        ),
        EditRequest(
            prompt="Toko Yasuda plays the instrument",
            subject="Toko Yasuda",
            target_new="piano",
            ground_truth="guitar",
            relation="plays",
            case_id="tiny-2",
        ),
    ]


def tiny_learnable_requests() -> list[EditRequest]:
    """Three requests every editor can teach a tiny random model: the conformance suite's default.

    Each target is one token of the tiny tokenizer (``" Paris"``, ``" guitar"``, ``" French"``),
    different from the others, so an editor that writes one request's target into another's
    prompt fails. Each prompt ends with its subject, and the three end on different tokens: a
    random 3-layer model barely moves information between positions, so a change written at the
    subject's last token (ROME, MEMIT, AlphaEdit) reaches the output only from there,
    and prompts that end alike would look the same to it.
    """
    return [
        EditRequest(
            prompt="The mother tongue of Danielle Darrieux",
            subject="Danielle Darrieux",
            target_new="Paris",
            ground_truth="French",
            relation="native_language",
            case_id="learnable-0",
        ),
        EditRequest(
            prompt="Where is the Eiffel Tower",
            subject="Eiffel Tower",
            target_new="guitar",
            ground_truth="Paris",
            relation="located_in",
            case_id="learnable-1",
        ),
        EditRequest(
            prompt="The instrument of Toko Yasuda",
            subject="Toko Yasuda",
            target_new="French",
            ground_truth="guitar",
            relation="plays",
            case_id="learnable-2",
        ),
    ]
