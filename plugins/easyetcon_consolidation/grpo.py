"""GRPO consolidation (EtCon's second stage) on TRL's GRPOTrainer.

For each edit, sample a group of answers to its question prompts, score them with the edit
rewards (correctness, format, cleanliness, consistency), and push the selected FFN weights
towards the answers that beat their group's mean, with a KL penalty to the model as it was
when this step began (i.e. after the edit stage). The KL covers only the edit's own prompts;
``weights.preserve`` also holds the output projections on ordinary text (see :mod:`.common`).
In a float16/bfloat16 model the selected weights train through fp32 masters
(:func:`easyetcon.training.trainable_only`), which TRL's optimiser steps like any parameter.

The KL reference lives in memory (:func:`pre_step_reference`): it shares every frozen weight with
the policy and holds a snapshot of the trained ones only, so a step neither writes the model to
disk nor holds a second copy of it. Runs on CPU (``use_cpu``) and, under ``accelerate launch``,
with one model replica per process (DDP): a step's ``prompts_per_step × group_size`` answers are
split across the processes and the gradients all-reduced, so every replica takes the same steps.
DDP leaves the frozen weights alone (:func:`ddp_trains_only`); so does DeepSpeed ZeRO-1/2 in fp32,
which shards the trained weights' gradients and optimiser state. FSDP, ZeRO-3 and DeepSpeed's
bf16/fp16, which replace or cast the weights the policy shares with its reference, are refused
(:func:`refuse_unsupported_launch`).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from easyetcon.distributed import process_count
from easyetcon.errors import (
    ConfigError,
    EasyEtconError,
    OffloadedWeightError,
    PluginError,
    RewardGateError,
    UnknownNameError,
)
from easyetcon.plugins import get_host
from easyetcon.requests import EditRequest
from easyetcon.training import trainable_only
from easyetcon_consolidation.common import (
    AnswerFormat,
    FfnSelection,
    LifelongSchedule,
    PromptSources,
    ScheduleState,
    answer_format_field,
    ffn_weight_names,
    is_chat_model,
    preservation_statistics,
    preserving_outputs,
    question_forms,
)
from easyetcon_consolidation.rewards import DEFAULT_WEIGHTS, FORMAT_CHECKS, combine_rewards


class GRPOConsolidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weights: FfnSelection = Field(default_factory=FfnSelection)
    question_template: str | None = Field(
        default=None,
        description="Question prompt for requests without metadata['qa_prompts'], e.g. 'Question: {prompt}? "
        "Answer:'; null derives one (easyetcon.questions).",
    )
    answer_format: AnswerFormat = answer_format_field()
    group_size: int = Field(default=4, description="Answers sampled per prompt (TRL's num_generations); at least 2.")
    prompts_per_step: int = Field(default=2, ge=1, description="Prompts in one optimisation step.")
    steps: int = Field(default=20, ge=1, le=100_000, description="Optimisation steps per consolidation.")
    learning_rate: float = Field(default=1e-3, gt=0)
    beta: float = Field(default=0.04, ge=0, description="Weight of the KL penalty to the pre-step model.")
    epsilon: float = Field(default=0.2, gt=0, description="Clip half-width of the policy ratio.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the group's answers.")
    max_completion_tokens: int = Field(default=24, ge=1, le=4096)
    rewards: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS), description="Reward name -> weight.")
    format_gate: str | None = Field(
        default="format",
        description="Reward whose 0 zeroes the total; null disables. When no answer of the first group passes "
        "it, GRPO stops with RewardGateError instead of training on zero rewards.",
    )
    schedule: LifelongSchedule = Field(default_factory=LifelongSchedule)
    seed: int = 0
    progress: bool = Field(default=False, description="Show TRL's progress bar.")

    @field_validator("group_size")
    @classmethod
    def _group_of_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError("group_size must be at least 2: GRPO's advantage compares answers within a group")
        return value

    @field_validator("rewards")
    @classmethod
    def _weights_make_sense(cls, value: dict[str, float]) -> dict[str, float]:
        if not value:
            raise ValueError("at least one reward is needed")
        if any(weight < 0 for weight in value.values()):
            raise ValueError("reward weights must be non-negative")
        if sum(value.values()) <= 0:
            raise ValueError("the reward weights sum to zero; give at least one a positive weight")
        return value


class GRPOConsolidation:
    def __init__(self, config: GRPOConsolidationConfig) -> None:
        refuse_unsupported_launch()
        answers, processes = config.group_size * config.prompts_per_step, process_count()
        if answers % processes:
            raise ConfigError(
                f"options 'group_size' × 'prompts_per_step' ({answers} answers a step) must split evenly "
                f"across the {processes} processes of this launch: change one, or the number of processes"
            )
        self.config = config
        self.state = ScheduleState(config.schedule)
        self.statistics = preservation_statistics(config.weights)
        registry = get_host().registry
        names = [*config.rewards, *([config.format_gate] if config.format_gate else [])]
        try:
            for name in names:
                registry.reward(name)
        except UnknownNameError as error:
            raise ConfigError(f"option 'rewards': {error}") from None

        def lookup(answer_format: str) -> Callable[[str], Callable]:
            # the built-in `format` reward checks each prompt's own answer format
            return lambda name: FORMAT_CHECKS[answer_format] if name == "format" else registry.reward(name)

        self.rewards = {
            answer_format: combine_rewards(config.rewards, lookup(answer_format), format_gate=config.format_gate)
            for answer_format in FORMAT_CHECKS
        }
        gate = config.format_gate
        self.gates = {answer_format: lookup(answer_format)(gate) for answer_format in FORMAT_CHECKS} if gate else {}

    def score(self, completions: Sequence[str], requests: Sequence[EditRequest], formats: Sequence[str]) -> list[float]:
        """The combined reward of each completion, under its prompt's answer format."""
        scores = [0.0] * len(completions)
        for answer_format, reward in self.rewards.items():
            rows = [i for i, f in enumerate(formats) if f == answer_format]
            if rows:
                for i, value in zip(rows, reward([completions[i] for i in rows], [requests[i] for i in rows])):
                    scores[i] = value
        return scores

    def require_a_passing_answer(
        self, completions: Sequence[str], requests: Sequence[EditRequest], formats: Sequence[str]
    ) -> None:
        """Refuse to train when no answer of a group passes the format gate: every total is then
        zero, every advantage zero, and GRPO would run its steps without learning anything."""
        if not self.gates:
            return
        for answer_format in dict.fromkeys(formats):
            rows = [i for i, f in enumerate(formats) if f == answer_format]
            try:
                passed = self.gates[answer_format]([completions[i] for i in rows], [requests[i] for i in rows])
            except Exception as error:
                raise PluginError(f"reward {self.config.format_gate!r} raised {type(error).__name__}: {error}") from error
            if any(float(score) > 0 for score in passed):
                return
        shown = ", ".join(f"{formats.count(f)} in answer format {f}" for f in dict.fromkeys(formats))
        raise RewardGateError(
            f"grpo: none of the {len(completions)} answers sampled first ({shown}) passes the format gate "
            f"{self.config.format_gate!r} under option answer_format {self.config.answer_format!r}, so every reward "
            f"is 0 and GRPO cannot learn. One sampled answer (request {requests[0].request_id!r}): "
            f"{completions[0]!r}. Set answer_format to how the model answers (tagged: '<answer> X </answer>', "
            f"reply: a chat reply 'X.', continuation: ' X.' then anything), teach that form first (e.g. TPSFT "
            f"with prompts.questions and the same answer_format), or set format_gate to null"
        )

    def weights_to_edit(self, model: Any, requests: Sequence[EditRequest]) -> list[str]:
        return ffn_weight_names(model, self.config.weights) if self.state.fires_next() else []

    def _rows(self, requests: Sequence[EditRequest], model: Any) -> list[dict[str, Any]]:
        """TRL's dataset rows: each question prompt as the model is asked it (its prompt format,
        the one the evaluator uses), with the index of its request and its answer format."""
        sources = PromptSources(
            cloze=False, questions=True, question_template=self.config.question_template,
            answer_format=self.config.answer_format,
        )
        chat_model = is_chat_model(model)
        return [
            {"prompt": model.format_prompt(prompt), "request_index": index, "answer_format": answer_format}
            for index, request in enumerate(requests)
            for prompt, answer_format in question_forms(request, sources, chat_model=chat_model)
        ]

    def edit(self, model: Any, requests: Sequence[EditRequest]) -> None:
        if self.state.fires_next():
            require_head_on_device(model)
        chosen = self.state.advance(requests)
        if chosen is None:
            return
        from datasets import Dataset
        from transformers import PrinterCallback
        from trl import GRPOTrainer

        rows = self._rows(chosen, model)
        # TRL's batches hold prompts_per_step prompts and drop a short last one: with fewer
        # question prompts than that it would train nothing, so the prompts are repeated
        rows = [rows[i % len(rows)] for i in range(max(len(rows), self.config.prompts_per_step))]
        net, tokenizer = model.torch_model, model.tokenizer
        first_group = [True]

        def reward(
            prompts: list[str], completions: list[str], request_index: list[int], answer_format: list[str], **_: Any
        ) -> list[float]:
            requests = [chosen[i] for i in request_index]
            if first_group[0]:
                self.require_a_passing_answer(completions, requests, answer_format)
                first_group[0] = False
            return self.score(completions, requests, answer_format)

        config = self.config
        names = ffn_weight_names(model, config.weights)
        # taken before fp32 masters of half-precision weights take their place: it holds the model's dtype
        reference = pre_step_reference(net, names) if config.beta > 0 else None  # TRL needs none at beta 0
        saved_generation = net.generation_config.to_dict() if net.generation_config is not None else None
        saved_forward = net.__dict__.get("forward")
        # the Trainer creates its output folder even though it saves nothing there (save_strategy "no")
        use_cpu = model.device.type == "cpu"
        with tempfile.TemporaryDirectory(prefix="easyetcon-grpo-") as scratch, accelerate_on_plain_cpu(use_cpu):
            arguments = trainer_arguments(config, scratch, use_cpu=use_cpu)
            transformers_logger = logging.getLogger("transformers")
            level = transformers_logger.level
            transformers_logger.setLevel(logging.ERROR)
            try:
                with trainable_only(net, names), preserving_outputs(model, config.weights, self.statistics), ddp_trains_only(net, names):
                    with trl_loads_reference(reference):
                        trainer = GRPOTrainer(
                            model=net,
                            reward_funcs=[reward],
                            args=arguments,
                            train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer,
                        )
                    if reference is not None and trainer.accelerator.unwrap_model(trainer.ref_model) is not reference:
                        raise EasyEtconError(
                            "TRL's GRPOTrainer built its KL reference without create_model_from_path, so GRPO "
                            "consolidation cannot give it the pre-step model: install the trl version easyetcon "
                            "is tested with (1.16)"
                        )
                    trainer.remove_callback(PrinterCallback)
                    trainer.train()
            finally:
                transformers_logger.setLevel(level)
                if saved_generation is not None:  # TRL writes the tokenizer's pad token into it
                    net.generation_config = type(net.generation_config).from_dict(saved_generation)
                # TRL wraps the policy's forward in its fused log-prob head; a later step's reference,
                # a copy of the policy, would inherit a wrapper that calls back into the policy
                if saved_forward is None:
                    net.__dict__.pop("forward", None)
                else:
                    net.forward = saved_forward


