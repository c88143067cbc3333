"""wise: a side memory beside one FFN value matrix, with a router (WISE, Wang et al., NeurIPS 2024).

The *main memory* is the model's own FFN output projection ``W`` (the value matrix) of one
layer; it never changes. A *side memory* is a copy ``W + D`` of it, and edits go only there.
At the layer, an input with FFN activations ``a`` (the projection's input) gets the *activation
score* ``||a D^T||`` per token, the size of the difference between the side and main outputs;
a row's score is its largest over tokens that are neither padding nor special (BOS). The
*router* sends a row through the side memory (``output + a D^T``) when its score is above the
memory's threshold, else through the main memory untouched (bit-identical output); a cached
decoding step keeps the routing its prompt got.

Each edit trains ``D`` by SGD on the target's NLL plus the paper's margin terms: the edit's
score (at its prompt's last token) above ``edit_margin`` (β), scores of irrelevant prompts
below ``irrelevant_margin`` (α) and the edit's at least ``gap_margin`` (γ) above theirs. The
threshold is ``threshold_ratio`` times the smallest score of the memory's edits, all scored
again after each edit.

*Knowledge sharding*: edits come in shards of ``edits_per_shard``; each shard trains its own
``D`` from zero under a random mask (a share ``mask_ratio`` of the matrix's entries, only
those get gradient). Every ``shards_per_merge`` full shards are merged TIES-style (trim to
the ``merge_density`` largest entries, elect each entry's sign, average the agreeing ones)
into one side memory, whose threshold is set again from its edits' scores. Like EasyEdit's
default (WISE-Retrieve), every merge is kept as its own side memory and the router picks,
per row, the memory with the highest score above its threshold.

Store entries: a shard keeps its mask's seed and the values at the masked positions (a share
``mask_ratio`` of the matrix; rewritten on each of its edits, so the journal grows by that
much per edit); a merged memory keeps its dense ``D`` once. Both keep their edits (prompt,
target) and threshold in their data, so undo, the journal and saved memories need nothing
WISE-specific.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from easyetcon.adapters import ArchitectureAdapter
from easyetcon.errors import JournalError
from easyetcon.records import MemoryEntry, MemoryStore
from easyetcon.requests import EditRequest
from easyetcon.text import build_target_batch, pad_id_of, pad_rows
from easyetcon.training import masked_token_nll, trainable_only
from easyetcon_memory.storage import StoreCache

HOOKS_ATTRIBUTE = "_easyetcon_wise_hooks"  # on the hooked module: store name -> hook handle
TRAINING_ATTRIBUTE = "_easyetcon_wise_training"  # on the hooked module while a shard trains: routers stand aside

#: Prompts the margin loss keeps below the threshold when no others are given (everyday text).
DEFAULT_IRRELEVANT_PROMPTS = (
    "The weather today is",
    "Water boils at a temperature of",
    "My favourite colour is",
    "The quick brown fox jumps over the",
)


class WiseConfig(BaseModel):
    """Options of ``wise`` (defaults: EasyEdit's hparams/WISE for Llama-2-7B)."""

    model_config = ConfigDict(extra="forbid")

    layer: int | None = Field(
        default=None, description="the block whose MLP output projection gets the side memory (negative counts "
        "from the end); None: the block at 27/32 of the depth, where the paper edits Llama-2-7B"
    )
    mask_ratio: float = Field(default=0.2, gt=0, le=1, description="share of the side memory's entries each shard trains (ρ)")
    learning_rate: float = Field(default=1.0, gt=0, description="SGD learning rate of the side memory (edit_lr)")
    steps: int = Field(default=70, ge=1, le=10_000, description="SGD steps per edit (n_iter)")
    norm_bound: float = Field(default=1.0, gt=0, description="each side-memory entry stays within this of the main weight's (norm_constraint)")
    irrelevant_margin: float = Field(default=5.0, ge=0, description="α: irrelevant prompts' scores are pushed below this")
    edit_margin: float = Field(default=20.0, ge=0, description="β: the edit's score is pushed above this")
    gap_margin: float = Field(default=10.0, ge=0, description="γ: the edit's score is pushed this far above irrelevant ones")
    threshold_ratio: float = Field(default=0.88, gt=0, le=1, description="threshold = this × the smallest score of the memory's edits (act_ratio)")
    edits_per_shard: int = Field(default=500, ge=1, description="edits trained into one shard under one mask (save_freq)")
    shards_per_merge: int = Field(default=2, ge=1, description="full shards merged into one side memory (merge_freq / save_freq)")
    merge_density: float = Field(default=0.53, gt=0, le=1, description="share of each shard's entries TIES merging keeps (densities)")
    irrelevant_prompts: list[str] = Field(
        default=list(DEFAULT_IRRELEVANT_PROMPTS), min_length=1,
        description="prompts unrelated to any edit, kept below the threshold by the margin loss",
    )
    seed: int = Field(default=0, ge=0, description="seed of the shards' random masks")

    @model_validator(mode="after")
    def _prompts_not_blank(self) -> WiseConfig:
        if any(not p.strip() for p in self.irrelevant_prompts):
            raise ValueError("irrelevant_prompts: every prompt needs text")
        return self


@dataclass
class SideMemories:
    """The store's side memories stacked for the forward hook: ``deltas`` (n, out, in), thresholds (n,)."""

    deltas: torch.Tensor
    thresholds: torch.Tensor
    on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]]

    def tensors_for(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if (device, dtype) not in self.on_device:
            self.on_device[(device, dtype)] = (self.deltas.to(device=device, dtype=dtype), self.thresholds.to(device))
        return self.on_device[(device, dtype)]

    def scores(self, inputs: torch.Tensor, valid: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(contributions (n, batch, seq, out), scores (n, batch))``: each memory's change of
        the output and each row's largest token score over its ``valid`` (unpadded) tokens."""
        deltas, _ = self.tensors_for(inputs.device, dtype)
        contributions = torch.einsum("...i,noi->n...o", inputs.to(dtype), deltas)
        token_scores = contributions.float().norm(dim=-1)
        if valid is not None:
            token_scores = token_scores.masked_fill(~valid, 0.0)
        return contributions, token_scores.amax(dim=-1)

    def route(self, inputs: torch.Tensor, outputs: torch.Tensor, valid: torch.Tensor | None, state: dict[str, Any]) -> torch.Tensor | None:
        """``outputs`` with each row that some memory's score passes its threshold for sent
        through the best-scoring memory; ``None`` when every row stays with the main memory.
        A forward of one token per row (cached decoding) keeps the routing of the forward
        before it, so a generated answer stays with the memory its prompt chose."""
        contributions, scores = self.scores(inputs, valid, outputs.dtype)
        _, thresholds = self.tensors_for(outputs.device, outputs.dtype)
        passing = torch.where(scores > thresholds[:, None], scores, torch.full_like(scores, -1.0))
        best_score, best = passing.max(dim=0)
        routed = best_score >= 0
        previous = state.get("routing")
        if inputs.shape[1] == 1 and previous is not None and previous[0].shape == routed.shape:
            routed, best = routed | previous[0], torch.where(previous[0], previous[1], best)
        state["routing"] = (routed, best)
        if not bool(routed.any()):
            return None
        chosen = contributions[best, torch.arange(best.numel(), device=best.device)]
        return torch.where(routed[:, None, None], outputs + chosen, outputs)


class Wise:
    """The ``wise`` editor (see the module docstring)."""

    def __init__(self, config: WiseConfig) -> None:
        self.config = config
        self._memories: weakref.WeakKeyDictionary[MemoryStore, StoreCache] = weakref.WeakKeyDictionary()

    def _module(self, model: Any) -> torch.nn.Module:
        count = model.adapter.num_layers(model.torch_model)
        layer = self.config.layer if self.config.layer is not None else (count * 27) // 32
        model.adapter.check_layer(model.torch_model, layer)
        return model.adapter.module(model.torch_model, "mlp_out", layer % count)

    def side_memories(self, store: MemoryStore) -> SideMemories | None:
        """The store's side memories stacked (cached until the store changes)."""
        def build(items: list[tuple[str, MemoryEntry]]) -> SideMemories | None:
            if not items:
                return None
            deltas = torch.stack([self.delta_of(entry) for _, entry in items])
            thresholds = torch.tensor([float(entry.data["threshold"]) for _, entry in items])
            return SideMemories(deltas, thresholds, {})

        return self._memories.setdefault(store, StoreCache()).get(store, build)

    def routing(self, model: Any, store: MemoryStore, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores (n_memories, n_prompts), thresholds (n_memories,))`` of the store's side
        memories for ``prompts``: a prompt goes through the best memory whose score beats its
        threshold, else through the main weights."""
        memories = self.side_memories(store)
        if memories is None:
            return torch.zeros(0, len(prompts)), torch.zeros(0)
        return prompt_scores(model, self._module(model), memories, prompts), memories.thresholds.clone()

    # ---- the MemoryEditor protocol -------------------------------------------------------------
    def attach(self, model: Any, store: MemoryStore) -> None:
        """Install the router on the layer's output projection (replacing an earlier one for this store)."""
        module = self._module(model)
        state: dict[str, Any] = {}

        special = _special_ids(model)

        def remember_tokens(_model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            state["input_ids"] = kwargs.get("input_ids", args[0] if args else None)
            state["attention_mask"] = kwargs.get("attention_mask")

        def route(_module: torch.nn.Module, inputs: tuple, output: Any) -> Any:
            if len(store) == 0 or _module.__dict__.get(TRAINING_ATTRIBUTE) or not isinstance(output, torch.Tensor):
                return None
            memories = self.side_memories(store)
            if memories is None:
                return None
            counted = _counted_tokens(state.get("input_ids"), state.get("attention_mask"), special, inputs[0])
            return memories.route(inputs[0], output, counted, state)

        hooks = module.__dict__.setdefault(HOOKS_ATTRIBUTE, {})
        for handle in hooks.pop(store.name, ()):
            handle.remove()
        hooks[store.name] = (
            model.torch_model.register_forward_pre_hook(remember_tokens, with_kwargs=True),
            module.register_forward_hook(route),
        )

    def edit(self, model: Any, store: MemoryStore, requests: Sequence[EditRequest]) -> None:
        """Train each request into the open shard; merge full shards every ``shards_per_merge``."""
        module = self._module(model)
        for request in requests:  # one at a time, as the paper edits
            shard_id = self._open_shard(store, module)
            shard = store.get(shard_id)
            mask = _mask(shard.data)
            edit = {"request_id": request.request_id, "prompt": request.prompt, "target": request.target_new}
            delta = self._train(model, module, self.delta_of(shard), mask, edit)
            edits = [*shard.data["edits"], edit]
            # scored again, all of them: training this edit moved the earlier ones' scores too
            threshold = self.config.threshold_ratio * min(_scores(model, module, delta, edits))
            store.put(shard_id, MemoryEntry({**shard.data, "edits": edits, "threshold": threshold}, {"values": delta[mask]}))
            full = [i for i, e in store.items() if e.data["kind"] == "shard" and len(e.data["edits"]) >= self.config.edits_per_shard]
            if len(full) >= self.config.shards_per_merge:
                self._merge(model, module, store, full)

    # ---- the algorithm -----------------------------------------------------------------------------
    def delta_of(self, entry: MemoryEntry) -> torch.Tensor:
        """A memory's ``D`` (out, in), float32: a merged memory's dense one, a shard's values put at its mask."""
        if entry.data["kind"] == "merged":
            return entry.tensors["delta"].float()
        mask = _mask(entry.data)
        delta = torch.zeros(mask.shape)
        delta[mask] = entry.tensors["values"].float()
        return delta

    def _open_shard(self, store: MemoryStore, module: torch.nn.Module) -> str:
        """The shard taking edits, or a new empty one with a fresh mask."""
        for entry_id, entry in reversed(store.items()):
            if entry.data["kind"] == "shard" and len(entry.data["edits"]) < self.config.edits_per_shard:
                return entry_id
        edits_so_far = sum(len(e.data["edits"]) for _, e in store.items())
        in_features, out_features = ArchitectureAdapter.in_out_features(module)
        data = {"kind": "shard", "shape": [out_features, in_features], "mask_ratio": self.config.mask_ratio,
                "mask_seed": self.config.seed * 1_000_003 + edits_so_far, "edits": [], "threshold": 0.0}
        mask = _draw_mask(data)
        data["mask_digest"] = _mask_digest(mask)
        return store.add(data, {"values": torch.zeros(int(mask.sum()))})

    def _train(self, model: Any, module: torch.nn.Module, start: torch.Tensor, mask: torch.Tensor, edit: dict[str, str]) -> torch.Tensor:
        """The shard's ``D`` after SGD on the edit's NLL and the margin terms (gradient only on the mask)."""
        config = self.config
        device = next(module.parameters()).device
        delta = torch.nn.Parameter(start.clone().to(device))
        gradient_mask = mask.to(device=device, dtype=delta.dtype)
        batch = build_target_batch(model.tokenizer, [model.format_prompt(edit["prompt"])], [edit["target"]]).to(device)
        irrelevant = [model.tokenizer(model.format_prompt(p))["input_ids"] for p in config.irrelevant_prompts]
        other_ids, other_mask = (t.to(device) for t in pad_rows(irrelevant, pad_id_of(model.tokenizer)))
        other_counted = _counted_tokens(other_ids, other_mask, _special_ids(model), other_ids)
        seen: dict[str, torch.Tensor] = {}

        def add_side_memory(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            contribution = torch.nn.functional.linear(inputs[0].to(delta.dtype), delta)
            seen["token_scores"] = contribution.norm(dim=-1)
            return output + contribution.to(output.dtype)

        def row_scores(counted: torch.Tensor) -> torch.Tensor:
            return seen["token_scores"].masked_fill(~counted, 0.0).amax(dim=-1)


        handle = module.register_forward_hook(add_side_memory)
        module.__dict__[TRAINING_ATTRIBUTE] = True  # the shard trains from the main memory alone
        try:
            with trainable_only(model.torch_model, []):
                optimizer = torch.optim.SGD([delta], lr=config.learning_rate, weight_decay=1e-5)  # EasyEdit's decay
                for _ in range(config.steps):
                    logits = model.torch_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                    # the prompt's last token, which sees all of it: a first token shared with an
                    # irrelevant prompt ("The") would otherwise be pushed up and down at once
                    edit_score = seen["token_scores"][:, batch.prompt_lengths[0] - 1]  # (1,)
                    nll = masked_token_nll(logits, batch.labels)
                    model.torch_model(input_ids=other_ids, attention_mask=other_mask)
                    other_scores = row_scores(other_counted)  # (k,)
                    margins = (
                        torch.relu(other_scores - config.irrelevant_margin).mean()
                        + torch.relu(config.edit_margin - edit_score).mean()
                        + torch.relu(config.gap_margin - (edit_score[:, None] - other_scores[None])).mean()
                    )
                    loss = nll + margins
                    optimizer.zero_grad()
                    loss.backward()
                    delta.grad.mul_(gradient_mask)  # knowledge sharding: this shard's subspace only
                    optimizer.step()
                    with torch.no_grad():  # the paper's norm constraint, entry by entry
                        delta.clamp_(-config.norm_bound, config.norm_bound)
        finally:
            handle.remove()
            module.__dict__.pop(TRAINING_ATTRIBUTE, None)
        return delta.detach().cpu()

    def _merge(self, model: Any, module: torch.nn.Module, store: MemoryStore, shard_ids: list[str]) -> None:
        """Merge full shards (TIES) into one side memory, its threshold set from all their edits."""
        shards = [store.get(i) for i in shard_ids]
        delta = ties_merge([self.delta_of(s) for s in shards], self.config.merge_density)
        edits = [e for s in shards for e in s.data["edits"]]
        threshold = self.config.threshold_ratio * min(_scores(model, module, delta, edits))
        for entry_id in shard_ids:
            store.remove(entry_id)
        store.add({"kind": "merged", "edits": edits, "threshold": threshold}, {"delta": delta})


def ties_merge(deltas: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging (Yadav et al., 2023) of task vectors: keep each one's ``density`` share of
    largest-magnitude entries, elect each entry's sign by the summed values, and average the
    kept entries that agree with it."""
    trimmed = []
    for delta in deltas:
        keep = max(1, int(density * delta.numel()))
        cutoff = delta.abs().flatten().kthvalue(delta.numel() - keep + 1).values
        trimmed.append(torch.where(delta.abs() >= cutoff, delta, torch.zeros_like(delta)))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    count = agree.sum(dim=0).clamp(min=1)
    return (stacked * agree).sum(dim=0) / count


@torch.no_grad()
def _scores(model: Any, module: torch.nn.Module, delta: torch.Tensor, edits: Sequence[dict[str, str]]) -> list[float]:
    """Each edit's activation score under ``delta`` (its prompt's largest token score, as the router sees it)."""
    memories = SideMemories(delta[None], torch.zeros(1), {})
    prompts = [e["prompt"] for e in edits]
    return [float(s) for start in range(0, len(prompts), 32) for s in prompt_scores(model, module, memories, prompts[start : start + 32])[0]]


@torch.no_grad()
def prompt_scores(model: Any, module: torch.nn.Module, memories: SideMemories, prompts: Sequence[str]) -> torch.Tensor:
    """``(n_memories, n_prompts)``: each memory's activation score of each prompt (as the model is asked it)."""
    device = next(module.parameters()).device
    rows = [model.tokenizer(model.format_prompt(p))["input_ids"] for p in prompts]
    input_ids, attention_mask = (t.to(device) for t in pad_rows(rows, pad_id_of(model.tokenizer)))
    counted = _counted_tokens(input_ids, attention_mask, _special_ids(model), input_ids)
    seen: dict[str, torch.Tensor] = {}

    def record(_module: torch.nn.Module, inputs: tuple, _output: Any) -> None:
        seen["scores"] = memories.scores(inputs[0], counted, torch.float32)[1]

    handle = module.register_forward_hook(record, prepend=True)
    try:
        model.torch_model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    return seen["scores"].cpu()


def _special_ids(model: Any) -> torch.Tensor:
    return torch.tensor(sorted(set(model.tokenizer.all_special_ids)), dtype=torch.long)


def _counted_tokens(input_ids: Any, attention_mask: Any, special: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
    """Which of the layer's ``seq`` tokens a row's score counts: not padding and not a special
    token (a BOS token's state is the same in every prompt and often huge, so it would route
    everything or nothing). In cached decoding these are the last columns of the forward's ids."""
    batch, seq = inputs.shape[0], inputs.shape[1]
    counted = None
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.shape[0] == batch and input_ids.shape[1] >= seq:
        counted = ~torch.isin(input_ids[:, -seq:], special.to(input_ids.device))
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and attention_mask.shape[0] == batch and attention_mask.shape[1] >= seq:
        unpadded = attention_mask[:, -seq:].bool()
        counted = unpadded if counted is None else counted & unpadded
    return None if counted is None else counted.to(inputs.device)


def _draw_mask(data: dict[str, Any]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(data["mask_seed"]))
    return torch.rand(tuple(data["shape"]), generator=generator) < float(data["mask_ratio"])


def _mask_digest(mask: torch.Tensor) -> str:
    return hashlib.sha256(mask.numpy().tobytes()).hexdigest()[:16]


def _mask(data: dict[str, Any]) -> torch.Tensor:
    """A shard's mask, drawn again from its seed and checked against the digest it was stored with."""
    mask = _draw_mask(data)
    if _mask_digest(mask) != data["mask_digest"]:
        raise JournalError(
            f"the mask of a wise shard (seed {data['mask_seed']}) draws differently on this torch than when it "
            f"was stored; its values cannot be placed: edit again from the prompts in the shard's data"
        )
    return mask
