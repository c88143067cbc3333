"""Chains run by several processes at once (``accelerate launch``, ``torchrun``).

Every process loads its own replica of the model (on its own GPU: :func:`replica_device_map`)
and runs the whole chain on it: deterministic editors (ROME, MEMIT, ...) compute the same update
in each, and trainers built on accelerate (GRPO consolidation through TRL) split each batch
across the processes and all-reduce the gradients, so every replica takes the same optimiser
steps. Only the main process writes files (the journal, the saved model);
:func:`require_same_weights` checks, before it does, that every process ended with the same
weights.
"""

from __future__ import annotations

from typing import Any

from easyetcon.errors import ConfigError, EasyEtconError

# the variables accelerate reads for them: torchrun's, then MPI's (accelerate launch --cpu on several machines)
_RANK_VARIABLES = ["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"]
_SIZE_VARIABLES = ["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"]
_LOCAL_RANK_VARIABLES = ["LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"]


class DivergedProcessesError(EasyEtconError):
    """The processes of one launch ended a chain with different weights."""


def process_count() -> int:
    """How many processes the launcher started (1 when run without one)."""
    from accelerate.utils import get_int_from_env

    return max(get_int_from_env(_SIZE_VARIABLES, 1), 1)


def process_rank() -> int:
    """This process's global rank (0 when run without a launcher)."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(_RANK_VARIABLES, 0)


def is_main_process() -> bool:
    """Whether this process writes the run's files: the only one, or rank 0 of a launch."""
    return process_rank() == 0


def replica_device_map(device_map: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """The ``device_map`` to load this process's model with: ``device_map`` itself without a launch
    of several processes; under one, each process's replica goes whole onto its own GPU (its local
    rank's, as accelerate picks), or stays on CPU when there is none. A ``device_map`` of the
    user's is refused there: it would spread every replica over GPUs the other processes use."""
    if process_count() == 1:
        return device_map
    if device_map is not None:
        raise ConfigError(
            f"device_map {device_map!r} places one model over several devices, but under a launch of "
            f"{process_count()} processes each holds its own replica, on its own GPU: drop device_map "
            f"from the chain spec (easyetcon puts each replica on its local rank's GPU)"
        )
    import torch

    if not torch.cuda.is_available():
        return None
    from accelerate.utils import get_int_from_env

    local_rank = get_int_from_env(_LOCAL_RANK_VARIABLES, 0)
    return {"": local_rank % torch.cuda.device_count()}


def require_same_weights(result: Any) -> None:
    """Under a launch of several processes, raise :class:`DivergedProcessesError` unless every
    process's chain changed the same weights, from the same values to the same values (compared
    by the digests in ``result``'s records, a :class:`~easyetcon.chain.ChainResult`); a weight no
    step changed was never written (the chain checks that). Every process must call it (it
    waits for the others); with one process it returns at once."""
    if process_count() == 1:
        return
    changes: dict[str, list[str]] = {}
    for record in result.records:
        for name, change in (record.weights.changes if record.weights is not None else {}).items():
            changes.setdefault(name, [change.before, change.after])[1] = change.after
    gathered = _gather(changes)
    differing = sorted(
        {name for other in gathered for name in other.keys() | changes.keys() if other.get(name) != changes.get(name)}
    )
    if differing:
        raise DivergedProcessesError(
            f"the {len(gathered)} processes ended the chain with different values of {len(differing)} weight(s) "
            f"({', '.join(differing[:3])}{' ...' if len(differing) > 3 else ''}), so nothing was saved: a step "
            f"is not deterministic across processes (on GPUs, try torch.use_deterministic_algorithms(True)) "
            f"or the processes loaded different models; run that step in one process"
        )


def release_processes() -> None:
    """End this process's part of a launch of several processes (its process group), once it
    needs no collective any more. Without it the group is torn down at interpreter exit, where a
    process that finishes first (the replicas, while the main process still saves) can abort.
    With one process, or no group set up, it does nothing."""
    if process_count() == 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _gather(value: Any) -> list[Any]:
    """``value`` of every process, by rank."""
    import torch.distributed as dist

    if not dist.is_initialized():  # no step used accelerate: set up the group accelerate launch describes
        from accelerate import PartialState

        PartialState()
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