def require_head_on_device(model: Any) -> None:
    """TRL's fused log-prob head multiplies by the LM head's weight itself, outside the head's
    forward, so accelerate never loads an offloaded head's weight for it: refuse, saying so."""
    head = model.adapter.lm_head_module(model.torch_model)
    if head.weight.device.type == "meta":
        raise OffloadedWeightError(
            f"grpo cannot train a model whose LM head ({model.adapter.lm_head}) accelerate offloaded: TRL's "
            f"GRPOTrainer reads the head's weight directly, and it lives on the meta device. Load the LM head "
            f"(and the embeddings, if tied to it) onto a device in device_map"
        )


def trainer_arguments(config: GRPOConsolidationConfig, output_dir: str, *, use_cpu: bool) -> Any:
    """TRL's ``GRPOConfig`` for one application of ``config`` (saving and logging off)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=output_dir,
        use_cpu=use_cpu,
        num_generations=config.group_size,
        # a step's answers split across the processes of accelerate launch (checked to divide evenly)
        per_device_train_batch_size=config.group_size * config.prompts_per_step // process_count(),
        max_completion_length=config.max_completion_tokens,
        max_steps=config.steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        beta=config.beta,
        epsilon=config.epsilon,
        temperature=config.temperature,
        activation_checkpointing=False,
        save_strategy="no",
        report_to="none",
        logging_steps=max(config.steps, 1),
        disable_tqdm=not config.progress,
        optim="adamw_torch",
        weight_decay=0.0,
        # the Trainer reseeds every RNG from this on creation: each application samples alike,
        # whatever ran before it (a resumed run reproduces it)
        seed=config.seed,
        # TRL's AMP flags keep the optimiser on the model's dtype; half-precision weights
        # train instead through the fp32 masters that trainable_only puts in their place
        bf16=False,
        fp16=False,
    )


def refuse_unsupported_launch() -> None:
    """Raise :class:`ConfigError` under an ``accelerate launch`` that this editor cannot run in:
    FSDP or DeepSpeed ZeRO-3, which replace the model's parameters with shards (also the frozen
    ones the KL reference shares with the policy), or DeepSpeed with bf16/fp16, which casts the
    model's weights in place (half-precision weights train here through fp32 masters instead).
    DeepSpeed ZeRO-1/2 in fp32 shards only the trained weights' gradients and optimiser state."""
    from accelerate.utils import DeepSpeedPlugin, parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        problem = "FSDP, which replaces the model's parameters with shards"
    elif parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        plugin = DeepSpeedPlugin()  # the stage and precision accelerate launch (or its config file) set
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        precision = next((kind for kind in ("bf16", "fp16") if (plugin.deepspeed_config.get(kind) or {}).get("enabled") is True), precision)
        if plugin.zero_stage == 3:
            problem = "DeepSpeed ZeRO-3, which replaces the model's parameters with shards"
        elif precision != "no":
            problem = f"DeepSpeed with mixed precision {precision}, which casts the model's weights in place"
        else:
            return
    else:
        return
    raise ConfigError(
        f"GRPO consolidation does not run under {problem} (its KL reference shares the policy's frozen "
        f"weights, and every step must leave the weights it does not train as they were). Launch one model "
        f"replica per process (accelerate launch --multi_gpu) or DeepSpeed ZeRO-1/2 with --mixed_precision no; "
        f"set the model's dtype in the chain spec instead (see 'Several processes and GPUs' in docs/consolidation.md)"
    )


