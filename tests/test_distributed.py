"""Which process of a launch this is, where its replica goes, and the check that every process
ended with the same weights (a real two-process launch: tests/consolidation/test_distributed_grpo.py)."""

import pytest
import torch

from easyetcon import distributed
from easyetcon.chain import EditChain
from easyetcon.distributed import DivergedProcessesError, is_main_process, process_count, replica_device_map, require_same_weights
from easyetcon.errors import ConfigError
from easyetcon.testing import tiny_model, tiny_requests


@pytest.fixture
def two_processes(monkeypatch):
    """The variables torchrun (accelerate launch --multi_gpu) gives the second of two processes."""
    for variable, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(variable, value)


def test_without_a_launcher_there_is_one_main_process(monkeypatch):
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "PMI_SIZE", "PMI_RANK"):
        monkeypatch.delenv(variable, raising=False)
    assert (process_count(), is_main_process(), replica_device_map("auto")) == (1, True, "auto")


def test_a_second_process_is_not_the_main_one(two_processes):
    assert (process_count(), is_main_process()) == (2, False)


def test_each_replica_goes_whole_onto_its_own_gpu(two_processes, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert replica_device_map(None) is None  # CPU processes
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert replica_device_map(None) == {"": 0}  # LOCAL_RANK 1 on one GPU, as accelerate picks


def test_a_device_map_spreading_each_replica_is_refused_under_a_launch(two_processes):
    with pytest.raises(ConfigError, match="device_map 'auto' places one model over several devices.*drop device_map"):
        replica_device_map("auto")


@pytest.fixture
def edited(toy_host):
    model = tiny_model(registry=toy_host.registry)
    return EditChain([("toy-shift", {"amount": 0.25})]).apply(model, tiny_requests()[:1])


def test_processes_that_agree_pass(two_processes, edited, monkeypatch):
    monkeypatch.setattr(distributed, "_gather", lambda value: [value, value])
    require_same_weights(edited)


def test_processes_that_disagree_are_named(two_processes, toy_host, edited, monkeypatch):
    other = EditChain([("toy-shift", {"amount": 0.5})]).apply(tiny_model(registry=toy_host.registry), tiny_requests()[:1])
    theirs = {name: [change.before, change.after] for name, change in other.records[0].weights.changes.items()}
    monkeypatch.setattr(distributed, "_gather", lambda value: [value, theirs])
    with pytest.raises(DivergedProcessesError, match=r"the 2 processes ended the chain with different values of 1 weight\(s\) \(model.layers.0.mlp.down_proj.weight\), so nothing was saved"):
        require_same_weights(edited)


def test_one_process_gathers_nothing(edited, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "_gather", lambda value: pytest.fail("a single process has nobody to ask"))
    require_same_weights(edited)
