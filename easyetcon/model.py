"""The model handle every editor receives: a Hugging Face causal LM, its tokenizer, its
architecture adapter, and the external memories attached to it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from easyetcon.adapters import ArchitectureAdapter, resolve_adapter
from easyetcon.devices import execution_device, state_tensors
from easyetcon.errors import ConfigError, EasyEtconError, UnknownNameError
from easyetcon.hub import HUB_ID
from easyetcon.prompting import PromptFormat
from easyetcon.text import pad_id_of, pad_rows

PromptRewriter = Callable[[list[str]], list[str]]
#: ``end(text, index) -> int | None``: where the continuation of prompt ``index`` ends.
AnswerEnd = Callable[[str, int], "int | None"]


def _first_stop_string(markers: tuple[str, ...]) -> AnswerEnd:
    def end(text: str, index: int) -> int | None:
        found = [text.index(m) for m in markers if m in text]
        return min(found) if found else None

    return end


class _RowsEnded:
    """Stopping criterion: a row is done once its decoded continuation has ended."""

    def __init__(self, tokenizer: Any, prompt_width: int, rows: list[int], end_of: AnswerEnd) -> None:
        self.tokenizer, self.prompt_width, self.rows, self.end_of = tokenizer, prompt_width, rows, end_of
        self.done = [False] * len(rows)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        for r, index in enumerate(self.rows):
            if not self.done[r]:
                text = self.tokenizer.decode(input_ids[r, self.prompt_width :], skip_special_tokens=True)
                self.done[r] = self.end_of(text, index) is not None
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


def _stopping_list(criteria: _RowsEnded) -> Any:
    from transformers import StoppingCriteriaList

    return StoppingCriteriaList([criteria])


class EditableModel:
    """A causal LM prepared for editing.

    ``torch_model`` is the ``transformers`` model (edited in place), ``tokenizer`` its tokenizer,
    ``adapter`` the :class:`~easyetcon.adapters.ArchitectureAdapter` found from its class or
    structure. External-memory editors keep their :class:`~easyetcon.records.MemoryStore` in
    ``memories`` and may register *prompt rewriters* (in-context editing) that :meth:`generate`
    and the evaluators apply before the model sees a prompt. ``prompt_format`` (a
    :class:`~easyetcon.prompting.PromptFormat`, resolved for the tokenizer) is how the model is
    asked: :meth:`format_prompt` puts a prompt in its context, after any rewriting.
    """

    def __init__(
        self,
        torch_model: nn.Module,
        tokenizer: Any,
        *,
        adapter: ArchitectureAdapter | None = None,
        registry: Any = None,
        source: str | None = None,
    ) -> None:
        if adapter is None:
            if registry is None:
                from easyetcon.plugins import get_host

                registry = get_host().registry
            adapter = resolve_adapter(torch_model, registry)
        self.torch_model = torch_model
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.source = source
        self.memories: dict[str, Any] = {}
        #: memory store name -> the editor whose retrieval behaviour is attached for it
        self.attached_memories: dict[str, Any] = {}
        self._prompt_rewriters: dict[str, PromptRewriter] = {}
        self._low_rank_listeners: list[Callable[[str, torch.Tensor, torch.Tensor], None]] = []
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None):
            tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad token
        self.prompt_format = PromptFormat()

    # ---- how the model is asked ---------------------------------------------------------------
    @property
    def prompt_format(self) -> PromptFormat:
        """The context every prompt is asked in (never ``auto``: resolved when set)."""
        return self._prompt_format

    @prompt_format.setter
    def prompt_format(self, value: PromptFormat | dict[str, Any] | str) -> None:
        from pydantic import ValidationError

        from easyetcon.registry import format_field_errors

        try:
            if isinstance(value, str):
                value = PromptFormat(context=value)
            elif isinstance(value, dict):
                value = PromptFormat.model_validate(value)
        except ValidationError as error:
            raise ConfigError("prompt_format is invalid", format_field_errors(error, prefix="prompt_format: ")) from None
        self._prompt_format = value.resolved(self.tokenizer)

    def format_prompt(self, prompt: str) -> str:
        """``prompt`` as the model is asked it (see :mod:`easyetcon.prompting`)."""
        return self._prompt_format.apply(self.tokenizer, prompt)

    # ---- weights ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where token ids go: the device the input embeddings compute on. With a ``device_map``
        the blocks may sit elsewhere; a tensor made for one module goes on that module's
        :func:`~easyetcon.devices.execution_device` instead."""
        try:
            embeddings = self.adapter.embed_module(self.torch_model)
        except (AttributeError, NotImplementedError):  # no embeddings the adapter can name
            embeddings = self.torch_model
        return execution_device(embeddings)

    def parameter(self, name: str) -> nn.Parameter:
        """The parameter called ``name``; an error lists close names when it does not exist."""
        try:
            return self.torch_model.get_parameter(name)
        except AttributeError:
            import difflib

            close = difflib.get_close_matches(name, [n for n, _ in self.torch_model.named_parameters()], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"{type(self.torch_model).__name__} has no parameter {name!r}{hint}") from None

    def add_low_rank(self, name: str, left: torch.Tensor, right: torch.Tensor) -> None:
        """``W ← W + left @ right`` on parameter ``name`` (in its own storage layout: ``left`` is
        ``(rows, r)``, ``right`` ``(r, cols)``), computed in fp64 and cast back to its dtype.

        Editors whose update is low-rank (ROME, MEMIT, AlphaEdit) write through this method so
        the chain can record the two factors instead of the whole new tensor: the journal then
        stores a rank-one edit of a 14336 × 4096 projection in 73 KB, not 117 MB. The chain
        checks that re-applying the factors reproduces the new weights bit for bit and falls
        back to storing the whole tensor where it does not.
        """
        from easyetcon.records import add_low_rank_to

        parameter = self.parameter(name)
        left, right = left.detach(), right.detach()
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[0] or (left.shape[0], right.shape[1]) != tuple(parameter.shape):
            raise ValueError(
                f"low-rank update {tuple(left.shape)} @ {tuple(right.shape)} does not fit parameter "
                f"{name!r} of shape {tuple(parameter.shape)}"
            )
        if not (torch.isfinite(left).all() and torch.isfinite(right).all()):
            raise FloatingPointError(f"the update of {name!r} is not finite; lower the learning rate or add a ridge")
        with torch.no_grad():
            add_low_rank_to(parameter.detach(), left, right, out=parameter.detach())
        for listener in list(self._low_rank_listeners):
            listener(name, left, right)

    def state_hash(self) -> str:
        """SHA-256 over every parameter and buffer, in name order: equal hashes, equal weights."""
        digest = hashlib.sha256()
        for name, tensor in sorted(state_tensors(self.torch_model).items()):
            digest.update(name.encode())
            digest.update(str(tensor.dtype).encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # ---- external memory --------------------------------------------------------------------
    def memory_store(self, key: str) -> Any:
        """The :class:`~easyetcon.records.MemoryStore` called ``key``, created on first use."""
        from easyetcon.records import MemoryStore

        if key not in self.memories:
            self.memories[key] = MemoryStore(key)
        return self.memories[key]

    def add_prompt_rewriter(self, key: str, rewriter: PromptRewriter) -> None:
        """Install ``rewriter`` (a function from prompts to prompts) under ``key``, replacing any
        earlier one with that key."""
        self._prompt_rewriters[key] = rewriter

    def remove_prompt_rewriter(self, key: str) -> None:
        self._prompt_rewriters.pop(key, None)

    def rewrite_prompts(self, prompts: Sequence[str]) -> list[str]:
        """Apply the installed prompt rewriters in installation order."""
        prompts = list(prompts)
        for rewriter in self._prompt_rewriters.values():
            prompts = rewriter(prompts)
        return prompts

    def as_asked(self, prompts: Sequence[str], *, use_memory: bool = True) -> list[str]:
        """What the model reads for ``prompts``: rewritten by the memories (unless
        ``use_memory=False``), then formatted."""
        prompts = self.rewrite_prompts(prompts) if use_memory else list(prompts)
        return [self.format_prompt(p) for p in prompts]

    # ---- text in, text out ------------------------------------------------------------------
    def encode_answer(self, answer: str) -> list[int]:
        """Token ids of ``answer`` as it continues a prompt: with one leading space, no BOS."""
        text = answer if answer.startswith(" ") else " " + answer
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 24,
        stop: Sequence[str] | AnswerEnd = ("\n",),
        batch_size: int = 32,
        use_memory: bool = True,
        raw: bool = False,
    ) -> list[str]:
        """Greedy continuations of ``prompts``, batched and left-padded so each equals decoding
        its prompt alone.

        ``stop`` ends a row early and cuts its text: stop strings (the text is cut before the
        first one), or a function ``end(text, index) -> int | None`` giving where the continuation
        of prompt ``index`` ends (``None``: not yet). Decoding also stops at end of sequence and
        after ``max_new_tokens``. External memories apply unless ``use_memory=False``; the prompt
        format applies after them. ``raw=True`` continues the texts as they are (no memory, no
        format): the model as a language model, for sampling text.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        prompts = list(prompts)
        if not prompts:
            return []
        end_of = stop if callable(stop) else _first_stop_string(tuple(s for s in stop if s))
        encoded = [self.tokenizer(p)["input_ids"] for p in (prompts if raw else self.as_asked(prompts, use_memory=use_memory))]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # little padding per batch
        pad_id = pad_id_of(self.tokenizer)
        outputs = [""] * len(prompts)
        model = self.torch_model
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_rows([encoded[i] for i in rows], pad_id, side="left")
                width = input_ids.shape[1]
                criteria = _RowsEnded(self.tokenizer, width, rows, end_of)
                generated = model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id,
                    stopping_criteria=_stopping_list(criteria),
                )
                texts = self.tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
                for i, text in zip(rows, texts):
                    end = end_of(text, i)
                    outputs[i] = text if end is None else text[:end]
        finally:
            model.train(was_training)
        return outputs

    @torch.no_grad()
    def target_token_predictions(self, prompt: str, answer: str, *, use_memory: bool = True) -> tuple[list[int], list[int]]:
        """Teacher forcing: the answer's token ids and the model's argmax at each of their positions."""
        prompt = self.as_asked([prompt], use_memory=use_memory)[0]
        prompt_ids = self.tokenizer(prompt)["input_ids"]
        answer_ids = self.encode_answer(answer)
        input_ids = torch.tensor([prompt_ids + answer_ids], device=self.device)
        logits = self.torch_model(input_ids=input_ids).logits[0]
        positions = range(len(prompt_ids) - 1, len(prompt_ids) + len(answer_ids) - 1)
        predicted = [int(logits[p].argmax()) for p in positions]
        return answer_ids, predicted

    def predicts(self, prompt: str, answer: str, *, use_memory: bool = True) -> bool:
        """Whether teacher-forced argmax reproduces every token of ``answer`` after ``prompt``."""
        expected, predicted = self.target_token_predictions(prompt, answer, use_memory=use_memory)
        return expected == predicted

    # ---- saving ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Save weights (safetensors) and tokenizer with ``save_pretrained``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.torch_model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)


def resolve_model_source(name_or_path: str | Path, *, registry: Any = None) -> str:
    """What ``from_pretrained`` should read for ``name_or_path``: a registered model name's folder
    (``easyetcon_register_models``: e.g. ``default``, ``wide``), an existing local folder, or a
    hub id ``owner/name``. Anything else fails here, at once, naming the absolute path it tried,
    instead of after the hub's retries."""
    if registry is None:
        from easyetcon.plugins import get_host

        registry = get_host().registry
    source = str(name_or_path)
    names = {part.name: part for part in registry.parts("model")}
    local = Path(source).expanduser()
    if source in names and not local.is_dir():
        return str(names[source].obj())
    if local.is_dir():
        return str(local)
    if local.exists():
        raise EasyEtconError(f"model {source!r}: {str(local.absolute())!r} is a file; pass the model's folder")
    path_like = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    if HUB_ID.match(source) and not path_like:
        return source
    known = ", ".join(sorted(names)) or "none registered"
    raise EasyEtconError(
        f"model {source!r} not found: no folder {str(local.absolute())!r}"
        + ("" if path_like else f", and it is neither a model name ({known}) nor a hub id (owner/name)")
    )


def load_model(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    prompt_format: PromptFormat | dict[str, Any] | str | None = None,
    registry: Any = None,
    **from_pretrained_kwargs: Any,
) -> EditableModel:
    """Load any Hugging Face causal LM and its tokenizer: a registered model name (``default``,
    ``wide``, ...), a local folder or a hub id (:func:`resolve_model_source`).

    ``dtype`` (``"float32"``, ``"bfloat16"``, ... or a torch dtype) and ``device_map``
    (``"auto"`` spreads a large model over the visible GPUs with accelerate) are passed through.
    ``prompt_format`` (a :class:`~easyetcon.prompting.PromptFormat`, its fields, or a context name
    such as ``"chat"``) is how the model is asked; by default ``auto``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = str(name_or_path)
    path = resolve_model_source(source, registry=registry)
    if isinstance(dtype, str):
        if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise EasyEtconError(f"unknown dtype {dtype!r}; use float32, float16, bfloat16 or auto")
        dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    kwargs = dict(from_pretrained_kwargs)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch_model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model = EditableModel(torch_model, tokenizer, registry=registry, source=path)
    if prompt_format is not None:
        model.prompt_format = prompt_format
    return model