@contextmanager
def accelerate_on_plain_cpu(use_cpu: bool) -> Iterator[None]:
    """While active, accelerate puts a CPU run of several processes on device ``cpu``, not its
    ``cpu:0``: ``tensor.to("cpu:0")`` copies a tensor that is on ``cpu``, so the Trainer's move of
    the model would give every weight new storage, frozen ones included. No-op off CPU."""
    variable = "ACCELERATE_TORCH_DEVICE"
    if not use_cpu or variable in os.environ:
        yield
        return
    os.environ[variable] = "cpu"
    try:
        yield
    finally:
        os.environ.pop(variable, None)


@contextmanager
def ddp_trains_only(net: nn.Module, trained: Sequence[str]) -> Iterator[None]:
    """While active, DistributedDataParallel (as the Trainer wraps ``net`` under ``accelerate launch``)
    ignores every parameter and buffer but the ``trained`` parameters: it neither broadcasts nor
    syncs the frozen weights, which are the editor's to leave unwritten (they are the same in every
    process when the chain before this step was). The trained ones DDP broadcasts from rank 0 at
    the start and keeps equal through its all-reduced gradients."""
    trained_names = set(trained)
    ignored = [name for name, _ in net.named_parameters() if name not in trained_names]
    ignored += [name for name, _ in net.named_buffers()]
    previous = net.__dict__.get("_ddp_params_and_buffers_to_ignore")
    net._ddp_params_and_buffers_to_ignore = ignored  # what DDP.__init__ reads
    try:
        yield
    finally:
        if previous is None:
            net.__dict__.pop("_ddp_params_and_buffers_to_ignore", None)
        else:
            net._ddp_params_and_buffers_to_ignore = previous


def pre_step_reference(net: nn.Module, trained: Sequence[str]) -> nn.Module:
    """``net`` as it is now, for GRPO's KL term: a copy of its module tree that shares every
    parameter and buffer with ``net`` (same tensors, no copy) except the ``trained`` parameters,
    for which it holds snapshots of their current values in their own dtype, not requiring grad.
    Training the policy leaves it unchanged, and it costs the memory of the trained weights only.
    Take it outside :func:`easyetcon.training.trainable_only`, so that it snapshots the stored
    weights, not their fp32 masters."""
    parameters = dict(net.named_parameters())
    # deepcopy returns what its memo already maps an object to: frozen tensors map to themselves
    memo: dict[int, Any] = {id(tensor): tensor for tensor in [*parameters.values(), *net.buffers()]}
    for name in trained:
        parameter = parameters[name]
        memo[id(parameter)] = nn.Parameter(parameter.detach().clone(), requires_grad=False)
    reference = copy.deepcopy(net, memo)
    return reference.eval()  # as TRL's own reference, loaded with from_pretrained, would be


@contextmanager
def trl_loads_reference(reference: nn.Module | None) -> Iterator[None]:
    """While GRPOTrainer is built, the loader it builds its KL reference with (from the policy's
    checkpoint) returns ``reference`` instead; TRL then prepares it as it would its own (fused
    log-prob head, device placement). Does nothing when ``reference`` is None (beta 0: TRL loads none)."""
    if reference is None:
        yield
        return
    from trl.trainer import grpo_trainer

    load = grpo_trainer.create_model_from_path
    grpo_trainer.create_model_from_path = lambda model_id, *args, **kwargs: reference
    try:
        yield
    finally:
        grpo_trainer.create_model_from_path = load
